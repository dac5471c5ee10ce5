"""A small fixed-window rate limiter on Django's cache.

Counts live in the default cache, so with several web processes the cache must
be shared (NEEDLE_CACHE_URL, see settings) or each process counts on its own.
A fixed window is coarse (a burst at a window's edge can pass up to twice the
limit) but needs one counter per key, which is all the rater pages need: a
ceiling on votes per rater and on guessed tokens per client address.
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import cache

# The clock windows are cut from; tests pin it so a window cannot end mid-test.
clock = time.time


def _window_key(key: str, window_seconds: int) -> str:
    return f"ratelimit:{key}:{int(clock() // window_seconds)}"


def seconds_to_next_window(window_seconds: int = 60) -> int:
    """Whole seconds until the current window ends and its counts start afresh (the 429's Retry-After)."""
    return max(1, math.ceil(window_seconds - clock() % window_seconds))


def hit(key: str, window_seconds: int) -> int:
    """Count one event for ``key`` in the current window; returns the count so far, this one included."""
    window_key = _window_key(key, window_seconds)
    # add() is a no-op when the counter exists, so concurrent first hits do not reset each other.
    cache.add(window_key, 0, timeout=window_seconds + 1)
    try:
        return cache.incr(window_key)
    except ValueError:  # the counter expired between add() and incr()
        cache.set(window_key, 1, timeout=window_seconds + 1)
        return 1


def allow(key: str, limit: int, window_seconds: int = 60) -> bool:
    """Count one event; False once ``key`` has had more than ``limit`` events in the current window."""
    return hit(key, window_seconds) <= limit


def exceeded(key: str, limit: int, window_seconds: int = 60) -> bool:
    """Whether ``key`` is already past ``limit`` in the current window, without counting an event."""
    return (cache.get(_window_key(key, window_seconds)) or 0) > limit


def client_address(request) -> str:
    """The address limits are counted against.

    REMOTE_ADDR by default: a client can write any X-Forwarded-For it likes.
    Behind N reverse proxies of your own (NEEDLE_TRUSTED_PROXY_HOPS=N), the
    address the outermost of them saw is the N-th entry from the right of
    X-Forwarded-For; entries further left were written by the client.
    """
    hops = settings.NEEDLE_TRUSTED_PROXY_HOPS
    if hops > 0:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "") or "unknown"
