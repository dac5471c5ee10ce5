"""Who may open what, decided without a database query: the rater's signed cookie and their image links.

A rater's browser proves which participations it joined with one signed cookie (``needle_rater``: the
participation tokens, signed with SECRET_KEY), not with a server-side session, so a rater request costs no session
query and joining writes no session row. Invited accounts sign in with Django's session as before; their voting
page adds their participation to the same cookie.

Images do not cost a Django request each (issue 12): a task's two image URLs are links ``/i/<sealed>`` whose
``sealed`` part is encrypted and authenticated (AES-GCM, key derived from SECRET_KEY): it holds the stored file's
name, the campaign's one served length, the end of the lease (plus a grace period) and a hash of the participation
token. ``ServedImagesMiddleware``, first in the chain, opens it, checks that this browser's cookie holds that
participation and that the link is in time, reads the file and pads it to the campaign's length. No session, no
query, no view. The link is opaque (nothing in it can be read without the key, and every link is the same length,
gold and both models alike: the plaintext is fixed-size) and is new for every task, so it names no image either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core import signing
from django.http import HttpResponse
from django.shortcuts import render

from core import ratelimit

from .services import served_images

COOKIE_NAME = "needle_rater"
_COOKIE_SALT = "needle.rater-participations"
# A browser that joins many studies keeps only its most recent participations.
MAX_COOKIE_PARTICIPATIONS = 20

IMAGE_PREFIX = "/i/"
# An image link outlives its lease by this much: a page that preloaded the next task can still show it a little
# after the lease ends (the vote is refused then anyway, and the task handed out again).
IMAGE_LINK_GRACE_SECONDS = 300
# expires (unix seconds), served length, campaign id, participation hash, file name padded to its field's 200.
_PAYLOAD = struct.Struct(">QII16s200s")
_NONCE_BYTES = 12
IMAGE_GONE = "This image is no longer available. Please reload the page."
TOO_MANY_BAD_TOKENS = "Too many invalid links were opened from your network. Please wait a minute and try again."


def bad_token_key(request) -> str:
    """The rate-limit key under which a client address's bad tokens and links are counted."""
    return f"bad-token:{ratelimit.client_address(request)}"


# --- The cookie --------------------------------------------------------------------------------------------------


def joined_tokens(request) -> list[str]:
    """The participation tokens this browser joined (or opened as their invited account), oldest first."""
    return tokens_in_cookie(request.COOKIES.get(COOKIE_NAME, ""))


def tokens_in_cookie(value: str) -> list[str]:
    """The participation tokens a ``needle_rater`` cookie's value holds; none if it is not one this site signed."""
    try:
        tokens = signing.loads(value, salt=_COOKIE_SALT)
    except signing.BadSignature:
        return []
    return [t for t in tokens if isinstance(t, str)] if isinstance(tokens, list) else []


def remember(request, response, token: str) -> HttpResponse:
    """``response``, setting the cookie so that it holds ``token`` (most recent last)."""
    tokens = [t for t in joined_tokens(request) if t != token]
    tokens = [*tokens, token][-MAX_COOKIE_PARTICIPATIONS:]
    request.COOKIES[COOKIE_NAME] = value = signing.dumps(tokens, salt=_COOKIE_SALT, compress=True)
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=settings.SESSION_COOKIE_AGE,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )
    return response


def _participation_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()[:16]


# --- Image links ------------------------------------------------------------------------------------------------


def _cipher() -> AESGCM:
    key = hmac.new(settings.SECRET_KEY.encode(), b"needle.image-links", hashlib.sha256).digest()
    return AESGCM(key)


def image_link(participation_token: str, campaign_id: int, file_name: str, length: int, lease_end: datetime) -> str:
    """The URL of one stored image, padded to ``length``, for the browser holding ``participation_token``."""
    expires = int(lease_end.timestamp()) + IMAGE_LINK_GRACE_SECONDS
    name = file_name.encode()
    if len(name) > 200:
        raise ValueError(f"an image file name longer than 200 bytes: {file_name!r}")
    payload = _PAYLOAD.pack(expires, length, campaign_id, _participation_hash(participation_token), name)
    nonce = os.urandom(_NONCE_BYTES)
    sealed = nonce + _cipher().encrypt(nonce, payload, None)
    return IMAGE_PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def _open_link(sealed: str) -> tuple[int, int, int, bytes, str] | None:
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        payload = _cipher().decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None)
        expires, length, campaign_id, participation, name = _PAYLOAD.unpack(payload)
    except (binascii.Error, ValueError, InvalidTag, struct.error):
        return None
    return expires, length, campaign_id, participation, name.rstrip(b"\0").decode()


class ServedImagesMiddleware:
    """Answers ``/i/<sealed>`` itself, before sessions, authentication or any view; passes everything else on."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path_info.startswith(IMAGE_PREFIX):
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
        opened = _open_link(request.path_info[len(IMAGE_PREFIX) :])
        if opened is None:
            return self._refuse(request, counts_as_guess=True)
        expires, length, campaign_id, participation, name = opened
        if not any(hmac.compare_digest(participation, _participation_hash(t)) for t in joined_tokens(request)):
            return self._refuse(request, counts_as_guess=True)  # a link copied to another browser
        if time.time() > expires:
            return self._refuse(request, counts_as_guess=False)
        try:
            data = served_images.padded_image(name, length, campaign_id)
        except FileNotFoundError:
            return self._refuse(request, counts_as_guess=False)
        # HttpResponse, not FileResponse: FileResponse would name the file (its sha256) in Content-Disposition. No
        # ETag or Last-Modified either. no-transform: a proxy must not recompress, which would bring sizes back.
        response = HttpResponse(data, content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600, no-transform"
        response["Content-Length"] = str(len(data))  # CommonMiddleware, which would set it, runs after this one
        return response

    def _refuse(self, request, *, counts_as_guess: bool):
        """404 for a link that is not this browser's, has ended, or names a missing file; 429 once guessing."""
        if counts_as_guess and not ratelimit.allow(bad_token_key(request), settings.NEEDLE_BAD_TOKEN_LIMIT_PER_MINUTE):
            message, status = TOO_MANY_BAD_TOKENS, 429
        else:
            message, status = IMAGE_GONE, 404
        return render(
            request, "annotation/rater/message.html", {"heading": "Not available", "message": message}, status=status
        )
