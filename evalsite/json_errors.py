"""JSON endpoints answer every error in JSON: ``{"error": "what went wrong and what to do"}``.

A script calling the API must never have to parse Django's HTML error pages. For any request to a JSON endpoint
(the paths in NEEDLE_JSON_ENDPOINTS: the campaign and report APIs, every ``*.json`` and the rater's vote), this
middleware turns a body too large into 413, a missing object into 404, and an unexpected exception into a 500
(the traceback goes to the ``django.request`` log, never into the answer); and it rewrites any other error
response that is not JSON already (an unknown URL's 404, ``require_POST``'s 405, a CSRF 403) into JSON with the
same status.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse

logger = logging.getLogger("django.request")

UNEXPECTED = (
    "An unexpected error stopped this request; the details are in the server's log. Try again, and tell "
    "the site's administrators if it keeps happening."
)


@lru_cache(maxsize=8)
def _patterns(sources: tuple[str, ...]) -> list[re.Pattern]:
    return [re.compile(source) for source in sources]


def is_json_endpoint(request) -> bool:
    patterns = _patterns(tuple(getattr(settings, "NEEDLE_JSON_ENDPOINTS", ())))
    return any(p.search(request.path) for p in patterns)


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def too_large_message() -> str:
    return (
        f"The request body is too large: at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes are accepted "
        "(DATA_UPLOAD_MAX_MEMORY_SIZE). Send less in one request."
    )


def _allowed(response) -> str:
    """The Allow header in a fixed order (django-ninja lists a path's methods from a set)."""
    return ", ".join(sorted(m.strip() for m in response.get("Allow", "").split(",") if m.strip()))


def _message_for(request, response) -> str:
    status = response.status_code
    if response.get("Content-Type", "").startswith("text/plain") and not getattr(response, "streaming", False):
        text = response.content.decode(errors="replace").strip()
        if text and len(text) < 2000:  # a view's own plain-text refusal already says what is wrong
            return text
    where = f"{request.method} {request.path}"
    if status == 404:
        return (
            f"No such endpoint or object: {where}. Check the URL: ids in it are whole numbers, and the object "
            "may have been deleted."
        )
    if status == 405:
        allowed = _allowed(response)
        return f"{request.method} is not allowed at {request.path}; use {allowed.replace(', ', ' or ') or 'another method'}."
    if status == 403:
        return (
            f"Forbidden: {where}. Sign in with an account that may do this; a browser session must also send "
            "the csrftoken cookie's value as X-CSRFToken."
        )
    if status == 413:
        return too_large_message()
    if status == 400:
        return f"The request could not be read ({where}): check that the body is the JSON this endpoint expects."
    if status >= 500:
        return UNEXPECTED
    return f"The request failed with HTTP {status} ({where})."


class JsonErrorsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code >= 400 and not _is_json(response) and is_json_endpoint(request):
            replaced = JsonResponse({"error": _message_for(request, response)}, status=response.status_code)
            if response.has_header("Allow"):
                replaced["Allow"] = _allowed(response)
            return replaced
        return response

    def process_exception(self, request, exception):
        if not is_json_endpoint(request):
            return None
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse({"error": too_large_message()}, status=413)
        if isinstance(exception, Http404):
            detail = f" ({exception})" if str(exception) else ""
            return JsonResponse({"error": f"No such object: {request.path}{detail}."}, status=404)
        if isinstance(exception, PermissionDenied):
            return JsonResponse({"error": f"Forbidden: {request.method} {request.path}."}, status=403)
        if isinstance(exception, SuspiciousOperation):
            logger.warning("Refused %s %s: %s", request.method, request.path, exception)
            return JsonResponse(
                {"error": f"The request was refused as malformed ({request.method} {request.path})."}, status=400
            )
        logger.error(
            "Internal Server Error: %s",
            request.path,
            exc_info=exception,
            extra={"status_code": 500, "request": request},
        )
        return JsonResponse({"error": UNEXPECTED}, status=500)
