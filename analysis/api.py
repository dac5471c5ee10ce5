"""The researcher JSON API's reading endpoints (django-ninja routers, mounted by evalsite.api):

- ``campaigns_router`` at /annotation/api/: GET campaigns/ID/, the campaign's settings and invite links (annotation's)
  with its live progress and win rates (analysis.live);
- ``router`` at /analysis/api/: GET campaigns/ID/report, the report as JSON, CSV, HTML or PDF.

Authentication and JSON errors come with the API (evalsite.api, core.http_api), as for annotation.api.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import typing
from typing import Any, Literal

from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from pydantic import create_model, field_validator

from annotation.schemas import (
    CampaignSettingsOut,
    InviteLinkOut,
    LaunchImagesOut,
    ProgressOut,
    campaign_settings,
    find_campaign,
    invite_links_json,
)
from core.http_api import ERRORS, ApiError, ErrorOut, schema_of

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


# A recorded decision as the report's dataclass has it, plus the sentence the page shows.
DecisionOut = create_model(
    "DecisionOut",
    __base__=schema_of(services.DecisionSummary, name="DecisionFieldsOut"),
    sentence=(str | None, None),
)


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


def _out_type(hint):
    """The JSON type of a report value's field: tuples are lists, floats may be null (NaN), dataclasses schemas."""
    if dataclasses.is_dataclass(hint):
        return _out_schema(hint)
    if hint is float:
        return float | None
    if hint is dict:
        return dict[str, Any]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return list[_out_type(args[0])]
    if args:  # X | None
        return functools.reduce(operator.or_, {_out_type(arg) for arg in args})
    return hint


@functools.cache
def _out_schema(cls: type, name: str = "", doc: str = "") -> type[Schema]:
    """The response schema of one of the report's frozen dataclasses (analysis.services.values), field for field.

    Every field is required: the JSON report (``CampaignReport.as_dict``) writes them all.
    """
    return schema_of(cls, name=name, doc=doc, field_type=_out_type)


ReportOut = _out_schema(
    services.CampaignReport,
    "ReportOut",
    "The campaign's report (format=json; the other formats are files): every number, NaN written as null.",
)


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
