"""The researcher JSON API's reading endpoints (django-ninja routers, mounted by evalsite.api):

- ``campaigns_router`` at /annotation/api/: GET campaigns/ID/, the campaign's settings and invite links (annotation's)
  with its live progress and win rates (analysis.live);
- ``router`` at /analysis/api/: GET campaigns/ID/report, the report as JSON, CSV, HTML or PDF.

Authentication and JSON errors come with the API (evalsite.api, core.http_api), as for annotation.api.
"""

from __future__ import annotations

from typing import Any, Literal

from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from pydantic import field_validator

from annotation.schemas import (
    CampaignSettingsOut,
    InviteLinkOut,
    LaunchImagesOut,
    ProgressOut,
    campaign_settings,
    find_campaign,
    invite_links_json,
)
from core.http_api import ERRORS, ApiError, ErrorOut

from . import services
from .live import campaign_state

campaigns_router = Router(tags=["campaigns"])
router = Router(tags=["reports"])


# --- The campaign, live -----------------------------------------------------------------------------------------------


class WinRateOut(Schema):
    """B's item-level win rate over A for one criterion and pair, with the report's headline interval."""

    key: str
    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    items: int
    compared: int
    incomplete_items: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    low: float | None
    high: float | None
    interval_method: str | None
    win_rate_half_ties: float | None = Field(description="ties as half a win")
    low_half_ties: float | None
    high_half_ties: float | None
    interval_note: str
    verdict: Literal["above", "below", "unclear"]
    message: str
    win_rate_text: str
    interval_text: str
    half_ties_text: str
    half_ties_interval_text: str
    sequence_prompts: int = Field(description="complete prompts the anytime-valid interval has seen")
    sequence_low: float | None = Field(description="anytime-valid 95% interval of the ties-as-half rate (low)")
    sequence_high: float | None
    sequence_estimate: float | None
    sequence_text: str
    sequence_verdict: Literal["above", "below", "unclear"]
    sequence_decision_text: str


class StopRuleOut(Schema):
    stop_when_decided: bool
    decision_width: float | None
    criterion: str | None = Field(description="the primary criterion the rule watches")
    level: float = Field(description="each pair's sequence level (Bonferroni over pairs)")
    description: str


class DecisionOut(Schema):
    """A recorded "stop when decided" decision: the look (complete prompts) and votes at which it happened."""

    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    decision: Literal["B better", "A better", "width reached"]
    look: int
    votes_at_look: int
    votes_at_check: int
    low: float
    high: float
    estimate: float
    level: float
    target_width: float | None
    decided_at: str
    recorded_at: str
    closed_campaign: bool
    sentence: str | None = None


class CampaignDetailOut(CampaignSettingsOut):
    progress: ProgressOut
    generation: LaunchImagesOut | None = Field(description="while launching: the campaign's images made so far")
    win_rates: list[WinRateOut]
    stop_rule: StopRuleOut
    decisions: list[DecisionOut]
    report: str = Field(description="the report's URL (JSON)")
    invite_links: list[InviteLinkOut]


@campaigns_router.get(
    "campaigns/{int:pk}/", response={200: CampaignDetailOut, **ERRORS}, url_name="campaign", summary="A campaign, live"
)
def campaign_detail(request, pk: int):
    """The campaign's settings and invite links, its progress and its win rates so far (complete comparisons)."""
    campaign = find_campaign(pk)
    state = campaign_state(campaign)
    return {
        **campaign_settings(campaign),
        "progress": state["progress"],
        "generation": state["generation"],
        "win_rates": state["win_rates"],
        "stop_rule": state["stop_rule"],
        "decisions": state["decisions"],
        "report": request.build_absolute_uri(reverse("api:report", args=[campaign.pk])) + "?format=json",
        "invite_links": invite_links_json(campaign, request.build_absolute_uri("/")),
    }


# --- The report -------------------------------------------------------------------------------------------------------

ReportFormat = Literal["json", "csv", "items.csv", "items-csv", "votes-csv", "html", "pdf"]
assert set(ReportFormat.__args__) == {*services.EXPORT_FORMATS, *services.FORMAT_ALIASES}


class ReportQuery(Schema):
    format: ReportFormat = Field("json", description="json inline; csv (votes), items-csv, html and pdf as files")
    # The ranges are documented here and enforced, with their own words, by services.check_options.
    seed: int = Field(
        services.DEFAULT_SEED,
        description="bootstrap seed; moves only the Bradley-Terry intervals",
        json_schema_extra={"minimum": 0, "maximum": services.MAX_SEED},
    )
    rounds: int = Field(
        services.DEFAULT_ROUNDS,
        description="bootstrap rounds",
        json_schema_extra={"minimum": services.MIN_ROUNDS, "maximum": services.MAX_ROUNDS},
    )

    @field_validator("seed", "rounds", mode="before")
    @classmethod
    def _blank_is_default(cls, value, info):
        if isinstance(value, str) and not value.strip():  # ?seed= : the default, as on the report page
            return cls.model_fields[info.field_name].default
        return value.strip() if isinstance(value, str) else value


class BoundsOut(Schema):
    low: float | None
    high: float | None
    level: float | None
    method: str


class OutcomesOut(Schema):
    wins: int
    ties: int
    losses: int
    win_share: float | None
    tie_share: float | None
    loss_share: float | None


class GroupWinRateOut(Schema):
    group: str
    comparisons: int
    prompts: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    interval: BoundsOut | None
    sign_test_p: float | None
    incomplete_items: int
    interval_note: str


class PlannerTargetOut(Schema):
    half_width_points: int
    comparisons_needed: int | None
    votes_needed: int | None


class ComparisonOut(Schema):
    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    votes_per_item: int
    items: int
    compared: int
    incomplete_items: int
    unvoted_items: int
    prompts: int
    raters: int
    message: str
    statement: str
    item_outcomes: OutcomesOut | None
    vote_outcomes: OutcomesOut | None
    win_rate: float | None
    interval: BoundsOut | None
    win_rate_half_ties: float | None
    interval_half_ties: BoundsOut | None
    interval_note: str
    sign_test_p: float | None
    by_category: list[GroupWinRateOut]
    by_challenge: list[GroupWinRateOut]
    design_effect: float | None
    planner: list[PlannerTargetOut]


class AgreementOut(Schema):
    criterion: str
    criterion_label: str
    message: str
    fleiss_kappa: float | None
    fleiss_items: int
    ratings_per_item: int
    krippendorff_alpha: float | None
    alpha_items: int
    majority_agreement: float | None
    majority_items: int
    items_without_majority: int
    categories: list[str]


class RaterSideBiasOut(Schema):
    rater_id: int
    external_id: str
    side_votes: int
    left_picks: int
    left_share: float | None
    p_value: float | None
    flagged: bool


class RankedModelOut(Schema):
    model: str
    score: float | None
    low: float | None
    high: float | None
    rank: int
    rank_upper: int | None
    mc_error: float | None


class RankingOut(Schema):
    criterion: str
    criterion_label: str
    message: str
    unit: str
    anchor: str | None
    battles: int
    prompts: int
    degenerate_rounds: int
    models: list[RankedModelOut]
    win_fractions: list[list[float | None]]
    interval_note: str


class ExcludedRaterOut(Schema):
    rater_id: int
    participation_id: int
    external_id: str
    reason: str
    excluded_at: str | None
    excluded_votes: int
    excluded_gold_votes: int


class FlaggedSpeederOut(Schema):
    rater_id: int
    external_id: str
    median_seconds: float | None
    excluded: bool


class ExclusionsOut(Schema):
    rule: dict[str, Any]
    raters: list[ExcludedRaterOut]
    excluded_votes: int
    gold_votes: int
    speeders: list[FlaggedSpeederOut]


class ReproducibilityOut(Schema):
    votes: int
    votes_sha256: str
    last_vote_at: str | None
    simulated_votes: int
    excluded_votes: int
    exclusion_rule: dict[str, Any]
    seed: int
    rounds: int
    level: float
    include_incomplete: bool
    interval_method: str
    min_prompts_for_interval: int
    bradley_terry_unit: str
    code_version: str
    software: dict[str, Any]


class SequenceOut(Schema):
    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    prompts: int
    total_prompts: int
    low: float | None
    high: float | None
    estimate: float | None
    level: float
    target_width: float | None
    decided_at: int | None
    decision: str
    decision_low: float | None
    decision_high: float | None
    method: str
    message: str


class PredictionPoweredOut(Schema):
    criterion: str
    criterion_label: str
    model_a: str
    model_b: str
    judge: str
    labelled_items: int
    labelled_prompts: int
    unlabelled_items: int
    unlabelled_prompts: int
    message: str
    estimate: float | None
    interval: BoundsOut | None
    humans_only_estimate: float | None
    humans_only: BoundsOut | None
    lam: float | None
    agreement: float | None
    correlation: float | None
    effective_labelled: float | None
    interval_note: str


class ReportOut(Schema):
    """The campaign's report (format=json; the other formats are files): every number, NaN written as null."""

    campaign_id: int
    campaign_name: str
    campaign_status: str
    models: list[str]
    pairing: str
    baseline: str | None
    prompt_set: str
    comparisons: list[ComparisonOut]
    agreement: list[AgreementOut]
    position_bias: list[RaterSideBiasOut]
    rankings: list[RankingOut]
    exclusions: ExclusionsOut
    reproducibility: ReproducibilityOut
    sequences: list[SequenceOut] = Field(description="anytime-valid confidence sequences, ties as half")
    stop_rule: StopRuleOut | None
    decisions: list[DecisionOut]
    prediction_powered: list[PredictionPoweredOut] = Field(description="AI-assisted (PPI++) win rates, ties as half")
    sequence_explanation: str
    ppi_explanation: str


FILES = {
    name: {"schema": {"type": "string", "format": "binary"}}
    for name in sorted({f.content_type for f in services.EXPORT_FORMATS.values() if f.name != "json"})
}


def _file_response(exported: services.Export):
    if isinstance(exported.content, bytes):
        response = HttpResponse(exported.content, content_type=exported.format.content_type)
    else:  # CSV lines straight from a database cursor: a large campaign never sits in memory
        response = StreamingHttpResponse(exported.content, content_type=exported.format.content_type)
    if exported.format.name != "json":
        response["Content-Disposition"] = f'attachment; filename="{exported.filename}"'
    return response


@router.get(
    "campaigns/{int:pk}/report",
    response={200: ReportOut, **ERRORS, 409: ErrorOut},
    url_name="report",
    summary="A campaign's report",
    openapi_extra={"responses": {200: {"content": FILES}}},
)
def report(request, pk: int, query: Query[ReportQuery]):
    """The report in ``format``; 409 while the campaign has no votes to report."""
    campaign = find_campaign(pk)
    options = {"seed": query.seed, "rounds": query.rounds}
    try:
        services.check_options(**options)
    except services.ReportError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        exported = services.export(campaign, query.format, **options)
    except services.ReportError as exc:  # no votes yet
        raise ApiError(409, str(exc)) from None
    return _file_response(exported)
