from django import forms

from core.errors import add_to_form

from . import pipelines, services
from .models import SCHEDULER_CHOICES, PromptSet, TextToImageModel
from .prompt_files import FORMATS, PromptFileError


class RegisterModelForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Short unique name, e.g. sd15-base.")
    pipeline_path = forms.CharField(
        max_length=1000, help_text="Local directory written by diffusers save_pretrained (holds model_index.json)."
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    steps = forms.IntegerField(initial=30, min_value=1, max_value=1000)
    guidance_scale = forms.FloatField(initial=7.5, min_value=0, max_value=50)
    width = forms.IntegerField(
        required=False, min_value=8, max_value=4096, help_text="Blank: the pipeline's native resolution."
    )
    height = forms.IntegerField(
        required=False, min_value=8, max_value=4096, help_text="Blank: the pipeline's native resolution."
    )
    scheduler = forms.ChoiceField(choices=SCHEDULER_CHOICES, initial="default")

    def clean_pipeline_path(self):
        path = self.cleaned_data["pipeline_path"].strip()
        try:
            self.pipeline_info = pipelines.inspect_pipeline_directory(path)
        except pipelines.PipelineDirectoryError as exc:
            raise forms.ValidationError(str(exc)) from None
        return path

    # The settings register_model takes as the form cleaned them.
    PASSED_AS_GIVEN = (
        "name",
        "pipeline_path",
        "steps",
        "guidance_scale",
        "width",
        "height",
        "scheduler",
        "description",
    )

    def register(self, user) -> TextToImageModel | None:
        d = self.cleaned_data
        try:
            return services.register_model(
                **{name: d[name] for name in self.PASSED_AS_GIVEN},
                registered_by=user,
                inspected=self.pipeline_info,
            )
        except services.ModelRegistrationError as exc:
            add_to_form(self, exc)
            return None


class PromptImportForm(forms.Form):
    name = forms.CharField(max_length=200)
    file = forms.FileField(
        help_text="CSV or JSONL with a 'prompt' column/key, or a PartiPrompts TSV (Prompt, Category, Challenge, Note)."
    )
    format = forms.ChoiceField(
        choices=[("", "from the file extension")] + [(f, f.upper()) for f in FORMATS], required=False
    )
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def import_set(self):
        upload = self.cleaned_data["file"]
        try:
            return services.import_prompt_set(
                name=self.cleaned_data["name"],
                data=upload.read(),
                filename=upload.name,
                format=self.cleaned_data["format"] or None,
                description=self.cleaned_data["description"],
            )
        except PromptFileError as exc:
            for error in exc.errors[:50]:
                self.add_error(exc.field, error)
            if len(exc.errors) > 50:
                self.add_error(exc.field, f"... and {len(exc.errors) - 50} more problems")
            return None


class GenerationBatchForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    models = forms.ModelMultipleChoiceField(queryset=TextToImageModel.objects.all())
    prompt_set = forms.ModelChoiceField(queryset=PromptSet.objects.all())
    seeds = forms.CharField(
        initial="0-3", help_text="Integers and ranges, e.g. '0-3, 10'. Every model gets every (prompt, seed)."
    )
    steps = forms.IntegerField(required=False, min_value=1, max_value=1000, help_text="Blank: each model's default.")
    guidance_scale = forms.FloatField(required=False, min_value=0, max_value=50)
    width = forms.IntegerField(required=False, min_value=8, max_value=4096)
    height = forms.IntegerField(required=False, min_value=8, max_value=4096)
    scheduler = forms.ChoiceField(choices=[("", "each model's default")] + SCHEDULER_CHOICES, required=False)
    inference_batch_size = forms.IntegerField(required=False, min_value=1, max_value=256)
    chunk_size = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    start_now = forms.BooleanField(required=False, initial=True)

    def clean_seeds(self):
        try:
            return services.parse_seeds(self.cleaned_data["seeds"])
        except services.BatchError as exc:
            raise forms.ValidationError(str(exc)) from None

    def create(self, user):
        d = self.cleaned_data
        try:
            batch = services.create_batch(
                models=list(d["models"]),
                prompt_set=d["prompt_set"],
                seeds=d["seeds"],
                parameters={
                    k: d[k]
                    for k in ("steps", "guidance_scale", "width", "height", "scheduler")
                    if d[k] not in (None, "")
                },
                name=d["name"],
                inference_batch_size=d["inference_batch_size"],
                chunk_size=d["chunk_size"],
                created_by=user,
            )
        except services.BatchError as exc:
            add_to_form(self, exc)
            return None
        if d["start_now"]:
            services.dispatch_batch(batch)
        return batch
