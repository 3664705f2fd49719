"""Names made safe for line-based files, the terminal and CSV (tinlt/names.py).

Expected values are written out by hand from the rules: Python's own escapes for control
characters, \\xNN for bytes that were not UTF-8, OWASP's quote prefix for formula starts."""

from __future__ import annotations

import csv
import io
import os

from tinlt.deploy.rows import format_predictions, write_predictions
from tinlt.names import csv_cell, printable


def test_printable_escapes_what_would_break_a_line_or_move_the_cursor():
    assert printable("plain name é.png") == "plain name é.png"
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("x\u2028y\x85z") == "x\\u2028y\\x85z"  # Unicode line and next-line separators
    assert printable(os.fsdecode(b"caf\xe9")) == "caf\\xe9"  # the byte that was not UTF-8


def test_csv_cells_are_never_formulas_and_numbers_stay_numbers():
    assert csv_cell("=HYPERLINK(\"x\")") == "'=HYPERLINK(\"x\")"
    assert [csv_cell(s) for s in ("+1+cmd", "-x", "@SUM(A1)")] == ["'+1+cmd", "'-x", "'@SUM(A1)"]
    # a leading tab or carriage return is escaped to a backslash first, which no spreadsheet runs
    assert [csv_cell(s) for s in ("\tx", "\rx")] == ["\\tx", "\\rx"]
    assert csv_cell("-0.5") == "-0.5" and csv_cell("1e-3") == "1e-3" and csv_cell(-2) == -2
    assert csv_cell("a=b") == "a=b"  # only the first character makes a formula


def test_predict_output_keeps_one_line_per_image_in_csv_and_on_the_terminal(tmp_path):
    rows = [{"path": "=cmd|'/c calc'!A1", "topk": [{"class": "-evil", "score": 0.75}]},
            {"path": "two\nlines\x1b[31m.png", "topk": [{"class": "ok", "score": 0.5}]}]
    out = write_predictions(rows, tmp_path / "p.csv")
    got = list(csv.reader(io.StringIO(out.read_text(), newline="")))
    assert got[1][:3] == ["'=cmd|'/c calc'!A1", "'-evil", "0.75"]
    assert got[2][0] == "two\\nlines\\x1b[31m.png" and len(got) == 3
    shown = format_predictions(rows).splitlines()
    assert len(shown) == 2 and shown[1].startswith("two\\nlines\\x1b[31m.png: ok 0.500")
