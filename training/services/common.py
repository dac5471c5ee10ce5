"""What every part of the training services shares: their error, the places on disk, the rule for new names."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from core.errors import ServiceError
from core.names import check_slug_name


class TrainingError(ServiceError):
    """Refused or failed; the message says why in words the researcher can act on; ``field``/``errors`` name the
    settings it is about."""


def training_dir() -> Path:
    return Path(settings.NEEDLE_TRAINING_DIR)


def cache_dir() -> Path:
    """Encoded latents and text embeddings, shared by every run (keyed by what changes them)."""
    return training_dir() / "cache"


def models_dir() -> Path:
    """Pipelines exported from checkpoints and registered as models."""
    return training_dir() / "models"


def check_new_name(name: str, what: str, taken, *, field: str | None = None) -> str:
    """``name`` stripped, or TrainingError: empty, not a slug, or already taken by a row of ``taken`` (a queryset)."""
    name = check_slug_name(name, what, error=TrainingError, field=field)
    if taken.filter(name=name).exists():
        raise TrainingError(f"A {what} named {name!r} already exists; choose another name.", field=field)
    return name
