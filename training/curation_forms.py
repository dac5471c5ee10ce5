"""Forms of the curation pages. services stay the authority: their refusals are shown as they are."""

from __future__ import annotations

from typing import ClassVar

from django import forms

from core.errors import add_to_form
from core.forms import FieldGroups
from training import curation

from . import services
from .forms import scoring_model_fields

_D = {type(stage).__name__: stage for stage in curation.default_stages()}


class CollectionImportForm(forms.Form):
    name = forms.SlugField(max_length=100, help_text="Short unique name, e.g. photos-2024-05.")
    path = forms.CharField(
        max_length=1000,
        help_text="Folder of images plus captions.csv (file,caption) or captions.jsonl "
        '({"file": "a.jpg", "caption": "..."} per line), readable by the workers.',
    )

    def save(self, user):
        d = self.cleaned_data
        try:
            return services.import_candidate_collection(d["name"], d["path"].strip(), created_by=user)
        except services.TrainingError as exc:
            add_to_form(self, exc)
            return None


class CurationRunForm(FieldGroups, forms.Form):
    """One checkbox per stage of Emu's automatic funnel, with its thresholds (their defaults are the stages' own)."""

    # The new-run page's fieldsets, one per stage, then the models.
    groups: ClassVar[dict[str, str]] = {
        "resolution": "use_resolution min_side max_aspect_ratio",
        "text": "use_text_in_image max_words",
        "duplicates": "use_near_duplicate max_hamming",
        "clip": "use_clip_score clip_min_score",
        "aesthetic": "use_aesthetic aesthetic_min_score",
        "models": "clip_model_path clip_model_name aesthetic_head_path",
    }

    use_resolution = forms.BooleanField(required=False, initial=True, label="Resolution and aspect ratio")
    min_side = forms.IntegerField(
        min_value=1, initial=_D["ResolutionStage"].min_side, help_text="Shortest side in pixels, at least."
    )
    max_aspect_ratio = forms.FloatField(
        min_value=1, initial=_D["ResolutionStage"].max_aspect_ratio, help_text="Long side / short side, at most."
    )
    use_text_in_image = forms.BooleanField(
        required=False,
        initial=True,
        label="Text in the image (OCR)",
        help_text="Skipped, and shown as skipped, where tesseract is not installed.",
    )
    max_words = forms.IntegerField(
        min_value=0, initial=_D["TextInImageStage"].max_words, help_text="Words of text in the image, at most."
    )
    use_near_duplicate = forms.BooleanField(required=False, initial=True, label="Near duplicates (perceptual hash)")
    max_hamming = forms.IntegerField(
        min_value=0,
        max_value=64,
        initial=_D["NearDuplicateStage"].max_hamming,
        help_text="Hash bits that may differ between two near duplicates (of 64).",
    )
    use_clip_score = forms.BooleanField(required=False, initial=True, label="CLIP image-text score")
    clip_min_score = forms.FloatField(
        initial=_D["ClipScoreStage"].min_score,
        label="Minimum CLIP score",
        help_text="100 × cosine; LAION-5B cut at 28 with ViT-B/32. Calibrate per CLIP model.",
    )
    use_aesthetic = forms.BooleanField(required=False, initial=True, label="Aesthetic score")
    aesthetic_min_score = forms.FloatField(
        initial=_D["AestheticStage"].min_score,
        label="Minimum aesthetic score",
        help_text="LAION head, 1-10 scale; LAION-Aesthetics V2 cut at 4.5, 5, 6 and 6.5.",
    )
    aesthetic_head_path, clip_model_path, clip_model_name = scoring_model_fields(
        head_help="LAION-format head (.pth or .safetensors) on that CLIP model's embeddings.",
        path_help="A local open_clip export (folder with open_clip_config.json) or a weights file.",
        name_help="e.g. ViT-L-14; only needed for a bare weights file.",
    )

    def stage_config(self) -> list[dict]:
        d = self.cleaned_data
        stages = []
        if d["use_resolution"]:
            stages.append(
                {"kind": "ResolutionStage", "min_side": d["min_side"], "max_aspect_ratio": d["max_aspect_ratio"]}
            )
        if d["use_text_in_image"]:
            stages.append({"kind": "TextInImageStage", "max_words": d["max_words"]})
        if d["use_near_duplicate"]:
            stages.append({"kind": "NearDuplicateStage", "max_hamming": d["max_hamming"]})
        if d["use_clip_score"]:
            stages.append({"kind": "ClipScoreStage", "min_score": d["clip_min_score"]})
        if d["use_aesthetic"]:
            stages.append({"kind": "AestheticStage", "min_score": d["aesthetic_min_score"]})
        return stages

    def create(self, collection, user):
        """The new run, queued; None with the service's refusal on the form."""
        d = self.cleaned_data
        stages = self.stage_config()
        if not stages:
            self.add_error(None, "Choose at least one stage.")
            return None
        try:
            run = services.create_curation_run(
                collection,
                stages,
                clip_model_path=d["clip_model_path"],
                clip_model_name=d["clip_model_name"],
                aesthetic_head_path=d["aesthetic_head_path"],
                created_by=user,
            )
        except services.TrainingError as exc:
            add_to_form(self, exc)
            return None
        return services.start_curation_run(run)
