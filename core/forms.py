"""Form pages' steps: a POSTed form, once valid, handed to what saves it; an invalid one's errors as messages; fields
laid out in groups."""

from __future__ import annotations

from typing import ClassVar

from django.contrib import messages


def saved(request, form, save, *args):
    """What ``save(*args)`` makes of ``form`` once a POST made it valid.

    None on a GET, for invalid input, or when ``save`` refused (the forms here add the refusal to themselves and
    return None): the page is shown again, with the errors on the form.
    """
    if request.method == "POST" and form.is_valid():
        return save(*args)
    return None


def errors_as_messages(request, form, *, named: bool = False) -> None:
    """An invalid form's errors as error messages, for pages that redirect rather than show the form again.

    One message per error, or with ``named`` one per field: "field: its errors".
    """
    for field, errors in form.errors.items():
        for text in [f"{field}: {' '.join(errors)}"] if named else errors:
            messages.error(request, text)


class FieldGroups:
    """For a form a page lays out in fieldsets: ``groups = {"key": "field_a field_b ..."}`` on the form, and
    ``{% include "_fields.html" with fields=form.grouped.key %}`` in the page."""

    groups: ClassVar[dict[str, str]] = {}

    @property
    def grouped(self) -> dict[str, list]:
        return {key: [self[name] for name in names.split()] for key, names in self.groups.items()}
