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


def test_training_takes_names_that_are_not_utf8_and_reports_non_finite_pixels(tmp_path):
    """A latin-1 file name in the train and test folders and a float TIFF with a NaN pixel:
    training ends normally, the NaN image is reported and skipped (not silently black), and the
    name reaches predictions.csv as an escape."""
    import json

    import numpy as np
    from PIL import Image

    from conftest import TINY, write_class_folders
    from tinlt.cli import main

    colours = {"a": (200, 30, 30), "b": (30, 30, 200)}
    for split, n in (("train", 4), ("test", 2)):
        write_class_folders(tmp_path / split, {"a": n, "b": n}, colours, seed=len(split), size=(16, 16))
        raw = os.fsencode(str(tmp_path / split / "a")) + b"/caf\xe9.png"
        Image.open(tmp_path / split / "a" / "0.png").save(os.fsdecode(raw))
    nan = np.zeros((16, 16), np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "train" / "b" / "nan.tiff")
    out = tmp_path / "run"
    rc = main(["train", *TINY, "optim.epochs=1", "optim.batch_size=4", "train.quiet=true", "train.report=false",
               "data.train.kind=folder", f"data.train.path={tmp_path / 'train'}",
               "data.test.kind=folder", f"data.test.path={tmp_path / 'test'}", f"train.output_dir={out}"])
    assert rc == 0
    report = json.loads((out / "data_report.json").read_text())
    said = json.dumps(report)
    assert "nan.tiff" in said and "non-finite pixel value" in said
    train = report["splits"]["data.train"]
    assert train["class_counts"] == {"a": 5, "b": 4} and train["skipped"] == 1  # the latin-1 name kept, NaN not
    preds = (out / "predictions.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png" in preds and len(preds.splitlines()) == 1 + 5


def test_a_text_file_write_survives_a_name_that_is_not_utf8(tmp_path):
    from tinlt import fileio

    out = fileio.write_text(tmp_path / "r.txt", "file " + os.fsdecode(b"caf\xe9.png") + "\n")
    assert out.read_bytes() == b"file caf\\udce9.png\n"  # an escape, valid UTF-8, not a crash mid-report
