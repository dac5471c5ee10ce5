"""JSON API for researchers' scripts: create, launch, watch and steer campaigns (mounted at /annotation/api/).

Authentication is either a staff session (the browser; POSTs need the CSRF
token like any form) or ``Authorization: Bearer <token>``, a researcher API
token from ``manage.py campaign api-token USERNAME``. Tokens need no table:
they are the user's id signed with the site's SECRET_KEY and a timestamp, so
they expire by themselves (NEEDLE_API_TOKEN_MAX_AGE_DAYS, default 90), and
they embed a fingerprint of the password hash, so changing the password
revokes every token issued before. Rotating SECRET_KEY revokes them all.
"""

from __future__ import annotations

import json
from functools import wraps

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db.models import Count
from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.urls import path, reverse
from django.utils.crypto import constant_time_compare, salted_hmac
from django.views.decorators.csrf import csrf_exempt

from analysis.live import campaign_state  # moves to analysis's API router (issue 11)

from . import selectors, services
from .forms import CampaignForm
from .models import Campaign, Participation

app_name = "api"

API_TOKEN_SALT = "annotation.api-token"
DEFAULT_TOKEN_MAX_AGE_DAYS = 90
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ACTIONS = ("launch", "pause", "resume", "close")
INVITE_LINK_FIELDS = {"label", "max_raters", "base_url"}


# --- Tokens -----------------------------------------------------------------------------------


class ApiTokenError(Exception):
    pass


def token_max_age_days() -> int:
    return int(getattr(settings, "NEEDLE_API_TOKEN_MAX_AGE_DAYS", DEFAULT_TOKEN_MAX_AGE_DAYS))


def _password_stamp(user) -> str:
    return salted_hmac(API_TOKEN_SALT, user.password).hexdigest()[:16]


def issue_api_token(user) -> str:
    """A bearer token for a staff account, valid for token_max_age_days()."""
    if not (user.is_active and user.is_staff):
        raise services.AnnotationError(f"{user.get_username()} is not an active staff account; API tokens are for researchers only.")
    return signing.TimestampSigner(salt=API_TOKEN_SALT).sign(f"{user.pk}:{_password_stamp(user)}")


def user_for_api_token(token: str):
    """The user a token was issued to; ApiTokenError if it is forged, tampered with, expired or revoked."""
    try:
        value = signing.TimestampSigner(salt=API_TOKEN_SALT).unsign(token, max_age=token_max_age_days() * 86_400)
    except signing.SignatureExpired:
        raise ApiTokenError("The API token has expired; get a new one with: manage.py campaign api-token USERNAME") from None
    except signing.BadSignature:
        raise ApiTokenError("The API token is not valid.") from None
    pk, _, stamp = value.partition(":")
    user = get_user_model().objects.filter(pk=pk).first() if pk.isdigit() else None
    if user is None or not user.is_active or not constant_time_compare(stamp, _password_stamp(user)):
        raise ApiTokenError("The API token was revoked (the account changed its password or was deactivated).")
    return user


# --- Request handling -------------------------------------------------------------------------


def _error(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason  # the reason, instead of Django's HTML 403 page


def _csrf_failure(request) -> str | None:
    check = _CsrfCheck(lambda req: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


def api_endpoint(*methods: str):
    """Staff only, by session or bearer token; JSON errors (401 anonymous, 403 non-staff or CSRF, 405 method)."""

    def decorate(view):
        # CSRF is exempted at the middleware and checked here for session requests only: a bearer token is
        # never attached by a browser on its own, so a forged cross-site request cannot carry one.
        @csrf_exempt
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            header = request.headers.get("Authorization", "")
            if header:
                scheme, _, token = header.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return _error(401, "Send the header as: Authorization: Bearer <token>.")
                try:
                    request.user = user_for_api_token(token.strip())
                except ApiTokenError as exc:
                    return _error(401, str(exc))
            elif not request.user.is_authenticated:
                return _error(401, "Log in as staff, or send Authorization: Bearer <token> (manage.py campaign api-token USERNAME).")
            elif request.method not in SAFE_METHODS:
                reason = _csrf_failure(request)
                if reason:
                    return _error(403, f"CSRF check failed: {reason}. Send the csrftoken cookie's value as X-CSRFToken.")
            if not (request.user.is_active and request.user.is_staff):
                return _error(403, "Only staff accounts may use the campaign API.")
            if request.method not in methods:
                response = _error(405, f"Use {' or '.join(methods)} here.")
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _json_body(request):
    try:
        return json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise services.AnnotationError("The request body is not valid JSON.") from None


def _campaign_or_none(pk) -> Campaign | None:
    return Campaign.objects.select_related("prompt_set", "baseline", "generation_batch").filter(pk=pk).first()


# --- What campaigns look like in JSON ---------------------------------------------------------


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
        "created_at": campaign.created_at.isoformat(),
        "url": reverse("campaigns:detail", args=[campaign.pk]),
    }


def campaign_settings(campaign: Campaign) -> dict:
    return {
        **campaign_summary(campaign),
        "criteria": {
            c.criterion: {
                "question": c.question, "instructions": c.instructions, "votes_per_item": c.votes_per_item,
                "choices": c.choices, "show_prompt": c.show_prompt,
            }
            for c in campaign.criteria.all()
        },
        **{
            field: getattr(campaign, field)
            for field in (
                "gold_share", "gold_min_accuracy", "gold_min_answers", "quota_per_rater", "lease_seconds",
                "completion_url", "completion_code", "rater_title", "consent_text", "contact", "launch_error",
                "screen_out_url", "screen_out_code", "speeder_seconds", "exclude_speeders",
            )
        },
    }


def _invite_link_json(request, link, base_url: str | None = None) -> dict:
    return {
        "id": link.pk,
        "label": link.label,
        "max_raters": link.max_raters,
        "active": link.active,
        "joined": getattr(link, "joined", None),
        "url": selectors.invite_url(base_url or request.build_absolute_uri("/"), link),
    }


# --- Endpoints --------------------------------------------------------------------------------


@api_endpoint("GET", "POST")
def campaigns(request):
    if request.method == "GET":
        rows = list(Campaign.objects.select_related("prompt_set", "baseline").prefetch_related("campaign_models__model")[:500])
        percent = selectors.campaign_percentages(rows)
        return JsonResponse({"campaigns": [campaign_summary(c, percent.get(c.pk, 0)) for c in rows]})
    try:
        form = CampaignForm.from_payload(_json_body(request))
    except services.AnnotationError as exc:
        return _error(400, str(exc))
    campaign = form.create(request.user) if form.is_valid() else None
    if campaign is None:
        return _error(400, form.error_text(), fields={k: list(v) for k, v in form.errors.items()})
    return JsonResponse(campaign_settings(campaign), status=201)


@api_endpoint("GET")
def campaign_detail(request, pk):
    campaign = _campaign_or_none(pk)
    if campaign is None:
        return _error(404, f"There is no campaign {pk}.")
    links = campaign.invite_links.annotate(joined=Count("participations")).order_by("id")
    state = campaign_state(campaign)
    return JsonResponse(
        {
            **campaign_settings(campaign),
            "progress": state["progress"],
            "generation": state["generation"],
            "win_rates": state["win_rates"],
            "report": request.build_absolute_uri(reverse("analysis:api_report", args=[campaign.pk])) + "?format=json",
            "invite_links": [_invite_link_json(request, link) for link in links],
        }
    )


@api_endpoint("POST")
def campaign_action(request, pk, action):
    campaign = _campaign_or_none(pk)
    if campaign is None:
        return _error(404, f"There is no campaign {pk}.")
    try:
        services.apply_campaign_action(campaign, action)
    except services.AnnotationError as exc:
        return _error(400, str(exc))
    campaign.refresh_from_db()
    return JsonResponse({"id": campaign.pk, "status": campaign.status, "launch_error": campaign.launch_error})


@api_endpoint("GET", "POST")
def invite_links(request, pk):
    campaign = _campaign_or_none(pk)
    if campaign is None:
        return _error(404, f"There is no campaign {pk}.")
    if request.method == "GET":
        links = campaign.invite_links.annotate(joined=Count("participations")).order_by("id")
        return JsonResponse({"invite_links": [_invite_link_json(request, link) for link in links]})
    try:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise services.AnnotationError("Send a JSON object: {\"label\": ..., \"max_raters\": ..., \"base_url\": ...}.")
        unknown = set(body) - INVITE_LINK_FIELDS
        if unknown:
            raise services.AnnotationError(
                f"Unknown settings: {', '.join(sorted(unknown))}. Known: {', '.join(sorted(INVITE_LINK_FIELDS))}.")
        max_raters = body.get("max_raters")
        max_raters = 0 if max_raters is None else max_raters
        if not isinstance(max_raters, int) or isinstance(max_raters, bool):
            raise services.AnnotationError(f"max_raters must be a whole number (0 means no limit), not {max_raters!r}.")
        base_url = body.get("base_url") or None
        if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
            raise services.AnnotationError("base_url must start with http:// or https://, e.g. https://needle.example.org.")
        label = body.get("label")
        label = "" if label is None else label
        if not isinstance(label, str):
            raise services.AnnotationError(f"label must be text (a JSON string), not {type(label).__name__}.")
        link = services.create_invite_link(campaign, label=label, max_raters=max_raters)
    except services.AnnotationError as exc:
        return _error(400, str(exc))
    return JsonResponse(_invite_link_json(request, link, base_url), status=201)


@api_endpoint("GET")
def raters(request, pk):
    campaign = _campaign_or_none(pk)
    if campaign is None:
        return _error(404, f"There is no campaign {pk}.")
    return JsonResponse({"raters": [row.as_dict() for row in selectors.rater_quality(campaign)]})


@api_endpoint("POST")
def exclude_rater(request, pk, participation_pk):
    """Exclude a rater by their participation id (from raters/): their votes are kept, flagged, and stop counting."""
    participation = Participation.objects.filter(pk=participation_pk, campaign_id=pk).first()
    if participation is None:
        return _error(404, f"Campaign {pk} has no rater with participation id {participation_pk} (see its raters/).")
    try:
        body = _json_body(request)
    except services.AnnotationError as exc:
        return _error(400, str(exc))
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason.strip():
        return _error(400, 'Say why the rater is excluded: {"reason": "..."} (it is kept with their flagged votes).')
    flagged = services.exclude_rater(participation, reason)
    participation.refresh_from_db()
    return JsonResponse(
        {"participation_id": participation.pk, "excluded": participation.excluded,
         "exclusion_reason": participation.exclusion_reason, "votes_flagged": flagged}
    )


urlpatterns = [
    path("campaigns/", campaigns, name="campaigns"),
    path("campaigns/<int:pk>/", campaign_detail, name="campaign"),
    *[path(f"campaigns/<int:pk>/{action}/", campaign_action, {"action": action}, name=action) for action in ACTIONS],
    path("campaigns/<int:pk>/invite-links/", invite_links, name="invite_links"),
    path("campaigns/<int:pk>/raters/", raters, name="raters"),
    path("campaigns/<int:pk>/raters/<int:participation_pk>/exclude/", exclude_rater, name="exclude_rater"),
]
