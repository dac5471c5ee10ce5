"""What campaigns, invite links and raters look like in the researcher JSON API: typed request bodies and answers.

Shared by the API routers of annotation (annotation.api: the list and every change) and analysis (analysis.api: the
campaign with its live win rates, and the report). The request bodies check only the JSON shape; what the values
must be is decided, and explained, by the form and the services, as on the pages and the command line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from django.db.models import Count
from django.urls import reverse
from ninja import Schema
from pydantic import Field, field_validator

from core.http_api import ApiError, JsonObjectIn, refuse, schema_of

from . import selectors, services
from .forms import CampaignForm
from .models import Campaign, Criterion

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]  # datetime.isoformat(), as it was
CampaignStatus = Literal["draft", "launching", "live", "paused", "closed"]
CriterionName = Literal["visual_appeal", "text_faithfulness"]
assert set(CampaignStatus.__args__) == set(Campaign.Status.values) and set(CriterionName.__args__) == set(
    Criterion.values
)


# --- Request bodies ---------------------------------------------------------------------------------------------------


class CriterionSettingsIn(JsonObjectIn):
    instructions: str | None = None
    votes_per_item: int | None = Field(None, description="raters per comparison (k), 1-50")
    choices: list[str] | None = Field(None, description='e.g. ["left", "right", "tie"]')


class CampaignIn(JsonObjectIn):
    """A new draft campaign: model and prompt-set names, seeds as a list or "0-3, 10", criteria as a list of names or
    an object of name -> settings (default: both of Emu's)."""

    name: str
    models: list[str] | str = Field(description="two or more registered models, model A first")
    prompt_set: str
    seeds: list[int | str] | str = Field(description='whole numbers, or a string like "0-3, 10"')
    pairing: Literal["all_pairs", "vs_baseline"] | None = None
    baseline: str | None = None
    criteria: list[str] | dict[str, CriterionSettingsIn | None] | None = None
    gold_share: float | None = None
    gold_min_accuracy: float | None = None
    gold_min_answers: int | None = None
    quota_per_rater: int | None = None
    lease_seconds: int | None = None
    completion_url: str | None = None
    rater_title: str | None = None
    consent_text: str | None = None
    contact: str | None = None
    screen_out_url: str | None = None
    speeder_seconds: float | None = None
    exclude_speeders: bool | None = None
    stop_when_decided: bool | None = Field(
        None, description="close by itself once the anytime-valid interval of the first criterion decides"
    )
    decision_width: float | None = Field(
        None, description="with stop_when_decided: also stop at this anytime-valid interval width (0.01-1)"
    )
    human_share: float | None = Field(
        None, description="fraction of the prompts humans vote on, drawn at random at launch (0.01-1; default 1)"
    )
    pair_selection: Literal["uniform", "adaptive"] | None = Field(
        None, description="adaptive: all pairs of three or more models only (default uniform)"
    )

    @classmethod
    def check_shape(cls, values) -> None:
        # The form reads a payload's shape and says what is wrong with it in its own words (the page, the
        # command line and this API refuse alike); the fields' types below then only document it.
        try:
            CampaignForm.from_payload(values)
        except services.AnnotationError as exc:
            raise refuse(str(exc)) from None


class InviteLinkIn(JsonObjectIn):
    """A new invite link; an empty body is a link with no label and no limit."""

    object_hint: ClassVar[str] = 'Send a JSON object: {"label": ..., "max_raters": ..., "base_url": ...}.'

    label: str | None = None
    max_raters: int | None = Field(None, description="0 means no limit")
    base_url: str | None = Field(
        None, description="the site's public address for the printed link, e.g. https://needle.example.org"
    )

    @field_validator("base_url", mode="before")
    @classmethod
    def _http_url(cls, value):
        if not value:
            return None
        if not (isinstance(value, str) and value.startswith(("http://", "https://"))):
            raise refuse("base_url must start with http:// or https://, e.g. https://needle.example.org.")
        return value


SAY_WHY = 'Say why the rater is excluded: {"reason": "..."} (it is kept with their flagged votes).'


class ExclusionIn(JsonObjectIn):
    """Why the rater is excluded (kept with their flagged votes)."""

    object_hint: ClassVar[str] = SAY_WHY
    model_config = {**JsonObjectIn.model_config, "extra": "ignore"}

    reason: str = Field(min_length=1)

    @classmethod
    def check_shape(cls, values) -> None:
        reason = values.get("reason") if isinstance(values, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            raise refuse(SAY_WHY)


# --- Answers ----------------------------------------------------------------------------------------------------------


class CampaignSummaryOut(Schema):
    id: int
    name: str
    status: CampaignStatus
    models: list[str] = Field(description="in campaign order: model A first")
    pairing: Literal["all_pairs", "vs_baseline"]
    baseline: str | None
    prompt_set: str
    seeds: list[int]
    percent: int | None = Field(description="of the votes needed, cast (in the list; null elsewhere)")
    created_at: Timestamp
    url: str = Field(description="the campaign's page")


class CampaignListOut(Schema):
    campaigns: list[CampaignSummaryOut]


class CriterionOut(Schema):
    question: str
    instructions: str
    votes_per_item: int
    choices: list[str]
    show_prompt: bool


class CampaignSettingsOut(CampaignSummaryOut):
    criteria: dict[str, CriterionOut]
    gold_share: float
    gold_min_accuracy: float
    gold_min_answers: int
    quota_per_rater: int
    lease_seconds: int
    completion_url: str
    completion_code: str
    rater_title: str
    consent_text: str
    contact: str
    launch_error: str
    screen_out_url: str
    screen_out_code: str
    speeder_seconds: float
    exclude_speeders: bool
    stop_when_decided: bool
    decision_width: float | None
    human_share: float
    human_prompt_ids: list[int] | None = Field(description="the prompts drawn for human votes (null until launch)")
    pair_selection: Literal["uniform", "adaptive"]


class InviteLinkOut(Schema):
    id: int
    label: str
    max_raters: int
    active: bool
    joined: int | None = Field(description="raters who joined through it (null just after creation)")
    url: str = Field(description="the link to give Prolific, with its participant placeholders")


class InviteLinksOut(Schema):
    invite_links: list[InviteLinkOut]


class StatusOut(Schema):
    id: int
    status: CampaignStatus
    launch_error: str


CriterionProgressOut = schema_of(selectors.CriterionProgress)


class ProgressOut(Schema):
    votes: int
    votes_needed: int
    percent: int
    complete_items: int
    items: int
    per_criterion: list[CriterionProgressOut]
    open_leases: int
    active_raters: int
    recent_votes: int
    projected_finish: Timestamp | None


class LaunchImagesOut(Schema):
    done: int
    total: int
    error: str


class RaterOut(Schema):
    participation_id: int
    rater_id: int
    source: str
    prolific_pid: str
    study_id: str
    session_id: str
    external_id: str
    votes: int
    gold_answered: int
    gold_correct: int
    gold_accuracy: float | None
    median_seconds: float | None
    left_share: float | None
    excluded: bool
    exclusion_reason: str
    completed: bool
    joined_at: Timestamp
    simulated: bool
    speeder: bool
    speeder_median_seconds: float | None


class RatersOut(Schema):
    raters: list[RaterOut]


class ExclusionOut(Schema):
    participation_id: int
    excluded: bool
    exclusion_reason: str
    votes_flagged: int


# --- Building the answers -------------------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def campaign_summary(campaign: Campaign, percent: int | None = None) -> dict:
    return {
        "id": campaign.pk,
        "name": campaign.name,
        "status": campaign.status,
        "models": [cm.model.name for cm in campaign.campaign_models.all()],  # in campaign order; prefetched for lists
        "pairing": campaign.pairing,
        "baseline": campaign.baseline.name if campaign.baseline_id else None,
        "prompt_set": campaign.prompt_set.name,
        "seeds": campaign.seeds,
        "percent": percent,
        "created_at": _iso(campaign.created_at),
        "url": reverse("campaigns:detail", args=[campaign.pk]),
    }


def campaign_settings(campaign: Campaign) -> dict:
    return {
        **campaign_summary(campaign),
        "criteria": {
            c.criterion: {
                "question": c.question,
                "instructions": c.instructions,
                "votes_per_item": c.votes_per_item,
                "choices": c.choices,
                "show_prompt": c.show_prompt,
            }
            for c in campaign.criteria.all()
        },
        **{
            field: getattr(campaign, field)
            for field in CampaignSettingsOut.model_fields
            if field not in CampaignSummaryOut.model_fields and field != "criteria"
        },
    }


def invite_link_json(base_url: str, link) -> dict:
    """``base_url``: the site's address the link is printed with (the request's own, unless the client chose one)."""
    return {
        "id": link.pk,
        "label": link.label,
        "max_raters": link.max_raters,
        "active": link.active,
        "joined": getattr(link, "joined", None),
        "url": selectors.invite_url(base_url, link),
    }


def invite_links_json(campaign: Campaign, base_url: str) -> list[dict]:
    links = campaign.invite_links.annotate(joined=Count("participations")).order_by("id")
    return [invite_link_json(base_url, link) for link in links]


def find_campaign(pk: int) -> Campaign:
    """The campaign with id ``pk``; ApiError 404 when there is none."""
    campaign = Campaign.objects.select_related("prompt_set", "baseline", "generation_batch").filter(pk=pk).first()
    if campaign is None:
        raise ApiError(404, f"There is no campaign {pk}.")
    return campaign
