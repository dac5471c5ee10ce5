"""Form pages' steps: a POSTed form, once valid, handed to what saves it; an invalid one's errors as messages."""

from __future__ import annotations

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
