"""Researchers' forms. The campaign form is also what the JSON API and `manage.py campaign create` validate with.

(About 510 lines, kept whole: the campaign form and its JSON-payload adapter share every field's rule.)

Field checks here exist to put each error next to the field it is about;
``services.create_campaign`` stays the authority and anything it refuses is
shown as a form-wide error in its own words.
"""

from __future__ import annotations

from typing import ClassVar

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS

from core.errors import add_to_form
from core.forms import FieldGroups
from core.text import json_type
from generation import services as generation_services
from generation.models import PromptSet, TextToImageModel

from . import services
from .models import CRITERION_DEFAULTS, DEFAULT_CONSENT_TEXT, Campaign, Choice, Criterion

# Settings a JSON payload (API, command) may give besides the criteria; the rest take the form's defaults.
PAYLOAD_FIELDS = {
    "name",
    "models",
    "pairing",
    "baseline",
    "prompt_set",
    "seeds",
    "criteria",
    "gold_share",
    "gold_min_accuracy",
    "gold_min_answers",
    "quota_per_rater",
    "lease_seconds",
    "completion_url",
    "rater_title",
    "consent_text",
    "contact",
    "screen_out_url",
    "speeder_seconds",
    "exclude_speeders",
    "stop_when_decided",
    "decision_width",
    "human_share",
    "pair_selection",
}
CRITERION_OVERRIDES = {"instructions", "votes_per_item", "choices"}
# Fields with no sensible default: a payload must name them.
REQUIRED_IN_PAYLOAD = {"name", "models", "prompt_set", "seeds"}
# JSON types a payload's settings must have (the form would turn a list into its text, a bool into a number).
TEXT_IN_PAYLOAD = {
    "name",
    "pairing",
    "baseline",
    "prompt_set",
    "completion_url",
    "rater_title",
    "screen_out_url",
    "pair_selection",
}
NUMBERS_IN_PAYLOAD = {"gold_share", "gold_min_accuracy", "speeder_seconds", "decision_width", "human_share"}
BOOLEANS_IN_PAYLOAD = {"exclude_speeders", "stop_when_decided"}
WHOLE_NUMBERS_IN_PAYLOAD = {"gold_min_answers", "quota_per_rater", "lease_seconds"}


def criterion_field(criterion: str, part: str) -> str:
    return f"{criterion}_{part}"


class CampaignForm(FieldGroups, forms.Form):
    # The new-campaign page's fieldsets (the criteria come in their own groups: criterion_groups).
    groups: ClassVar[dict[str, str]] = {
        "compared": "name models pairing baseline pair_selection prompt_set seeds",
        "raters": "gold_share gold_min_accuracy gold_min_answers quota_per_rater lease_seconds completion_url "
        "screen_out_url speeder_seconds exclude_speeders rater_title consent_text contact",
        "votes": "stop_when_decided decision_width human_share",
    }

    name = forms.CharField(max_length=200, help_text="For researchers only; raters never see it.")
    models = forms.ModelMultipleChoiceField(
        queryset=TextToImageModel.objects.all(),
        to_field_name="name",
        widget=forms.CheckboxSelectMultiple,
        help_text="Two or more registered models. Pairs are ordered as the models are listed (model A first).",
        error_messages={
            "required": "Choose at least two models to compare.",
            "invalid_choice": "There is no registered model named %(value)s.",
        },
    )
    pairing = forms.ChoiceField(
        choices=Campaign.Pairing.choices,
        initial=Campaign.Pairing.ALL_PAIRS,
        widget=forms.RadioSelect,
        error_messages={"invalid_choice": "Pairing must be all_pairs or vs_baseline, not %(value)s."},
    )
    baseline = forms.ModelChoiceField(
        queryset=TextToImageModel.objects.all(),
        to_field_name="name",
        required=False,
        help_text="With 'each model vs the baseline': the model every other one is compared against (e.g. the pre-trained base).",
        error_messages={"invalid_choice": "There is no registered model by that name."},
    )
    pair_selection = forms.ChoiceField(
        choices=Campaign.PairSelection.choices,
        initial=Campaign.PairSelection.UNIFORM,
        required=False,
        widget=forms.RadioSelect,
        label="Pair selection",
        help_text="Adaptive (all pairs, three or more models): the model pairs that most narrow the ranking's "
        "uncertain gaps get votes first, recomputed from the votes every 30 s, so the ranking separates with fewer "
        "votes. Uniform: every pair alike.",
        error_messages={"invalid_choice": "Pair selection must be uniform or adaptive, not %(value)s."},
    )
    prompt_set = forms.ModelChoiceField(
        queryset=PromptSet.objects.all(),
        to_field_name="name",
        error_messages={"invalid_choice": "There is no prompt set by that name.", "required": "Choose a prompt set."},
    )
    seeds = forms.CharField(
        initial="0-3", help_text="Integers and ranges, e.g. '0-3, 10'. Every model renders every (prompt, seed)."
    )
    gold_share = forms.FloatField(
        initial=0.1,
        min_value=0,
        max_value=0.5,
        help_text="Share of each rater's tasks that are gold items (an image against a visibly degraded copy). 0 turns gold off.",
        error_messages={
            "min_value": "The gold share must be between 0 and 0.5.",
            "max_value": "The gold share must be between 0 and 0.5.",
        },
    )
    gold_min_accuracy = forms.FloatField(
        initial=0.7,
        min_value=0,
        max_value=1,
        help_text="Raters below this gold accuracy are excluded automatically (votes kept, flagged).",
        error_messages={
            "min_value": "Give an accuracy between 0 and 1.",
            "max_value": "Give an accuracy between 0 and 1.",
        },
    )
    gold_min_answers = forms.IntegerField(
        initial=4, min_value=1, help_text="Gold answers needed before a rater can be excluded."
    )
    quota_per_rater = forms.IntegerField(
        initial=0,
        min_value=0,
        label="Quota per rater",
        help_text="Tasks per rater, gold included; 0 means no limit. With a quota, quota x gold share must reach the "
        "gold answers needed, or gold could never exclude anyone.",
        error_messages={"min_value": "The quota cannot be negative."},
    )
    lease_seconds = forms.IntegerField(
        initial=600,
        min_value=30,
        max_value=86_400,
        label="Lease (seconds)",
        help_text="An unanswered task goes back to the pool after this.",
        error_messages={
            "min_value": "The lease must be between 30 seconds and one day.",
            "max_value": "The lease must be between 30 seconds and one day.",
        },
    )
    completion_url = forms.URLField(
        required=False,
        label="Completion URL",
        help_text="Where finished raters are sent, e.g. https://app.prolific.com/submissions/complete?cc=CODE",
    )
    screen_out_url = forms.URLField(
        required=False,
        label="Screen-out URL",
        help_text="Where raters excluded by quality control are sent (a {code} in it becomes the screen-out code). "
        "Left empty, they are shown the screen-out code; never the completion code.",
    )
    speeder_seconds = forms.FloatField(
        required=False,
        initial=1.0,
        min_value=0,
        max_value=services.MAX_SPEEDER_SECONDS,
        label="Speeder threshold (seconds per pair)",
        help_text="Raters whose median time between answers is below this are flagged as speeders. 0 turns it off.",
        error_messages={
            "min_value": f"The speeder threshold must be between 0 (off) and {services.MAX_SPEEDER_SECONDS:g} seconds per pair.",
            "max_value": f"The speeder threshold must be between 0 (off) and {services.MAX_SPEEDER_SECONDS:g} seconds per pair.",
        },
    )
    exclude_speeders = forms.BooleanField(
        required=False,
        label="Exclude speeders",
        help_text="Exclude flagged speeders automatically (votes kept, flagged; they get the screen-out code).",
    )
    stop_when_decided = forms.BooleanField(
        required=False,
        label="Stop when decided",
        help_text="Close the campaign by itself once the anytime-valid interval of its first criterion excludes 50% "
        "(or is as narrow as the decision width) for every model pair. That interval stays valid however often "
        "anyone looks, so stopping early keeps its 95% promise.",
    )
    decision_width = forms.FloatField(
        required=False,
        min_value=services.MIN_DECISION_WIDTH,
        max_value=1,
        label="Decision width",
        help_text="With 'stop when decided': also stop once the anytime-valid interval is at most this wide, as a "
        "fraction (0.1 = 10 points). Empty: stop only when it excludes 50%.",
        error_messages={
            "min_value": f"The decision width must be a fraction from {services.MIN_DECISION_WIDTH:g} to 1 (e.g. 0.1), or empty.",
            "max_value": f"The decision width must be a fraction from {services.MIN_DECISION_WIDTH:g} to 1 (e.g. 0.1), or empty.",
        },
    )
    human_share = forms.FloatField(
        required=False,
        initial=1.0,
        min_value=services.MIN_HUMAN_SHARE,
        max_value=1,
        label="Human share of prompts",
        help_text="Fraction of the prompts whose comparisons raters vote on, drawn at random when the campaign "
        "launches; an automatic judge can score every prompt's pairs (AI-assisted win rates). 1: every prompt.",
        error_messages={
            "min_value": f"The human share must be a fraction from {services.MIN_HUMAN_SHARE:g} to 1.",
            "max_value": f"The human share must be a fraction from {services.MIN_HUMAN_SHARE:g} to 1.",
        },
    )
    rater_title = forms.CharField(
        initial="Compare two images", max_length=200, help_text="The heading raters see. Never name the models here."
    )
    consent_text = forms.CharField(
        required=False,
        initial=DEFAULT_CONSENT_TEXT,
        max_length=services.MAX_CONSENT_TEXT,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="What raters agree to before they start. The first paragraph is always shown; further paragraphs "
        "(after a blank line) fold away under 'Full information'. Plain text; left empty, Needle's short text.",
    )
    contact = forms.CharField(
        required=False,
        max_length=services.MAX_CONTACT,
        help_text="Who raters can write to about the study, shown on the consent and thank-you pages "
        "(e.g. 'Dr A. Researcher, a.researcher@uni.example').",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # One group of fields per criterion, prefilled with Emu's protocol.
        for criterion in Criterion:
            defaults = CRITERION_DEFAULTS[criterion]
            self.fields[criterion_field(criterion, "enabled")] = forms.BooleanField(
                required=False,
                initial=True,
                label=f"Judge {criterion.label}",
                help_text="Shown with the prompt." if defaults["show_prompt"] else "Shown without the prompt.",
            )
            self.fields[criterion_field(criterion, "instructions")] = forms.CharField(
                required=False,
                initial=defaults["instructions"],
                widget=forms.Textarea(attrs={"rows": 3}),
                label="Instructions",
            )
            self.fields[criterion_field(criterion, "votes_per_item")] = forms.IntegerField(
                required=False,
                initial=defaults["votes_per_item"],
                min_value=1,
                max_value=50,
                label="Raters per comparison (k)",
                error_messages={
                    "min_value": "Raters per comparison must be between 1 and 50.",
                    "max_value": "Raters per comparison must be between 1 and 50.",
                },
            )
            self.fields[criterion_field(criterion, "choices")] = forms.MultipleChoiceField(
                required=False,
                initial=defaults["choices"],
                choices=Choice.choices,
                widget=forms.CheckboxSelectMultiple,
                label="Answers raters can give",
            )

    def criterion_groups(self):
        """(criterion, its bound fields) pairs, for the template to lay out one box per criterion."""
        return [
            (
                criterion,
                [
                    self[criterion_field(criterion, part)]
                    for part in ("enabled", "instructions", "votes_per_item", "choices")
                ],
            )
            for criterion in Criterion
        ]

    def general_fields(self):
        return [self[name] for name in self.base_fields]

    # --- Validation ------------------------------------------------------------------------

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if Campaign.objects.filter(name=name).exists():
            raise forms.ValidationError(f"A campaign named {name!r} already exists.")
        return name

    def clean_consent_text(self):
        return self.cleaned_data["consent_text"] or DEFAULT_CONSENT_TEXT

    def clean_models(self):
        models = list(self.cleaned_data["models"])
        # The queryset comes back in name order, each model once; keep the order the researcher gave (API, command).
        given = (
            self.data.getlist(self.add_prefix("models")) if hasattr(self.data, "getlist") else self.data.get("models")
        )
        given = [str(name) for name in given or []]
        twice = sorted({name for name in given if given.count(name) > 1})
        if twice:
            raise forms.ValidationError(f"Choose at least two different models: {', '.join(twice)} is listed twice.")
        if len(models) < 2:
            raise forms.ValidationError("Choose at least two models to compare.")
        order = {name: i for i, name in enumerate(given)}
        return sorted(models, key=lambda m: order.get(m.name, len(order)))

    def clean_seeds(self):
        try:
            return generation_services.parse_seeds(self.cleaned_data["seeds"])
        except generation_services.BatchError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_prompt_set(self):
        prompt_set = self.cleaned_data["prompt_set"]
        if not prompt_set.prompts.exists():
            raise forms.ValidationError(f"Prompt set {prompt_set.name!r} has no prompts.")
        return prompt_set

    def clean(self):
        data = super().clean()
        models = data.get("models") or []
        if data.get("pairing") == Campaign.Pairing.VS_BASELINE:
            baseline = data.get("baseline")
            if baseline is None:
                self.add_error("baseline", "With 'each model vs the baseline', choose the baseline.")
            elif models and baseline not in models:
                self.add_error("baseline", f"The baseline {baseline.name} is not one of the chosen models.")
        if data.get("pair_selection") == Campaign.PairSelection.ADAPTIVE and models:
            if not services.adaptive_pairs_possible(len(models), data.get("pairing")):
                self.add_error(
                    "pair_selection",
                    "Adaptive pair selection needs three or more models compared as all pairs; use uniform.",
                )
        enabled = [c for c in Criterion if data.get(criterion_field(c, "enabled"))]
        if not enabled:
            self.add_error(
                criterion_field(Criterion.VISUAL_APPEAL, "enabled"), "Choose at least one criterion to judge."
            )
        for criterion in enabled:
            choices = data.get(criterion_field(criterion, "choices")) or CRITERION_DEFAULTS[criterion]["choices"]
            if not {"left", "right"} <= set(choices):
                self.add_error(criterion_field(criterion, "choices"), "Raters must be able to answer left and right.")
        return data

    def criteria(self) -> dict[str, dict]:
        """The enabled criteria as services.create_campaign takes them: criterion -> overrides of the defaults."""
        d = self.cleaned_data
        criteria = {}
        for criterion in Criterion:
            if not d.get(criterion_field(criterion, "enabled")):
                continue
            overrides = {
                "instructions": (d.get(criterion_field(criterion, "instructions")) or "").strip(),
                "votes_per_item": d.get(criterion_field(criterion, "votes_per_item")),
                # Keep the choices in the order raters see them (left, right, then the others).
                "choices": [c for c in Choice.values if c in (d.get(criterion_field(criterion, "choices")) or [])],
            }
            criteria[criterion.value] = {k: v for k, v in overrides.items() if v not in (None, "", [])}
        return criteria

    # The settings create_campaign takes as the form cleaned them.
    PASSED_AS_GIVEN = (
        "name models prompt_set seeds pairing baseline lease_seconds quota_per_rater gold_share gold_min_accuracy "
        "gold_min_answers completion_url rater_title consent_text contact screen_out_url exclude_speeders"
    ).split()

    def create(self, user=None) -> Campaign | None:
        """The draft campaign, or None with the service's refusal added as a form error."""
        d = self.cleaned_data
        try:
            return services.create_campaign(
                **{name: d[name] for name in self.PASSED_AS_GIVEN},
                criteria=self.criteria(),
                speeder_seconds=1.0 if d["speeder_seconds"] is None else d["speeder_seconds"],
                stop_when_decided=d["stop_when_decided"],
                decision_width=d["decision_width"],
                human_share=1.0 if d["human_share"] is None else d["human_share"],
                pair_selection=d["pair_selection"] or Campaign.PairSelection.UNIFORM,
                created_by=user if user is not None and user.is_authenticated else None,
            )
        except services.AnnotationError as exc:
            add_to_form(self, exc)
            return None

    # --- JSON payloads (API, management command) ------------------------------------------

    @classmethod
    def from_payload(cls, payload: dict) -> CampaignForm:
        """A bound form from a JSON-style dict: model and prompt-set names, seeds as a list or "0-3", criteria as
        a list of names or a dict of name -> {instructions, votes_per_item, choices}.

        Raises AnnotationError for a payload of the wrong shape; everything else is the form's validation.
        """
        if not isinstance(payload, dict):
            raise services.AnnotationError("Send a JSON object with the campaign's settings.")
        unknown = set(payload) - PAYLOAD_FIELDS
        if unknown:
            raise services.AnnotationError(
                f"Unknown settings: {', '.join(sorted(unknown))}. Known: {', '.join(sorted(PAYLOAD_FIELDS))}."
            )
        missing = sorted(f for f in REQUIRED_IN_PAYLOAD if payload.get(f) in (None, "", []))
        if missing:
            raise services.AnnotationError(f"Give {', '.join(missing)}.")
        cls._check_payload_types(payload)
        form = cls()
        data = {name: field.initial for name, field in form.fields.items() if field.initial is not None}
        for key, value in payload.items():
            if key in ("criteria", "models", "seeds"):
                continue
            data[key] = "" if value is None else value
        models = payload["models"]
        data["models"] = [models] if isinstance(models, str) else list(models)
        seeds = payload["seeds"]
        data["seeds"] = ",".join(str(s) for s in seeds) if isinstance(seeds, (list, tuple)) else seeds
        data.update(cls._criteria_data(payload.get("criteria")))
        return cls(data=data)

    @staticmethod
    def _check_payload_types(payload: dict) -> None:
        """JSON types the form cannot tell apart once they are text: a list where a name belongs, a bool for a number."""
        for key in TEXT_IN_PAYLOAD & set(payload):
            if payload[key] is not None and not isinstance(payload[key], str):
                what = "a name" if key in ("prompt_set", "baseline") else "text"
                raise services.AnnotationError(
                    f"{key} must be {what} (a JSON string), not {json_type(payload[key])}.", field=key
                )
        for key in NUMBERS_IN_PAYLOAD & set(payload):
            value = payload[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise services.AnnotationError(f"{key} must be a number, not {json_type(value)}.", field=key)
        for key in BOOLEANS_IN_PAYLOAD & set(payload):
            if payload[key] is not None and not isinstance(payload[key], bool):
                raise services.AnnotationError(
                    f"{key} must be true or false, not {json_type(payload[key])}.", field=key
                )
        for key in WHOLE_NUMBERS_IN_PAYLOAD & set(payload):
            value = payload[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise services.AnnotationError(f"{key} must be a whole number, not {value!r}.", field=key)
        models = payload["models"]
        if not isinstance(models, (str, list)):
            raise services.AnnotationError(
                f'models must be a list of model names, e.g. ["base", "tuned"], not {json_type(models)}.',
                field="models",
            )
        if isinstance(models, list) and not all(isinstance(m, str) for m in models):
            raise services.AnnotationError(
                f'models must be a list of model names (strings), e.g. ["base", "tuned"], not {models!r}.',
                field="models",
            )
        seeds = payload["seeds"]
        if not isinstance(seeds, (str, list)):
            raise services.AnnotationError(
                f"seeds must be a list of whole numbers or a string like '0-3, 10', not {json_type(seeds)}.",
                field="seeds",
            )
        if isinstance(seeds, list):
            for seed in seeds:
                if isinstance(seed, bool) or not isinstance(seed, (int, str)):
                    raise services.AnnotationError(
                        f"seeds must be whole numbers from 0 to {generation_services.MAX_SEED} (or a string like "
                        f"'0-3, 10'), not {seed!r}.",
                        field="seeds",
                    )

    @staticmethod
    def _criteria_data(criteria) -> dict:
        if criteria is None:
            return {}  # the form's defaults: both of Emu's criteria
        known = ", ".join(Criterion.values)
        if isinstance(criteria, (list, tuple)):
            names = [name for name in criteria if not isinstance(name, str)]
            if names:
                raise services.AnnotationError(
                    f"criteria must name criteria as strings ({known}), not {names[0]!r}.", field="criteria"
                )
            criteria = {name: {} for name in criteria}
        if not isinstance(criteria, dict):
            raise services.AnnotationError(
                f"criteria must be a list of criterion names ({known}) or an object of name -> settings.",
                field="criteria",
            )
        unknown = set(criteria) - set(Criterion.values)
        if unknown:
            raise services.AnnotationError(
                f"Unknown criteria: {', '.join(sorted(unknown))}. Known: {known}.", field="criteria"
            )
        data = {}
        for criterion in Criterion:
            overrides = criteria.get(criterion.value)
            data[criterion_field(criterion, "enabled")] = criterion.value in criteria
            if overrides is None or overrides == {}:
                continue
            if not isinstance(overrides, dict) or set(overrides) - CRITERION_OVERRIDES:
                raise services.AnnotationError(
                    f"Settings of {criterion.value} can be: {', '.join(sorted(CRITERION_OVERRIDES))}.", field="criteria"
                )
            if "instructions" in overrides and not isinstance(overrides["instructions"], str):
                raise services.AnnotationError(
                    f"The instructions of {criterion.value} must be text (a JSON string).",
                    field=criterion_field(criterion, "instructions"),
                )
            if "choices" in overrides and not (
                isinstance(overrides["choices"], list) and all(isinstance(c, str) for c in overrides["choices"])
            ):
                raise services.AnnotationError(
                    f'The choices of {criterion.value} must be a list, e.g. ["left", "right", "tie"].',
                    field=criterion_field(criterion, "choices"),
                )
            for part, value in overrides.items():
                data[criterion_field(criterion, part)] = value
        return data

    def error_text(self) -> str:
        """All errors as one line a script or terminal can print: 'seeds: Cannot read ...; models: ...'."""
        parts = []
        for field, errors in self.errors.items():
            label = "" if field == NON_FIELD_ERRORS else f"{field}: "
            parts.extend(f"{label}{e}" for e in errors)
        return "; ".join(parts)


class InviteLinkForm(forms.Form):
    label = forms.CharField(max_length=200, required=False, help_text="e.g. 'Prolific study 1'")
    max_raters = forms.IntegerField(
        min_value=0,
        initial=0,
        required=False,
        label="Rater limit",
        help_text="0 means no limit.",
        error_messages={"min_value": "The rater limit cannot be negative."},
    )


class InviteAccountForm(forms.Form):
    username = forms.CharField(max_length=150, help_text="An existing account; it can then vote in this campaign.")

    def clean_username(self):
        username = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise forms.ValidationError(f"There is no account named {username!r}.")
        if not user.is_active:
            raise forms.ValidationError(f"The account {username!r} is deactivated.")
        return user


class ExcludeRaterForm(forms.Form):
    reason = forms.CharField(
        max_length=300,
        error_messages={"required": "Say why the rater is excluded; the reason is kept with their votes."},
    )
