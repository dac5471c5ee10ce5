"""The one rule for CSV cells a person downloads: text that a spreadsheet would run as a formula starts with a quote."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from core import csv_export

FORMULAS = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("text", FORMULAS)
def test_text_a_spreadsheet_would_run_starts_with_a_single_quote(text):
    assert csv_export.cell(text) == csv_export.safe(text) == "'" + text


@pytest.mark.parametrize("value", [-2, -2.5, np.int64(-3), np.float64(-0.5), 0, 7])
def test_numbers_stay_numbers_even_when_negative(value):
    assert csv_export.cell(value) == csv_export.safe(value) == value


def test_plain_text_none_and_booleans_read_as_before():
    cells = [csv_export.cell(v) for v in ["a cat", "x=1", "", None, True, False]]
    assert cells == ["a cat", "x=1", "", "", "true", "false"]


def test_a_neutralised_cell_survives_the_round_trip_through_a_csv_reader():
    buffer = io.StringIO()
    csv_export.writer(buffer).writerows([FORMULAS, [-2, "-2"]])
    rows = list(csv.reader(io.StringIO(buffer.getvalue())))
    assert rows == [["'" + text for text in FORMULAS], ["-2", "'-2"]]
    assert "".join(csv_export.lines(["a"], [["=1"]])) == "a\r\n'=1\r\n"
