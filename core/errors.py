"""Refusals that name the input they are about, so every entry point can show them in the right place.

A service raises ``ServiceError(message, field="width")`` (or a subclass); a form shows it under its ``width``
field, a command prints it, the API returns it as ``{"error": ..., "field": ..., "code": ...}``. Several problems at
once travel as ``errors=[(field, message), ...]``. The ``code`` says what kind of refusal it is, for scripts:
``invalid`` (the input is wrong; the default), ``conflict`` (the input is fine but the object's state refuses it, e.g.
launching a closed campaign), ``duplicate`` (the name is taken), or a subclass's own. Forms and the API map a
refusal by its field and code, never by searching its wording.
"""

from __future__ import annotations

INVALID, CONFLICT, DUPLICATE = "invalid", "conflict", "duplicate"


class ServiceError(Exception):
    """An operation was refused; the message tells the user what to fix."""

    code = INVALID

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        errors: list[tuple[str | None, str]] | None = None,
    ):
        super().__init__(message)
        self.errors = list(errors) if errors else [(field, message)]
        self.field = field if field is not None else self.errors[0][0]
        if code is not None:
            self.code = code

    def as_json(self) -> dict:
        """The API's answer: the message, the field and the code, and every problem when there are several."""
        answer = {"error": str(self), "field": self.field, "code": self.code}
        if len(self.errors) > 1:
            answer["errors"] = [{"field": field, "message": message} for field, message in self.errors]
        return answer


def add_to_form(form, exc: Exception, *, field_names: dict[str, str] | None = None, default: str | None = None) -> None:
    """Show a service's refusal on ``form``: each problem under the field it names (renamed by ``field_names``
    where the form calls it differently), else under ``default`` (None: the form as a whole)."""
    errors = getattr(exc, "errors", None) or [str(exc)]
    for error in errors:
        field, message = error if isinstance(error, tuple) else (getattr(exc, "field", None), error)
        name = (field_names or {}).get(field, field)
        form.add_error(name if name in form.fields else default, message)
