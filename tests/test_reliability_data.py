"""Bad data is found before the first training step: skipped and reported, or fatal with data.strict.

Every bad case is built here on purpose (missing, zero-byte, a text file named .jpg, a
truncated JPEG, a duplicate line, a class without images, a label out of range), so the
expected report is known without running the code under test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinlt.cli import main

from conftest import common_args  # noqa: E402
from tinlt.data.samples import Samples
from tinlt.data.sources import load_folder
from tinlt.data.validate import check_image_file, validate_data, validate_samples
from tinlt.errors import TinltError

CLASSES = ["red thing", "green thing", "blue thing", "grey thing"]  # grey: no usable training image
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (128, 128, 128)]
GOOD_TRAIN = [4, 3, 2, 0]


def _png(path: Path, colour, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _jpeg_bytes(size: int = 48, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _bad_files(folder: Path) -> dict[str, str]:
    """Write the bad files under ``folder`` (class sub-folders); name -> expected reason prefix."""
    (folder / "red_thing").mkdir(parents=True, exist_ok=True)
    (folder / "green_thing").mkdir(parents=True, exist_ok=True)
    (folder / "blue_thing").mkdir(parents=True, exist_ok=True)
    (folder / "red_thing" / "zero.png").write_bytes(b"")
    (folder / "green_thing" / "text.jpg").write_text("this is not a JPEG\n")
    jpeg = _jpeg_bytes()
    (folder / "blue_thing" / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return {
        "red_thing/zero.png": "empty file (0 bytes)",
        "green_thing/text.jpg": "not an image",
        "blue_thing/trunc.jpg": "corrupt or truncated JPEG",
    }


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A list-file dataset with every bad case, plus a clean test split."""
    root = tmp_path_factory.mktemp("messy")
    lines, good = [], []
    for c, n in enumerate(GOOD_TRAIN):
        for i in range(n):
            rel = f"train/{CLASSES[c].replace(' ', '_')}/img{i}.png"
            _png(root / rel, COLOURS[c], seed=10 * c + i)
            lines.append(f"{rel} {c}")
            good.append(rel)
    bad = {f"train/{k}": v for k, v in _bad_files(root / "train").items()}
    bad["train/red_thing/gone.png"] = "missing file"  # listed, never written
    # grey's only training image is an HTML error page saved as .png: the class ends up empty
    (root / "train" / "grey_thing").mkdir()
    (root / "train" / "grey_thing" / "page.png").write_text("<html>404 Not Found</html>")
    bad["train/grey_thing/page.png"] = "not an image"
    label = {"red_thing": 0, "green_thing": 1, "blue_thing": 2, "grey_thing": 3}
    lines += [f"{rel} {label[rel.split('/')[1]]}" for rel in bad]
    lines.append(lines[0])  # the same path listed twice
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    test_lines = []
    for c in range(4):
        for i in range(2):
            rel = f"test/{c}_{i}.png"
            _png(root / rel, COLOURS[c], seed=100 + 10 * c + i)
            test_lines.append(f"{rel} {c}")
    (root / "test.txt").write_text("\n".join(test_lines) + "\n")
    (root / "classnames.txt").write_text("".join(f"{n}\n" for n in CLASSES))
    return {"root": root, "bad": bad, "good": good, "duplicate": good[0], "listed": len(lines)}


def _common(out: Path) -> list[str]:
    # reports on: the reliability tests read the run folder as a user would
    return [a for a in common_args(out, epochs=1) if a != "train.report=false"]


def _list_args(root: Path) -> list[str]:
    cn = root / "classnames.txt"
    return [
        "data.train.kind=list", f"data.train.path={root / 'train.txt'}", f"data.train.classnames={cn}",
        "data.test.kind=list", f"data.test.path={root / 'test.txt'}", f"data.test.classnames={cn}",
    ]


# ---------------------------------------------------------------- the policy, through the CLI


def test_default_run_skips_bad_samples_and_reports_each(messy, tmp_path, capsys):
    root, out = messy["root"], tmp_path / "run"
    assert main(["train", *_common(out), *_list_args(root)]) == 0
    err = capsys.readouterr().err
    # the console gets a count even under train.quiet, and where the report is
    assert f"skipped bad samples: 5 of {messy['listed']} in data.train" in err
    assert str(out / "data_report.txt") in err

    report = json.loads((out / "data_report.json").read_text())
    by_item = {Path(p["item"]).relative_to(root).as_posix(): p for p in report["problems"]
               if p["item"].startswith(str(root))}
    for rel, reason in messy["bad"].items():
        assert by_item[rel]["reason"].startswith(reason), (rel, by_item[rel])
        assert (by_item[rel]["severity"], by_item[rel]["action"]) == ("error", "skipped")
    dup = by_item[messy["duplicate"]]
    assert (dup["severity"], dup["action"]) == ("warning", "dropped duplicate")
    empty = [p for p in report["problems"] if p["item"] == "class 3 'grey thing'"]
    assert len(empty) == 1 and empty[0]["severity"] == "warning"
    assert empty[0]["reason"] == "has no usable images (all 1 skipped)"
    assert len(report["problems"]) == len(messy["bad"]) + 2  # nothing else was flagged
    train = report["splits"]["data.train"]
    assert (train["listed"], train["kept"]) == (messy["listed"], sum(GOOD_TRAIN))
    assert report["splits"]["data.test"]["kept"] == 8

    # the readable report has one line per file, with its reason
    txt = (out / "data_report.txt").read_text().splitlines()
    for rel, reason in messy["bad"].items():
        (line,) = [ln for ln in txt if ln.split("\t")[3:4] == [str(root / rel)]]
        assert line.split("\t")[4].startswith(reason)

    # training used exactly the good samples: counts per class are the good files per class
    run = json.loads((out / "run.json").read_text())
    assert run["train_counts"] == GOOD_TRAIN
    assert run["train_images"] == sum(GOOD_TRAIN)
    assert (out / "metrics.json").is_file()


def test_strict_fails_before_training_and_names_the_report(messy, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_common(out), *_list_args(messy["root"]), "data.strict=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinlt: error: data.strict:") and "\n" not in err and "Traceback" not in err
    assert "5 bad sample(s)" in err and str(out / "data_report.txt") in err
    # nothing was trained: no checkpoint, no log, no resolved config
    assert not (out / "last.pt").exists() and not (out / "log.jsonl").exists()
    assert not (out / "config.yaml").exists()
    # the report is still written and lists every bad file
    report = json.loads((out / "data_report.json").read_text())
    skipped = {p["item"] for p in report["problems"] if p["action"] == "skipped"}
    assert skipped == {str(messy["root"] / rel) for rel in messy["bad"]}
    assert report["policy"].startswith("strict")


def test_strict_folder_split_fails_before_training(tmp_path, capsys):
    root = tmp_path / "tree"
    for c in range(3):
        for i in range(2):
            _png(root / "train" / CLASSES[c].replace(" ", "_") / f"{i}.png", COLOURS[c], seed=i)
            _png(root / "test" / CLASSES[c].replace(" ", "_") / f"{i}.png", COLOURS[c], seed=50 + i)
    _bad_files(root / "train")
    out = tmp_path / "run"
    argv = ["train", *_common(out), "data.train.kind=folder", f"data.train.path={root / 'train'}",
            "data.test.kind=folder", f"data.test.path={root / 'test'}", "data.strict=true"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "3 bad sample(s)" in err and "data_report.txt" in err and "\n" not in err
    assert not (out / "last.pt").exists()


def test_label_out_of_range_is_a_parse_error_naming_the_line(messy, tmp_path, capsys):
    root = messy["root"]
    bad_list = tmp_path / "train_bad_label.txt"
    bad_list.write_text(f"{root / messy['good'][0]} 0\n{root / messy['good'][1]} 7\n")
    argv = ["train", *_common(tmp_path / "run"), *_list_args(root), f"data.train.path={bad_list}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad_list}:2: label 7 out of range" in err and "4 class names" in err and "\n" not in err


def test_class_names_differing_between_splits_fail_with_report(tmp_path, capsys):
    root = tmp_path / "tree"
    for c in range(2):
        _png(root / "train" / f"c{c}" / "a.png", COLOURS[c])
        _png(root / "test" / f"k{c}" / "a.png", COLOURS[c])
    out = tmp_path / "run"
    argv = ["train", *_common(out), "data.train.kind=folder", f"data.train.path={root / 'train'}",
            "data.test.kind=folder", f"data.test.path={root / 'test'}"]
    assert main(argv) == 2  # fatal even without data.strict
    err = capsys.readouterr().err.strip()
    assert "different classes" in err and "label 0 is 'k0' there but 'c0' in data.train" in err
    assert str(out / "data_report.txt") in err
    assert not (out / "last.pt").exists()


# ---------------------------------------------------------------- the checks themselves


def test_validate_folder_split(tmp_path):
    root = tmp_path / "train"
    for c in range(3):
        _png(root / CLASSES[c].replace(" ", "_") / "ok.png", COLOURS[c])
    expected = _bad_files(root)
    (root / "grey_thing").mkdir()  # an empty class folder
    (root / "red_thing" / "README.txt").write_text("notes")  # not an image extension
    with pytest.raises(TinltError, match=r"grey_thing: class folder holds no images"):
        load_folder(root)  # would silently add a class
    names = ["blue thing", "green thing", "grey thing", "red thing"]
    samples = load_folder(root, classnames=names)  # listed on purpose: kept, and the check warns
    assert samples.classnames == names
    r = validate_samples(samples, split_name="data.train", workers=2)
    errors = {Path(p.item).relative_to(root).as_posix(): p.reason for p in r.errors}
    assert errors.keys() == expected.keys()
    assert all(errors[k].startswith(v) for k, v in expected.items())
    warnings = {(p.item, p.action) for p in r.warnings}
    assert warnings == {("class 2 'grey thing'", "kept"), (str(root / "red_thing" / "README.txt"), "ignored")}
    assert sorted(Path(p).relative_to(root).as_posix() for p in r.samples.items) == [
        f"{c.replace(' ', '_')}/ok.png" for c in sorted(CLASSES[:3])
    ]
    assert r.samples.class_counts().tolist() == [1, 1, 0, 1]


def test_good_files_pass_and_bad_ones_say_why(tmp_path):
    jpeg = _jpeg_bytes()
    cases = {
        "ok.jpg": (jpeg, None),
        # bytes after the end-of-image marker (some cameras do this) decode fine: not an error
        "trailing.jpg": (jpeg + b"\x00" * 16, None),
        "trunc.jpg": (jpeg[: len(jpeg) * 2 // 3], "corrupt or truncated JPEG"),
        "header_only.jpg": (jpeg[:200], "corrupt or truncated"),  # cut inside the header
        "text.png": (b"hello", "not an image"),
        "zero.jpg": (b"", "empty file (0 bytes)"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    (tmp_path / "ok.png").write_bytes(png)
    (tmp_path / "trunc.png").write_bytes(png[: len(png) - 20])  # loses IEND: CRC/EOF check catches it
    cases.update({"ok.png": (png, None), "trunc.png": (png, "corrupt or truncated PNG")})
    (tmp_path / "sub").mkdir()
    cases.update({"sub": (b"", "not a regular file"), "missing.jpg": (b"", "missing file")})
    for name, (_, want) in cases.items():
        got = check_image_file(str(tmp_path / name))
        assert (got is None) if want is None else (got or "").startswith(want), (name, got)
    # without image checks only existence and size are looked at
    assert check_image_file(str(tmp_path / "text.png"), check_images=False) is None
    assert check_image_file(str(tmp_path / "zero.jpg"), check_images=False) == "empty file (0 bytes)"


def test_duplicates_same_label_warn_different_label_error(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _png(a, COLOURS[0])
    _png(b, COLOURS[1])
    # an un-normalised spelling of a's path is the same file listed again
    items = [str(a), str(b), str(tmp_path / "." / "a.png"), str(b)]
    r = validate_samples(Samples(items, np.array([0, 1, 0, 0]), ["x", "y"]), split_name="data.train")
    assert [(p.item, p.severity, p.action) for p in r.problems] == [
        (items[2], "warning", "dropped duplicate"),
        (items[3], "error", "skipped"),
    ]
    assert "different label: 0 ('x') after 1 ('y')" in r.problems[1].reason
    assert r.samples.items == [str(a), str(b)] and r.samples.labels.tolist() == [0, 1]


def test_in_memory_samples_get_label_checks_only():
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    s = Samples(images, np.array([0, 1, 5, -1]), ["a", "b"], source="fashion_mnist")
    r = validate_samples(s, split_name="data.train")
    assert [p.item for p in r.errors] == ["in-memory image 2", "in-memory image 3"]
    assert "label 5 out of range 0..1" in r.errors[0].reason
    assert r.samples.in_memory and len(r.samples) == 2 and not r.checked_images


def test_validate_data_overlap_warning_and_empty_split(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _png(a, COLOURS[0])
    _png(b, COLOURS[1])
    train = Samples([str(a), str(b)], np.array([0, 1]), ["x", "y"])
    t = tmp_path / "t.png"
    _png(t, COLOURS[0], seed=3)
    test = Samples([str(t), str(b)], np.array([0, 1]), ["x", "y"])
    check = validate_data({"data.train": train, "data.test": test}, out_dir=tmp_path / "out")
    assert [(p.split, p.item, p.severity) for p in check.problems] == [("data.test", str(b), "warning")]
    assert "overlap" in check.problems[0].reason
    assert (tmp_path / "out" / "data_report.json").is_file()
    # a split whose every sample is bad is fatal whatever the policy
    (tmp_path / "c.png").write_bytes(b"")
    dead = Samples([str(tmp_path / "c.png")], np.array([0]), ["x", "y"])
    with pytest.raises(TinltError, match=r"data.test: none of its 1 samples is usable; report: .*data_report.txt"):
        validate_data({"data.train": train, "data.test": dead}, out_dir=tmp_path / "out2")
