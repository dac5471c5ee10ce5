"""The one error the funnel raises on a misconfigured stage or input."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class CurationError(ValueError):
    """The funnel cannot run as configured (or a candidate became unreadable); the message says what to fix."""
