"""The bad-input corpus: inputs a researcher, a script or a rater can get wrong, and what each must get back.

Every corpus case feeds one bad input to one entry point (a management command, a form or admin page, the JSON API,
a file upload, or a service called directly) and classifies the answer:

- ``clear``: refused with a message holding the case's key words (what is wrong and what to do), under the right
  form field where one is named, and nothing left behind (the row counts and files the case watches are unchanged);
- ``unclear``: refused, but the message lacks the key words, sits under the wrong field, or is an HTML page where
  JSON was asked for;
- ``wrongly accepted``: the input went through;
- ``traceback``: an unexpected exception or a 500;
- ``partial``: refused, but something was written first.

Cases assert ``clear``. With NEEDLE_BAD_INPUT_RECORD_ONLY=1 they only record their outcome (to measure code that is
not fixed yet). Either way the outcomes are counted, printed at the end of the test run (see conftest.py) and written
to $NEEDLE_VAR_DIR/bad-input-corpus.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

OUTCOMES = ("clear", "unclear", "wrongly accepted", "traceback", "partial")
RESULTS: list[dict] = []


def record_only() -> bool:
    return os.environ.get("NEEDLE_BAD_INPUT_RECORD_ONLY") == "1"


@dataclass
class Answer:
    """What an entry point said to one input."""

    kind: str  # "refused", "accepted" or "traceback"
    message: str = ""
    field: str | None = None  # the form field an error was shown under ("__all__" for the form as a whole)
    json: bool = True  # False: an HTTP answer that was not the JSON asked for
    status: int | None = None
    errors: dict = dataclasses.field(default_factory=dict)


def from_call(fn, *refusals: type[BaseException]) -> Answer:
    """Call a service; the exception types in ``refusals`` are refusals, anything else a traceback."""
    try:
        fn()
    except refusals as exc:
        return Answer("refused", str(exc), field=getattr(exc, "field", None))
    except Exception:  # noqa: BLE001 - that is what the corpus looks for
        return Answer("traceback", traceback.format_exc())
    return Answer("accepted")


def from_command(*args, **options) -> Answer:
    """Run a management command as a terminal would: CommandError is a refusal."""
    from django.core.management import CommandError, call_command

    out = io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=out, **options)
    except CommandError as exc:
        return Answer("refused", str(exc))
    except SystemExit as exc:  # argparse in a subparser exits instead of raising CommandError
        return Answer("refused", out.getvalue() + str(exc))
    except Exception:  # noqa: BLE001
        return Answer("traceback", traceback.format_exc())
    return Answer("accepted", out.getvalue())


def from_json_request(send) -> Answer:
    """An API request (``send`` makes it with the test client): a 4xx with a JSON "error" is a refusal."""
    try:
        response = send()
    except Exception:  # noqa: BLE001 - the test client re-raises what a view let escape (a 500)
        return Answer("traceback", traceback.format_exc())
    status = response.status_code
    body = b"" if getattr(response, "streaming", False) else response.content
    if status >= 500:
        return Answer("traceback", body.decode(errors="replace")[:2000], status=status)
    if status < 400:
        return Answer("accepted", body.decode(errors="replace")[:2000], status=status)
    if not response.get("Content-Type", "").startswith("application/json"):
        return Answer("refused", "", json=False, status=status)
    try:
        message = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        message = ""
    return Answer("refused", message if isinstance(message, str) else "", status=status)


def from_form_page(send, form_key: str = "form") -> Answer:
    """A form or admin page POST: a redirect means accepted; the page again with form errors is a refusal."""
    try:
        response = send()
    except Exception:  # noqa: BLE001
        return Answer("traceback", traceback.format_exc())
    if response.status_code >= 500:
        return Answer("traceback", response.content.decode(errors="replace")[:2000], status=response.status_code)
    if response.status_code in (301, 302, 303):
        return Answer("accepted", response.get("Location", ""), status=response.status_code)
    form = response.context[form_key] if response.context and form_key in response.context else None
    if form is None or not form.errors:
        return Answer("accepted", response.content.decode(errors="replace")[:2000], status=response.status_code)
    errors = {name: [str(e) for e in messages] for name, messages in form.errors.items()}
    first = next(iter(errors))
    return Answer(
        "refused",
        " | ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()),
        field=first,
        status=response.status_code,
        errors=errors,
    )


# --- Watching for partial writes ------------------------------------------------------------------------------------


def snapshot(*models, dirs=()) -> tuple:
    """Row counts of ``models`` and every file under ``dirs``: what a refused input must leave as it was."""
    counts = tuple((m._meta.label, m.objects.count()) for m in models)
    files = []
    for folder in dirs:
        folder = Path(folder)
        if folder.is_dir():
            files.extend(sorted(str(p) for p in folder.rglob("*") if p.is_file()))
    return counts, tuple(files)


# --- Judging ---------------------------------------------------------------------------------------------------------


def judge(answer: Answer, says: list[str], field: str | None, before, after) -> tuple[str, str]:
    if answer.kind == "traceback":
        return "traceback", answer.message[-1500:]
    if answer.kind == "accepted":
        return "wrongly accepted", answer.message[:500]
    if before != after:
        return "partial", f"refused ({answer.message!r}) but changed {before} -> {after}"
    if not answer.json:
        return "unclear", f"an HTTP {answer.status} page that is not JSON"
    missing = [w for w in says if not re.search(w, answer.message, re.IGNORECASE)]
    if missing:
        return "unclear", f"the message {answer.message!r} does not say {missing}"
    if field is not None:
        shown = answer.errors.get(field) if answer.errors else (answer.message if answer.field == field else None)
        if not shown:
            return "unclear", f"the error is shown under {answer.field!r}, not {field!r}: {answer.message!r}"
        text = " ".join(shown) if isinstance(shown, list) else shown
        missing = [w for w in says if not re.search(w, text, re.IGNORECASE)]
        if missing:
            return "unclear", f"under {field!r} the form says {text!r}, without {missing}"
    return "clear", answer.message


def check(
    case: str, surface: str, answer: Answer, *, says: list[str], field: str | None = None, before=None, after=None
):
    """Judge one case, record it, and (unless recording only) fail unless the answer is clear."""
    outcome, detail = judge(answer, says, field, before, after)
    RESULTS.append({"case": case, "surface": surface, "outcome": outcome, "detail": detail[:300]})
    if not record_only():
        assert outcome == "clear", f"{case} ({surface}): {outcome}: {detail}"


def summary() -> dict:
    by_outcome = {o: sum(r["outcome"] == o for r in RESULTS) for o in OUTCOMES}
    surfaces = sorted({r["surface"] for r in RESULTS})
    by_surface = {s: sum(r["surface"] == s for r in RESULTS) for s in surfaces}
    return {"inputs": len(RESULTS), "outcomes": by_outcome, "surfaces": by_surface}


def write_summary(path: Path) -> dict:
    data = {**summary(), "cases": RESULTS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data
