"""The researcher JSON API, assembled: one django-ninja API over the apps' routers, mounted at the site's root.

    /annotation/api/campaigns/...             annotation.api (list, create, actions, invite links, raters, exclude)
    /annotation/api/campaigns/ID/             analysis.api.campaigns_router (the campaign with live win rates)
    /analysis/api/campaigns/ID/report         analysis.api.router
    /api/openapi.json, /api/docs              the OpenAPI document and its Swagger page (served from our static files)

Every endpoint takes a staff session (unsafe methods with the CSRF token) or ``Authorization: Bearer <token>``
(``manage.py campaign api-token USERNAME``), and answers every error as ``{"error": ...}`` (core.http_api;
evalsite.json_errors for what happens outside ninja: unknown URLs, 405, 413, 500). URL names are in the ``api``
namespace (``reverse("api:campaigns")``). The OpenAPI document and docs page need the same authentication.
"""

from __future__ import annotations

from functools import wraps

from ninja import Swagger

from analysis import api as analysis_api
from annotation import api as annotation_api
from core.http_api import ApiError, BearerToken, ResearcherApi, StaffSession, error_response

AUTH = [BearerToken(), StaffSession()]


def researchers_only(view):
    """The document and docs page: for whoever may call the API (the same checks), else a JSON 401 or 403."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        for check in AUTH:
            try:
                if check(request):
                    return view(request, *args, **kwargs)
            except ApiError as exc:
                return error_response(exc.status_code, exc.message)
        return error_response(401, "Log in as staff, or send Authorization: Bearer <token>.")

    return wrapper


api = ResearcherApi(
    title="Needle researcher API",
    version="1",
    description=(
        "Create, launch, watch and steer human-preference campaigns, and fetch their reports. Authenticate with "
        "`Authorization: Bearer <token>` (`manage.py campaign api-token USERNAME`) or a staff session (unsafe "
        'methods then need the `X-CSRFToken` header). Every error is JSON: `{"error": "..."}`.'
    ),
    urls_namespace="api",
    auth=AUTH,
    openapi_url="api/openapi.json",
    docs=Swagger(settings={"validatorUrl": None}),  # no call to swagger.io's validator: the page works offline
    docs_url="api/docs",
    docs_decorator=researchers_only,
)
api.add_router("annotation/api/", annotation_api.router)
api.add_router("annotation/api/", analysis_api.campaigns_router)
api.add_router("analysis/api/", analysis_api.router)
