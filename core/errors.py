"""Refusals that name the input they are about, so every entry point can show them in the right place.

A service raises ``ServiceError(message, field="width")`` (or a subclass); a form shows it under its ``width``
field, a command prints it, the API returns it as ``{"error": ...}``. Several problems at once travel as
``errors=[(field, message), ...]``. Forms never search the wording to guess the field.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An operation was refused; the message tells the user what to fix."""

    def __init__(self, message: str, *, field: str | None = None, errors: list[tuple[str | None, str]] | None = None):
        super().__init__(message)
        self.errors = list(errors) if errors else [(field, message)]
        self.field = field if field is not None else self.errors[0][0]


def add_to_form(form, exc: Exception, *, field_names: dict[str, str] | None = None, default: str | None = None) -> None:
    """Show a service's refusal on ``form``: each problem under the field it names (renamed by ``field_names``
    where the form calls it differently), else under ``default`` (None: the form as a whole)."""
    errors = getattr(exc, "errors", None) or [str(exc)]
    for error in errors:
        field, message = error if isinstance(error, tuple) else (getattr(exc, "field", None), error)
        name = (field_names or {}).get(field, field)
        form.add_error(name if name in form.fields else default, message)
