"""Names people give to things (models, datasets, collections, reviews): one rule, one wording (imports no app).

A name is a slug (letters, digits, hyphens and underscores), so it is safe in a URL, a folder and a shell.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from core.errors import ServiceError

ALLOWED = "letters, digits, hyphens and underscores"


def check_slug_name(
    name,
    what: str,
    *,
    error: type[ServiceError] = ServiceError,
    field: str | None = None,
    example: str = "",
    max_length: int | None = None,
) -> str:
    """``name`` without surrounding spaces, or ``error`` saying how to fix it (on ``field``).

    ``what`` names the thing in the refusal ("Give the dataset a name."); with an ``example`` the refusals show one
    (and an empty name is told what a name may hold). ``max_length`` is checked before the characters.
    """
    eg = f", e.g. {example}" if example else ""
    if not isinstance(name, str) or not name.strip():
        raise error(f"Give the {what} a name: {ALLOWED}{eg}." if example else f"Give the {what} a name.", field=field)
    name = name.strip()
    if max_length is not None and len(name) > max_length:
        raise error(f"The name is {len(name)} characters long; use at most {max_length} characters.", field=field)
    try:
        validate_slug(name)
    except ValidationError:
        raise error(f"{name!r} is not a valid name: use {ALLOWED}{eg}.", field=field) from None
    return name
