"""What every endpoint of the researcher JSON API shares (django-ninja), importing no app.

- ``ApiError``: a refusal with its HTTP status, answered as ``{"error": message, **extra}``.
- ``JsonObjectIn``: the base of request bodies. A body must be a JSON object with known keys, values of exactly the
  JSON type the field documents (no "5" for 5, no true for 1) and no text PostgreSQL cannot store (a NUL character,
  a lone surrogate: JSON can spell both); ``refusal_message`` turns pydantic's errors into one sentence that names
  the field, answered with 400.
- ``BearerToken`` and ``StaffSession``: the two ways in. A bearer token (core.api_tokens) needs no CSRF token, since
  no browser attaches one on its own; a staff session does for every unsafe method.

evalsite.api assembles the API as a ``ResearcherApi``; the apps' routers raise ``ApiError``, declare their bodies on
``JsonObjectIn`` and their refusals with ``ERRORS``.
"""

from __future__ import annotations

import json
import typing
from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from ninja import NinjaAPI, Schema
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from ninja.security.base import AuthBase
from pydantic import ConfigDict, create_model, model_validator
from pydantic_core import PydanticCustomError

from core.api_tokens import ApiTokenError, user_for_api_token
from core.text import json_type, unstorable_text_problem

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NOT_JSON = "The request body is not valid JSON."
LOG_IN = "Log in as staff, or send Authorization: Bearer <token> (manage.py campaign api-token USERNAME)."
STAFF_ONLY = "Only staff accounts may use the campaign API."


class ApiError(HttpError):
    """Answered as ``{"error": message, **extra}`` with ``status``: raise it from an endpoint or an auth check."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.extra = extra


def schema_of(cls: type, *, name: str = "", doc: str = "", field_type=lambda hint: hint) -> type[Schema]:
    """A response schema with the fields of the dataclass ``cls``, each required, typed ``field_type(its hint)``.

    Named ``name`` (by default the class's name and "Out"), described by ``doc`` or by the class's docstring.
    """
    fields = {field: (field_type(hint), ...) for field, hint in typing.get_type_hints(cls).items()}
    if not doc and not (cls.__doc__ or "").startswith(f"{cls.__name__}("):  # not the signature dataclass() writes
        doc = cls.__doc__
    return create_model(name or f"{cls.__name__}Out", __base__=Schema, __doc__=doc or None, **fields)


class ErrorOut(Schema):
    """Every refusal: what went wrong and what to do. Refused bodies add ``fields`` (field -> messages)."""

    error: str
    fields: dict[str, list[str]] | None = None


# The refusals every endpoint may answer, for its ``response=`` (405 and 413 come from evalsite.json_errors).
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut}


# --- Request bodies ---------------------------------------------------------------------------


def refuse(message: str) -> PydanticCustomError:
    """Raise this from a body's validator: ``message`` is answered as it is, with 400."""
    return PydanticCustomError("refused", "{message}", {"message": message})


class JsonObjectIn(Schema):
    """A request body: a JSON object with only the documented keys, each of exactly its JSON type.

    Subclasses set ``object_hint`` (what to send instead of something that is not an object). Strict: a value of
    the wrong JSON type is refused, never converted, so "5", 1.5 or true is no whole number.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    object_hint: ClassVar[str] = "Send a JSON object."

    # Replaces ninja's root validator of the same name, which reads ORM objects (for responses): a body is JSON.
    @model_validator(mode="wrap")
    @classmethod
    def _run_root_validator(cls, values, handler, info):
        cls.check_shape(values)
        unstorable = _unstorable_text(values)
        if unstorable is not None:  # PostgreSQL cannot store it (the database would answer with a 500)
            raise refuse(unstorable)
        return handler(values)

    @classmethod
    def check_shape(cls, values) -> None:
        """Before the fields: refuse (``raise refuse(message)``) what is no JSON object, or has unknown keys."""
        if not isinstance(values, dict):
            raise refuse(cls.object_hint)
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown and cls.model_config.get("extra") == "forbid":
            raise refuse(f"Unknown settings: {', '.join(unknown)}. Known: {', '.join(sorted(cls.model_fields))}.")


def _unstorable_text(value, where: str = "") -> str | None:
    """What is wrong with the first text (key or value, at any depth) PostgreSQL cannot store; None when all can be."""
    if isinstance(value, str):
        return unstorable_text_problem(value, where or "The body")
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable_text_problem(str(key), f"A key of {where or 'the body'}")
            if found is None:
                found = _unstorable_text(item, f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
        return None
    if isinstance(value, list):
        return next((found for item in value if (found := _unstorable_text(item, where)) is not None), None)
    return None


EXPECTED = {
    "string_type": "text (a JSON string)",
    "string_unicode": "valid UTF-8 text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list (a JSON array)",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}


def _field(loc) -> str:
    # loc: (source, param name, key, index, ...) for a body; (source, name) for query and path parameters.
    source, *rest = loc or ("body",)
    if source == "body" and rest:
        rest = rest[1:]  # the endpoint's parameter name, not part of the JSON the client sent
    return ".".join(str(part) for part in rest if not isinstance(part, int)) or "body"


def refusal_message(errors: list[dict]) -> tuple[str, dict[str, list[str]]]:
    """One line for a script or a terminal, and the same per field: 'max_raters must be a whole number, not "5".'"""
    fields: dict[str, list[str]] = {}
    for error in errors:
        kind, ctx, field = error.get("type", ""), error.get("ctx") or {}, _field(error.get("loc"))
        if kind == "refused":
            message = ctx.get("message") or error.get("msg", "")
        elif kind == "missing":
            message = f"Give {field}."
        elif kind in ("literal_error", "enum"):
            given = f", not {error['given']}" if "given" in error else ""
            message = f"{field} must be {ctx.get('expected', 'one of the documented values')}{given}."
        elif kind in EXPECTED:
            given = f", not {error['given']}" if "given" in error else ""
            message = f"{field} must be {EXPECTED[kind]}{given}."
        elif kind == "value_error":
            message = f"{field}: {ctx.get('error') or error.get('msg', '')}"
        else:
            message = f"{field}: {error.get('msg', 'is not valid')}."
        fields.setdefault(field, []).append(message)
    lines = [m for messages in fields.values() for m in messages]
    return " ".join(lines) or "The request is not valid.", fields


class JsonBodyParser(Parser):
    """JSON bodies; one that is not JSON (or not UTF-8) is refused with 400 and says so."""

    def parse_body(self, request: HttpRequest):
        try:
            return json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, NOT_JSON) from None


# --- Who may call ---------------------------------------------------------------------------


def _staff(user):
    if not (user.is_active and user.is_staff):
        raise ApiError(403, STAFF_ONLY)
    return user


class BearerToken(AuthBase):
    """``Authorization: Bearer <token>`` from ``manage.py campaign api-token USERNAME`` (a staff account)."""

    openapi_type = "http"
    openapi_scheme = "bearer"

    def __call__(self, request):
        header = request.headers.get("Authorization", "")
        if not header:
            return None  # perhaps a staff session
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Send the header as: Authorization: Bearer <token>.")
        try:
            request.user = user_for_api_token(token.strip())
        except ApiTokenError as exc:
            raise ApiError(401, str(exc)) from None
        return _staff(request.user)


class _CsrfCheck(CsrfViewMiddleware):
    def _reject(self, request, reason):
        return reason  # the reason, instead of Django's HTML 403 page


def csrf_failure(request) -> str | None:
    """Why Django's CSRF check refuses ``request``, or None when it passes."""
    check = _CsrfCheck(lambda req: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


class StaffSession(AuthBase):
    """A signed-in staff account's session cookie (the browser); unsafe methods must send X-CSRFToken."""

    openapi_type = "apiKey"
    openapi_in = "cookie"
    openapi_name = settings.SESSION_COOKIE_NAME
    csrf = True  # so ninja's docs page sends the CSRF token with the requests it tries out

    def __call__(self, request):
        if request.headers.get("Authorization"):
            return None  # BearerToken answered for it
        if not request.user.is_authenticated:
            raise ApiError(401, LOG_IN)
        if request.method not in SAFE_METHODS:
            reason = csrf_failure(request)
            if reason:
                raise ApiError(403, f"CSRF check failed: {reason}. Send the csrftoken cookie's value as X-CSRFToken.")
        return _staff(request.user)


# --- Errors as JSON ---------------------------------------------------------------------------


def error_response(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _http_error(request, exc: HttpError) -> HttpResponse:
    cause = exc.__cause__  # ninja wraps a body parser's refusal in its own "Cannot parse request body"
    if isinstance(cause, ApiError):
        exc = cause
    if exc.status_code == 401 and exc.message == "Unauthorized":  # ninja's own, when no way in answered
        exc = ApiError(401, LOG_IN)
    return error_response(exc.status_code, exc.message, **getattr(exc, "extra", {}))


def _validation_error(request, exc: ValidationError) -> HttpResponse:
    message, fields = refusal_message(exc.errors)
    fields.pop("body", None)  # a refusal of the body as a whole names no field
    return error_response(400, message, **({"fields": fields} if fields else {}))


def _reraise(request, exc: Exception) -> HttpResponse:
    # Not ninja's answer (a traceback page under DEBUG): evalsite.json_errors answers 404, 413, 500 and the rest in
    # JSON, and logs the traceback.
    raise exc


class ResearcherApi(NinjaAPI):
    """A NinjaAPI whose every error is ``{"error": ...}`` (400 for bad input, never ninja's 422 or ``detail``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("parser", JsonBodyParser())
        super().__init__(**kwargs)

    def set_default_exception_handlers(self) -> None:
        self.add_exception_handler(HttpError, _http_error)
        self.add_exception_handler(ValidationError, _validation_error)
        for passed_on in (Http404, RequestDataTooBig, Exception):
            self.add_exception_handler(passed_on, _reraise)

    def validation_error_from_error_contexts(self, error_contexts) -> ValidationError:
        """ninja's, keeping what the client sent as a JSON type name ("a string"), never the value itself."""
        errors = []
        for context in error_contexts:
            model = context.model
            for error in context.pydantic_validation_error.errors(include_url=False):
                loc = (model.__ninja_param_source__,) + model.__ninja_flatten_map_reverse__.get(
                    error["loc"], error["loc"]
                )
                entry = {
                    "loc": loc,
                    "type": error["type"],
                    "msg": error["msg"],
                    "ctx": {
                        k: v if isinstance(v, str | int | float | bool | None) else str(v)
                        for k, v in (error.get("ctx") or {}).items()
                    },
                }
                if "input" in error:
                    entry["given"] = json_type(error["input"])
                errors.append(entry)
        return ValidationError(errors)
