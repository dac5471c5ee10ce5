"""Forms of the training pages. services (and QualityTuningConfig) stay the authority: their refusals are shown as
they are, next to the field they are about when the message names one."""

from __future__ import annotations

from typing import ClassVar

from django import forms

from core.errors import add_to_form
from core.forms import FieldGroups
from generation import services as generation_services
from generation.models import PromptSet, TextToImageModel
from training.config import MIXED_PRECISIONS, PREDICTION_TYPES, QualityTuningConfig

from . import services
from .models import CuratedDataset

DEFAULTS = QualityTuningConfig()
# Config fields the form sets directly (same name); crop and the validation lists are converted.
CONFIG_FIELDS = (
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_warmup_steps",
    "noise_offset",
    "snr_gamma",
    "max_steps",
    "checkpoint_every",
    "keep_last_checkpoints",
    "validation_every",
    "validation_inference_steps",
    "seed",
    "resolution",
    "random_flip",
    "use_ema",
    "ema_decay",
    "gradient_checkpointing",
    "mixed_precision",
    "prediction_type",
)
FORM_FIELD_FOR = {
    "center_crop": "crop",
    "validation_prompts": "validation_prompts",
    "validation_seeds": "validation_seeds",
}


def scoring_model_fields(*, head_help: str, path_help: str, name_help: str):
    """The optional aesthetic head, CLIP model and CLIP architecture fields (in that order), worded per form."""
    return (
        forms.CharField(max_length=1000, required=False, label="Aesthetic head", help_text=head_help),
        forms.CharField(max_length=1000, required=False, label="CLIP model", help_text=path_help),
        forms.CharField(max_length=100, required=False, label="CLIP architecture", help_text=name_help),
    )


class DatasetImportForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Short unique name, e.g. emu-2k-v1.")
    path = forms.CharField(
        max_length=1000,
        help_text="Folder of images plus captions.jsonl "
        '({"file_name": "0001.png", "text": "the caption"} per line), readable by the workers.',
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def save(self, user):
        d = self.cleaned_data
        try:
            return services.import_curated_dataset(
                d["name"], d["path"].strip(), description=d["description"], created_by=user
            )
        except services.TrainingError as exc:
            add_to_form(self, exc)
            return None


class QualityTuningRunForm(FieldGroups, forms.Form):
    # The new-run page's fieldsets.
    groups: ClassVar[dict[str, str]] = {
        "trained": "base_model dataset",
        "optimisation": "batch_size gradient_accumulation_steps learning_rate lr_warmup_steps noise_offset snr_gamma "
        "max_steps seed prediction_type",
        "images": "resolution crop random_flip",
        "memory": "mixed_precision gradient_checkpointing use_ema ema_decay",
        "checkpoints": "checkpoint_every keep_last_checkpoints validation_every validation_prompts validation_seeds "
        "validation_inference_steps",
        "pick": "aesthetic_head_path clip_model_path clip_model_name",
    }

    base_model = forms.ModelChoiceField(
        queryset=TextToImageModel.objects.all(),
        to_field_name="name",
        help_text="A registered SD 1.x/2.x or SDXL base pipeline (not the SDXL refiner, img2img or inpainting).",
    )
    dataset = forms.ModelChoiceField(
        queryset=CuratedDataset.objects.all(), to_field_name="name", label="Curated dataset"
    )

    batch_size = forms.IntegerField(
        initial=DEFAULTS.batch_size, help_text="Images per optimizer step over all GPUs and micro-batches (Emu: 64)."
    )
    gradient_accumulation_steps = forms.IntegerField(
        initial=DEFAULTS.gradient_accumulation_steps,
        label="Gradient accumulation",
        help_text="Micro-batches per step and process: micro-batch = batch size / (processes × this). Same update, less memory.",
    )
    learning_rate = forms.FloatField(initial=DEFAULTS.learning_rate, help_text="Constant after warmup (Emu: 1e-5).")
    lr_warmup_steps = forms.IntegerField(initial=DEFAULTS.lr_warmup_steps, label="LR warmup steps")
    noise_offset = forms.FloatField(
        initial=DEFAULTS.noise_offset, help_text="Emu: 0.1; lets the model make very dark and very bright images."
    )
    snr_gamma = forms.FloatField(
        required=False, label="Min-SNR gamma", help_text="Blank: plain MSE loss (Emu). 5 is the usual Min-SNR value."
    )
    max_steps = forms.IntegerField(
        initial=DEFAULTS.max_steps, help_text="Emu: at most 15k; stop earlier by eye and by raters."
    )
    checkpoint_every = forms.IntegerField(
        initial=DEFAULTS.checkpoint_every, help_text="Steps between checkpoints (each can be registered and compared)."
    )
    keep_last_checkpoints = forms.IntegerField(required=False, help_text="Blank: keep every checkpoint.")
    validation_every = forms.IntegerField(
        initial=DEFAULTS.validation_every, help_text="Steps between validation renders (also at every checkpoint)."
    )
    validation_prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        initial="\n".join(DEFAULTS.validation_prompts),
        help_text="One per line; rendered with the same seeds along the run.",
    )
    validation_seeds = forms.CharField(
        initial=", ".join(map(str, DEFAULTS.validation_seeds)), help_text="e.g. '0, 1' or '0-3'."
    )
    validation_inference_steps = forms.IntegerField(initial=DEFAULTS.validation_inference_steps)
    seed = forms.IntegerField(initial=DEFAULTS.seed, min_value=0)
    resolution = forms.IntegerField(
        required=False, help_text="Blank: the base model's native resolution (512 for SD 1.5)."
    )
    crop = forms.ChoiceField(
        choices=[("center", "centre crop"), ("random", "random crop (one per image, drawn from the seed)")],
        initial="center" if DEFAULTS.center_crop else "random",
        widget=forms.RadioSelect,
    )
    random_flip = forms.BooleanField(required=False, initial=DEFAULTS.random_flip, label="Random horizontal flip")
    use_ema = forms.BooleanField(required=False, initial=DEFAULTS.use_ema, label="EMA weights")
    ema_decay = forms.FloatField(initial=DEFAULTS.ema_decay, label="EMA decay")
    gradient_checkpointing = forms.BooleanField(
        required=False, initial=DEFAULTS.gradient_checkpointing, help_text="Less memory, about 20% slower."
    )
    mixed_precision = forms.ChoiceField(
        choices=[(m, m) for m in MIXED_PRECISIONS],
        initial=DEFAULTS.mixed_precision,
        help_text='"no" on CPU; bf16 (or fp16) on GPU.',
    )
    prediction_type = forms.ChoiceField(
        choices=[("", "the base scheduler's")] + [(p, p) for p in PREDICTION_TYPES],
        required=False,
    )
    start_now = forms.BooleanField(required=False, initial=True, label="Queue the run now")
    aesthetic_head_path, clip_model_path, clip_model_name = scoring_model_fields(
        head_help="Optional: a LAION-format aesthetic head (.pth/.safetensors) readable by the workers. Each "
        "checkpoint's validation images are scored with it, and the best step is the automatic pick.",
        path_help="With an aesthetic head: the open_clip weights file or exported folder it sits on.",
        name_help="e.g. ViT-L-14; blank for an exported folder (open_clip_config.json).",
    )

    def clean_validation_prompts(self):
        prompts = [line.strip() for line in self.cleaned_data["validation_prompts"].splitlines() if line.strip()]
        if not prompts:
            raise forms.ValidationError("Give at least one validation prompt.")
        return prompts

    def clean_validation_seeds(self):
        try:
            return generation_services.parse_seeds(self.cleaned_data["validation_seeds"])
        except generation_services.GenerationError as exc:
            raise forms.ValidationError(str(exc)) from None

    def config_overrides(self) -> dict:
        d = self.cleaned_data
        values = {name: d[name] for name in CONFIG_FIELDS if d.get(name) not in (None, "")}
        values["center_crop"] = d["crop"] == "center"
        values["validation_prompts"] = d["validation_prompts"]
        values["validation_seeds"] = d["validation_seeds"]
        return values

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            services.build_config(self.config_overrides())
        except services.TrainingError as exc:
            add_to_form(self, exc, field_names=FORM_FIELD_FOR)
        scoring = self.aesthetic_scoring()
        if any(scoring.values()):
            try:
                services.load_aesthetic_scoring(
                    scoring["aesthetic_head_path"], scoring["clip_model_path"], scoring["clip_model_name"]
                )
            except services.TrainingError as exc:
                add_to_form(self, exc)
        return cleaned

    def aesthetic_scoring(self) -> dict:
        names = ("aesthetic_head_path", "clip_model_path", "clip_model_name")
        return {name: (self.cleaned_data.get(name) or "").strip() for name in names}

    def create(self, user):
        d = self.cleaned_data
        try:
            run = services.create_run(
                d["base_model"], d["dataset"], created_by=user, **self.aesthetic_scoring(), **self.config_overrides()
            )
            if d["start_now"]:
                services.start_run(run)
            return run
        except services.TrainingError as exc:
            add_to_form(self, exc, field_names=FORM_FIELD_FOR)
            return None


class RegisterCheckpointForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Name of the new model, e.g. sd15-emu-step5000.")


class CompareWithBaseForm(forms.Form):
    prompt_set = forms.ModelChoiceField(queryset=PromptSet.objects.all(), to_field_name="name")
    seeds = forms.CharField(initial="0-3", help_text="e.g. '0-3'")
    name = forms.CharField(max_length=200, required=False, help_text="Campaign name; blank: 'tuned vs base'.")

    def clean_seeds(self):
        try:
            return generation_services.parse_seeds(self.cleaned_data["seeds"])
        except generation_services.GenerationError as exc:
            raise forms.ValidationError(str(exc)) from None


class CheckpointCampaignForm(forms.Form):
    prompt_set = forms.ModelChoiceField(
        queryset=PromptSet.objects.all(),
        to_field_name="name",
        help_text="A small set: every checkpoint renders every prompt for every seed.",
    )
    seeds = forms.CharField(initial="0", help_text="e.g. '0' or '0-1'")
    steps = forms.CharField(required=False, help_text="Blank: every checkpoint still on disk; else e.g. '3 6'.")
    new = forms.BooleanField(required=False, label="A new campaign even if the run has one")

    def clean_seeds(self):
        try:
            return generation_services.parse_seeds(self.cleaned_data["seeds"])
        except generation_services.GenerationError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_steps(self):
        text = self.cleaned_data["steps"].replace(",", " ").split()
        try:
            return [int(step) for step in text]
        except ValueError:
            raise forms.ValidationError("Give steps as whole numbers separated by spaces, e.g. '3 6'.") from None
