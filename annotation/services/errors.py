"""Errors every annotation service raises."""

from __future__ import annotations

import logging

from core.errors import ServiceError

logger = logging.getLogger(__name__)


class AnnotationError(ServiceError):
    """Refused; the message says why in words the user can act on; ``field`` names the input it is about."""
