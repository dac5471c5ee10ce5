"""Researcher API tokens: a staff account's id, signed, with a fingerprint of its password hash.

Tokens need no table: they are the user's id signed with the site's SECRET_KEY and a timestamp, so they expire
by themselves (NEEDLE_API_TOKEN_MAX_AGE_DAYS, default 90), and they embed a fingerprint of the password hash, so
changing the password revokes every token issued before. Rotating SECRET_KEY revokes them all.
``manage.py campaign api-token USERNAME`` prints one; the JSON API (evalsite.api) accepts it as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from core.errors import ServiceError

# The salt every token ever issued was signed with (they were issued by annotation.api before): changing it would
# revoke them all.
API_TOKEN_SALT = "annotation.api-token"
DEFAULT_TOKEN_MAX_AGE_DAYS = 90


class ApiTokenError(ServiceError):
    """A token cannot be issued (not an active staff account) or is not accepted (forged, expired, revoked)."""


def token_max_age_days() -> int:
    return int(getattr(settings, "NEEDLE_API_TOKEN_MAX_AGE_DAYS", DEFAULT_TOKEN_MAX_AGE_DAYS))


def _password_stamp(user) -> str:
    return salted_hmac(API_TOKEN_SALT, user.password).hexdigest()[:16]


def issue_api_token(user) -> str:
    """A bearer token for a staff account, valid for token_max_age_days()."""
    if not (user.is_active and user.is_staff):
        raise ApiTokenError(
            f"{user.get_username()} is not an active staff account; API tokens are for researchers only.", field="user"
        )
    return signing.TimestampSigner(salt=API_TOKEN_SALT).sign(f"{user.pk}:{_password_stamp(user)}")


def user_for_api_token(token: str):
    """The user a token was issued to; ApiTokenError if it is forged, tampered with, expired or revoked."""
    try:
        value = signing.TimestampSigner(salt=API_TOKEN_SALT).unsign(token, max_age=token_max_age_days() * 86_400)
    except signing.SignatureExpired:
        raise ApiTokenError(
            "The API token has expired; get a new one with: manage.py campaign api-token USERNAME"
        ) from None
    except signing.BadSignature:
        raise ApiTokenError("The API token is not valid.") from None
    pk, _, stamp = value.partition(":")
    user = get_user_model().objects.filter(pk=pk).first() if pk.isdigit() else None
    if user is None or not user.is_active or not constant_time_compare(stamp, _password_stamp(user)):
        raise ApiTokenError("The API token was revoked (the account changed its password or was deactivated).")
    return user
