"""Property tests of the list-file and CSV parsers: any text gives Samples or one TinltError
(with the line number where a line is at fault); valid generated files round-trip."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinlt.data.sources import display_name, load_csv, load_list
from tinlt.errors import TinltError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# one physical line: anything but line breaks (the test joins lines with "\n")
line_text = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n"), max_size=30)
label_like = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["+2", "0x1", "1.0", "٣", "1_0", "", "#"]))
list_line = st.one_of(line_text, st.builds(lambda p, sep, l: f"{p}{sep}{l}", line_text, st.sampled_from([" ", "\t", "  "]), label_like))

# independent reading of one list line: (path, label) / "skip" / "bad"
_VALID = re.compile(r"\s*(.*?\S)\s+([+-]?[0-9]+)\s*")


def _classify(line: str):
    s = line.strip()
    if not s or s.startswith("#"):
        return "skip"
    m = _VALID.fullmatch(line)
    if not m or int(m.group(2)) < 0:
        return "bad"
    return m.group(1), int(m.group(2))


def _write(text: str, name: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    d = tempfile.TemporaryDirectory()
    p = Path(d.name) / name
    p.write_bytes(text.encode("utf-8"))
    return d, p


@SETTINGS
@given(st.lists(list_line, max_size=8))
def test_list_parser_only_raises_tinlt_error_naming_the_line(lines):
    d, path = _write("\n".join(lines), "l.txt")
    with d:
        verdicts = [_classify(ln) for ln in lines]
        try:
            s = load_list(path)
        except TinltError as e:
            msg = str(e)
            assert "\n" not in msg and str(path) in msg
            if "bad" in verdicts:
                first_bad = verdicts.index("bad") + 1
                assert msg.startswith(f"{path}:{first_bad}: "), (msg, lines)
            else:
                assert all(v == "skip" for v in verdicts) and "empty split" in msg
            return
        good = [v for v in verdicts if v != "skip"]
        assert "bad" not in verdicts and len(s) == len(good) > 0
        assert s.labels.tolist() == [lab for _, lab in good]


safe_path = (
    st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n"), min_size=1, max_size=20)
    .map(str.strip)
    .filter(lambda p: p and not p.startswith("#"))
)


@SETTINGS
@given(st.lists(st.tuples(safe_path, st.integers(0, 9), st.sampled_from([" ", "\t", " \t "])), min_size=1, max_size=10))
def test_list_round_trip(entries):
    text = "".join(f"{p}{sep}{lab}\n" for p, lab, sep in entries)
    d, path = _write(text, "l.txt")
    with d:
        s = load_list(path)
        base = str(path.parent.resolve())
        assert s.items == [p if p.startswith("/") else os.path.join(base, p) for p, _, _ in entries]
        assert s.labels.tolist() == [lab for _, lab, _ in entries]
        assert s.num_classes == max(lab for _, lab, _ in entries) + 1


csv_line = st.one_of(
    line_text,
    st.builds(lambda a, b: f"{a},{b}", line_text, label_like),
    st.sampled_from(['"unclosed,1', 'a,"b"c', ",", "path,label", "x.jpg,3"]),
)


@SETTINGS
@given(st.sampled_from(["path,label", "path,class_name", "Path , Label", "file,target", ""]), st.lists(csv_line, max_size=8))
def test_csv_parser_only_raises_tinlt_error_with_line(header, lines):
    all_lines = [header, *lines]
    d, path = _write("\n".join(all_lines), "d.csv")
    with d:
        try:
            load_csv(path)
        except TinltError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(path))
            if "empty split" not in msg:
                m = re.match(re.escape(str(path)) + r":(\d+): ", msg)
                assert m, msg
                assert 1 <= int(m.group(1)) <= len(all_lines)


csv_path = st.text(alphabet=st.characters(codec="utf-8", blacklist_characters="\r"), min_size=1, max_size=20).map(str.strip).filter(bool)


@SETTINGS
@given(st.lists(st.tuples(csv_path, st.integers(0, 6)), min_size=1, max_size=10))
def test_csv_round_trip_integer_labels(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label"])
    w.writerows(rows)
    d, path = _write(buf.getvalue(), "d.csv")
    with d:
        s = load_csv(path)
        base = str(path.parent.resolve())
        assert s.items == [p if p.startswith("/") else os.path.join(base, p) for p, _ in rows]
        assert s.labels.tolist() == [lab for _, lab in rows]


@SETTINGS
@given(st.lists(st.tuples(csv_path, st.sampled_from(["sea_lion", "cat", "T-shirt/top", "Ankle boot", "a, b"])), min_size=1, max_size=10))
def test_csv_round_trip_class_names(rows):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class_name"])
    w.writerows(rows)
    d, path = _write(buf.getvalue(), "d.csv")
    with d:
        s = load_csv(path)
        names = sorted({n.replace("_", " ") for _, n in rows})
        assert s.classnames == names
        assert [s.classnames[i] for i in s.labels] == [n.replace("_", " ") for _, n in rows]
        assert display_name("sea_lion") == "sea lion"
