"""Researchers' forms for the human curation stages (training/review_views.py). Services validate again."""

from django import forms

from core.errors import add_to_form

from .models import CurationReview, CurationRun, CurationStage
from .services import reviews


class _FunnelRunChoice(forms.ModelChoiceField):
    def label_from_instance(self, run):
        return f"run {run.pk} of {run.collection.name}: {run.count_kept} of {run.count_in} kept"


class _ReviewChoice(forms.ModelChoiceField):
    def label_from_instance(self, review):
        return f"{review.name} ({review.get_status_display()})"


class _OpenStageForm(forms.Form):
    """Opens a stage through the service; its refusal lands under the field it names."""

    def open(self, user) -> CurationReview | None:
        if not self.is_valid():
            return None
        try:
            return self._open(dict(self.cleaned_data), user)
        except reviews.ReviewError as exc:
            add_to_form(self, exc)
            return None


class GeneralistReviewForm(_OpenStageForm):
    funnel_run = _FunnelRunChoice(
        queryset=CurationRun.objects.filter(status=CurationRun.Status.FINISHED).select_related("collection"),
        help_text="A finished automatic funnel run; its kept candidates are reviewed, best aesthetic score first.",
    )
    name = forms.SlugField(max_length=100, help_text="Short unique name, e.g. generalist-1.")
    mode = forms.ChoiceField(choices=CurationReview.Mode.choices, initial=CurationReview.Mode.KEEP_REJECT)
    keep_threshold = forms.IntegerField(
        min_value=1, max_value=5, initial=4, help_text="Rating mode: images rated at or above this are kept."
    )
    lease_seconds = forms.IntegerField(
        min_value=30, max_value=86_400, initial=300, help_text="How long a reviewer holds a candidate."
    )
    instructions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="Blank: the default wording."
    )

    def _open(self, data, user):
        return reviews.open_generalist_review(data.pop("funnel_run"), data.pop("name"), created_by=user, **data)


class SpecialistReviewForm(_OpenStageForm):
    source_review = _ReviewChoice(
        queryset=CurationReview.objects.filter(stage=CurationStage.GENERALIST),
        help_text="The generalist stage whose kept candidates the specialists select from.",
    )
    name = forms.SlugField(max_length=100, help_text="Short unique name, e.g. specialist-1.")
    target_size = forms.IntegerField(
        min_value=1, initial=2000, help_text="The final dataset's size; Emu used about 2,000."
    )
    lease_seconds = forms.IntegerField(min_value=30, max_value=86_400, initial=600)
    instructions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="Blank: the default wording."
    )

    def _open(self, data, user):
        return reviews.open_specialist_review(data.pop("source_review"), data.pop("name"), created_by=user, **data)


class FreezeReviewForm(forms.Form):
    dataset_name = forms.SlugField(max_length=100, label="Dataset name", help_text="e.g. emu-2k-v1")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)


class AestheticHeadForm(forms.Form):
    clip_model_path = forms.CharField(
        max_length=1000, required=False, help_text="Local open_clip model; blank: the funnel run's."
    )
    clip_model_name = forms.CharField(
        max_length=100, required=False, help_text="e.g. ViT-L-14; blank: the funnel run's."
    )
