"""The researcher JSON API's campaign endpoints (a django-ninja router, mounted by evalsite.api at /annotation/api/):
list and create campaigns, launch / pause / resume / close them, their invite links and raters, exclude a rater.

The campaign itself (GET campaigns/ID/, with live win rates) is answered by analysis.api. Authentication (a staff
session, or a bearer token from ``manage.py campaign api-token USERNAME``), the JSON errors and the OpenAPI document
at /api/openapi.json come with the API (evalsite.api, core.http_api). Endpoints parse, call the form or a service,
and shape the answer (annotation.schemas); every refusal is ``{"error": ...}`` with 400 (404 for an unknown id).
"""

from __future__ import annotations

from ninja import Body, Router, Status

from core.http_api import ERRORS, ApiError

from . import selectors, services
from .forms import CampaignForm
from .models import Campaign, Participation
from .schemas import (
    CampaignIn,
    CampaignListOut,
    CampaignSettingsOut,
    ExclusionIn,
    ExclusionOut,
    InviteLinkIn,
    InviteLinkOut,
    InviteLinksOut,
    RatersOut,
    StatusOut,
    campaign_settings,
    campaign_summary,
    find_campaign,
    invite_link_json,
    invite_links_json,
)

# The moves a researcher can ask for, by URL (services.apply_campaign_action makes them or says why not).
ACTIONS = tuple(Campaign.ACTIONS)

router = Router(tags=["campaigns"])


def _body():
    # An empty body is the empty object, checked like any other (so "give name" rather than a missing body).
    return Body({}, validate_default=True)


@router.get("campaigns/", response={200: CampaignListOut, **ERRORS}, url_name="campaigns", summary="List campaigns")
def list_campaigns(request):
    """The newest 500 campaigns, with the share of their needed votes cast."""
    rows = list(
        Campaign.objects.select_related("prompt_set", "baseline").prefetch_related("campaign_models__model")[:500]
    )
    percent = selectors.campaign_percentages(rows)
    return {"campaigns": [campaign_summary(c, percent.get(c.pk, 0)) for c in rows]}


@router.post(
    "campaigns/", response={201: CampaignSettingsOut, **ERRORS}, url_name="campaigns", summary="Create a campaign"
)
def create_campaign(request, payload: CampaignIn = _body()):
    """A draft campaign, checked like the campaign form's (400 names the field: ``fields`` holds every problem)."""
    try:
        form = CampaignForm.from_payload(payload.dict(exclude_unset=True))
    except services.AnnotationError as exc:
        raise ApiError(400, str(exc)) from None
    campaign = form.create(request.auth) if form.is_valid() else None
    if campaign is None:
        raise ApiError(400, form.error_text(), fields={k: list(v) for k, v in form.errors.items()})
    return Status(201, campaign_settings(campaign))


def _action_endpoint(action: str):
    def endpoint(request, pk: int):
        campaign = find_campaign(pk)
        try:
            services.apply_campaign_action(campaign, action)
        except services.AnnotationError as exc:
            raise ApiError(400, str(exc)) from None
        campaign.refresh_from_db()
        return {"id": campaign.pk, "status": campaign.status, "launch_error": campaign.launch_error}

    endpoint.__name__ = endpoint.__qualname__ = f"{action}_campaign"
    endpoint.__doc__ = f"{action.capitalize()} the campaign; a move its status does not allow is refused (400)." + (
        " Launching generates the missing images, then the campaign goes live." if action == "launch" else ""
    )
    return endpoint


for _action in ACTIONS:
    router.post(
        f"campaigns/{{int:pk}}/{_action}/",
        response={200: StatusOut, **ERRORS},
        url_name=_action,
        operation_id=f"{_action}_campaign",
        summary=f"{_action.capitalize()} a campaign",
    )(_action_endpoint(_action))


@router.get(
    "campaigns/{int:pk}/invite-links/",
    response={200: InviteLinksOut, **ERRORS},
    url_name="invite_links",
    summary="List invite links",
)
def list_invite_links(request, pk: int):
    return {"invite_links": invite_links_json(find_campaign(pk), request.build_absolute_uri("/"))}


@router.post(
    "campaigns/{int:pk}/invite-links/",
    response={201: InviteLinkOut, **ERRORS},
    url_name="invite_links",
    summary="Create an invite link",
)
def create_invite_link(request, pk: int, payload: InviteLinkIn = _body()):
    """The link to give Prolific (its participant placeholders included), printed with ``base_url`` if given."""
    campaign = find_campaign(pk)
    try:
        link = services.create_invite_link(campaign, label=payload.label or "", max_raters=payload.max_raters or 0)
    except services.AnnotationError as exc:
        raise ApiError(400, str(exc)) from None
    return Status(201, invite_link_json(payload.base_url or request.build_absolute_uri("/"), link))


@router.get("campaigns/{int:pk}/raters/", response={200: RatersOut, **ERRORS}, url_name="raters", summary="List raters")
def list_raters(request, pk: int):
    """One row per participation: votes, gold accuracy, speed, position bias, exclusion."""
    return {"raters": [row.as_dict() for row in selectors.rater_quality(find_campaign(pk))]}


@router.post(
    "campaigns/{int:pk}/raters/{int:participation_pk}/exclude/",
    response={200: ExclusionOut, **ERRORS},
    url_name="exclude_rater",
    summary="Exclude a rater",
)
def exclude_rater(request, pk: int, participation_pk: int, payload: ExclusionIn = _body()):
    """Exclude a rater by their participation id (from raters/): their votes are kept, flagged, and stop counting."""
    participation = Participation.objects.filter(pk=participation_pk, campaign_id=pk).first()
    if participation is None:
        raise ApiError(404, f"Campaign {pk} has no rater with participation id {participation_pk} (see its raters/).")
    flagged = services.exclude_rater(participation, payload.reason)
    participation.refresh_from_db()
    return {
        "participation_id": participation.pk,
        "excluded": participation.excluded,
        "exclusion_reason": participation.exclusion_reason,
        "votes_flagged": flagged,
    }
