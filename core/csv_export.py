"""CSV exports that a researcher can open in a spreadsheet without running what strangers typed.

Prompts, categories, captions and rater ids come from people outside the lab. A spreadsheet reads a cell that
starts with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(...)`` can leak the sheet or run a command),
and a leading tab or carriage return can smuggle one past a first glance. OWASP's rule: such a text cell starts
with a single quote, which spreadsheets show as text. Only text is touched: numbers (numpy's too) stay numbers,
so a genuine ``-2`` stays ``-2``.

Every CSV a person downloads goes through ``safe`` (by ``writer``) or ``cell`` (by ``lines``). Files written for
programs (a corpus's ``captions.csv``, the votes-snapshot hash) keep their text exactly and do not use this module.

Plain module, no Django: every app may import it (generation is the bottom app).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe(value):
    """``value`` itself, unless it is text a spreadsheet would run: then the same text after a single quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def cell(value):
    """A cell of the votes and comparisons exports: None empty, booleans ``true``/``false``, text made safe."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return safe(value)


class _Line:
    """A file-like object whose write returns the line, so csv.writer can feed a streaming response."""

    def write(self, value):
        return value


class writer:
    """``csv.writer`` that makes every text cell safe and writes everything else as csv.writer would."""

    def __init__(self, stream, **kwargs):
        self._writer = csv.writer(stream, **kwargs)

    def writerow(self, values: Iterable):
        return self._writer.writerow([safe(value) for value in values])

    def writerows(self, rows: Iterable[Iterable]) -> None:
        for values in rows:
            self.writerow(values)


def lines(header: Iterable[str], rows: Iterable[Iterable]) -> Iterator[str]:
    """A CSV, one line at a time (for a streaming response): the header, then each row made safe."""
    out = csv.writer(_Line())
    yield out.writerow([cell(value) for value in header])
    for values in rows:
        yield out.writerow([cell(value) for value in values])
