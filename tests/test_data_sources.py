"""List / folder / CSV / class-names loaders: parsing, path resolution and one-line errors."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinlt.data.sources import LISTS_DIR, load_csv, load_folder, load_list, read_classnames
from tinlt.errors import TinltError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _img(path: Path, color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), color).save(path)
    return path


# ---------------------------------------------------------------- list files


def test_list_paths_with_spaces_comments_and_default_root(tmp_path):
    lst = _write(
        tmp_path / "lists" / "train.txt",
        "# header comment\n"
        "a/cat one.jpg 0\n"
        "\n"
        "   b/dog  two.png   1   \n"
        "/abs/elsewhere.jpg 1\r\n",
    )
    s = load_list(lst)
    base = str((tmp_path / "lists").resolve())
    assert s.items == [os.path.join(base, "a/cat one.jpg"), os.path.join(base, "b/dog  two.png"), "/abs/elsewhere.jpg"]
    assert s.labels.tolist() == [0, 1, 1]
    assert s.labels.dtype == np.int64
    assert s.classnames == ["class 0", "class 1"]  # no class-names file anywhere


def test_list_explicit_root_and_classnames(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    lst = _write(tmp_path / "l.txt", "x/1.jpg 2\nx/2.jpg 0\nx/3.jpg 1\n")
    cn = _write(tmp_path / "names" / "cn.txt", "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    s = load_list(lst, root=root, classnames_file=cn)
    assert s.items[0] == os.path.join(str(root.resolve()), "x/1.jpg")
    assert s.classnames == ["tench", "goldfish", "great white shark"]
    assert s.class_counts().tolist() == [1, 1, 1]


def test_list_picks_up_classnames_beside_it(tmp_path):
    lst = _write(tmp_path / "t.txt", "p.jpg 0\nq.jpg 1\n")
    _write(tmp_path / "classnames.txt", "airplane_cabin airplane_cabin\nbus_interior bus_interior\n")
    assert load_list(lst).classnames == ["airplane cabin", "bus interior"]


def test_list_does_not_open_images_and_is_fast(tmp_path):
    n = 100_000
    lines = [f"train/class {i % 1000}/img_{i}.JPEG {i % 1000}" for i in range(n)]
    lst = _write(tmp_path / "big.txt", "\n".join(lines) + "\n")
    t0 = time.perf_counter()
    s = load_list(lst)  # none of these files exist: loading must only handle strings
    elapsed = time.perf_counter() - t0
    assert len(s) == n and s.num_classes == 1000
    assert np.all(s.class_counts() == 100)
    assert elapsed < 3.0, f"100k-line list took {elapsed:.2f}s"


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("a.jpg 0\nonly_a_path\n", 2, "expected 'path label'"),
        ("a.jpg 0\n\n# c\nb.jpg cat\n", 4, "expected 'path label'"),
        ("a.jpg 0\nb.jpg 1.5\n", 2, "expected 'path label'"),
        ("a.jpg 0\nb.jpg -1\n", 2, "out of range"),
    ],
)
def test_list_bad_lines_name_file_and_line(tmp_path, text, line, fragment):
    lst = _write(tmp_path / "bad list.txt", text)
    with pytest.raises(TinltError) as e:
        load_list(lst)
    msg = str(e.value)
    assert f"{lst}:{line}:" in msg and fragment in msg
    assert "\n" not in msg


def test_list_label_out_of_range_for_classnames(tmp_path):
    lst = _write(tmp_path / "l.txt", "a.jpg 0\nb.jpg 1\nc.jpg 2\n")
    cn = _write(tmp_path / "cn.txt", "alpha\nbeta\n")
    with pytest.raises(TinltError, match=rf"{lst}:3: label 2 out of range: {cn} has 2 class names"):
        load_list(lst, classnames_file=cn)


def test_list_classnames_count_mismatch_names_both_files(tmp_path):
    lst = _write(tmp_path / "l.txt", "a.jpg 0\nb.jpg 1\n")
    cn = _write(tmp_path / "cn.txt", "alpha\nbeta\ngamma\n")
    with pytest.raises(TinltError) as e:
        load_list(lst, classnames_file=cn)
    msg = str(e.value)
    assert str(cn) in msg and str(lst) in msg and "3 class names" in msg and "2 classes" in msg


def test_list_missing_file_root_and_empty(tmp_path):
    with pytest.raises(TinltError, match="list file not found: .*nope.txt"):
        load_list(tmp_path / "nope.txt")
    lst = _write(tmp_path / "l.txt", "a.jpg 0\n")
    with pytest.raises(TinltError, match="image root not found: .*missing_root"):
        load_list(lst, root=tmp_path / "missing_root")
    with pytest.raises(TinltError, match="not found: .*no_names.txt"):
        load_list(lst, classnames_file=tmp_path / "no_names.txt")
    empty = _write(tmp_path / "e.txt", "# nothing\n\n")
    with pytest.raises(TinltError, match=rf"{empty}: no samples \(empty split\)"):
        load_list(empty)


def test_list_not_utf8_names_line(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"a.jpg 0\nb\xff.jpg 0\n")
    with pytest.raises(TinltError, match=rf"{lst}:2: not valid UTF-8"):
        load_list(lst)


def test_bundled_imagenet_lt_test_list_counts():
    path = LISTS_DIR / "ImageNet_LT" / "ImageNet_LT_test.txt"
    s = load_list(path)
    # independent count straight from the file's text
    counts = Counter(int(line.split()[-1]) for line in path.read_text().splitlines() if line.strip())
    assert len(s) == sum(counts.values()) == 50_000
    assert s.num_classes == 1000 and s.classnames[0] == "tench"
    assert s.class_counts().tolist() == [counts[c] for c in range(1000)]
    assert not (LISTS_DIR / "ImageNet_LT" / "ImageNet_LT_train.txt").exists()


# ---------------------------------------------------------------- class-names files


def test_classnames_formats(tmp_path):
    imagenet = _write(tmp_path / "a.txt", "n01440764 tench\nn01484850 great white shark\n")
    places = _write(tmp_path / "b.txt", "airplane_cabin airplane_cabin\napartment_building-outdoor apartment_building-outdoor\n")
    places365 = _write(tmp_path / "c.txt", "/b/bakery/shop 1\n/a/airfield 0\n")
    plain = _write(tmp_path / "d.txt", "# names\ngreat white shark\nTrouser\n")
    assert read_classnames(imagenet) == ["tench", "great white shark"]
    assert read_classnames(places) == ["airplane cabin", "apartment building-outdoor"]
    assert read_classnames(places365) == ["airfield", "bakery shop"]
    assert read_classnames(plain) == ["great white shark", "Trouser"]


def test_bundled_places_classnames():
    names = read_classnames(LISTS_DIR / "Places_LT" / "classnames.txt")
    assert len(names) == 365 and "_" not in "".join(names)
    assert names[:3] == ["airfield", "airplane cabin", "airport terminal"]


# ---------------------------------------------------------------- folders


def test_folder_tree(tmp_path):
    root = tmp_path / "data"
    _img(root / "sea_lion" / "x.JPG")
    _img(root / "sea_lion" / "nested" / "y.png")
    _img(root / "ant" / "a b.jpeg")
    _img(root / "ant" / "c.WebP")
    _write(root / "ant" / "notes.txt", "not an image")
    _write(root / "ant" / ".DS_Store", "")
    (root / ".hidden").mkdir()
    _img(root / ".hidden" / "z.jpg")
    s = load_folder(root)
    assert s.classnames == ["ant", "sea lion"]
    got = sorted(zip(map(lambda p: os.path.relpath(p, root.resolve()), s.items), s.labels.tolist()))
    assert got == [("ant/a b.jpeg", 0), ("ant/c.WebP", 0), ("sea_lion/nested/y.png", 1), ("sea_lion/x.JPG", 1)]
    assert [os.path.basename(p) for p, _ in s.skipped] == ["notes.txt"]


def test_folder_with_classnames_fixes_order(tmp_path):
    root = tmp_path / "val"
    _img(root / "goldfish" / "1.jpg")
    _img(root / "n01440764" / "2.jpg")
    cn = _write(tmp_path / "cn.txt", "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    s = load_folder(root, classnames=cn)
    assert s.classnames == ["tench", "goldfish", "great white shark"]
    label_of = {os.path.basename(p): int(l) for p, l in zip(s.items, s.labels)}
    assert label_of == {"1.jpg": 1, "2.jpg": 0}
    assert s.class_counts().tolist() == [1, 1, 0]
    _img(root / "zebra" / "3.jpg")
    with pytest.raises(TinltError, match="zebra: folder matches no class"):
        load_folder(root, classnames=cn)


def test_folder_errors(tmp_path):
    with pytest.raises(TinltError, match="image folder not found: .*absent"):
        load_folder(tmp_path / "absent")
    (tmp_path / "flat").mkdir()
    with pytest.raises(TinltError, match="no class sub-folders"):
        load_folder(tmp_path / "flat")
    _write(tmp_path / "noimg" / "cls" / "readme.md", "x")
    with pytest.raises(TinltError, match=r"no images found .*\(empty split\)"):
        load_folder(tmp_path / "noimg")


# ---------------------------------------------------------------- CSV


def test_csv_integer_labels_with_spaces_and_quotes(tmp_path):
    csvf = _write(tmp_path / "sub" / "s.csv", 'path,label\n"a dir/x, y.jpg",1\nb.jpg,0\n\n')
    s = load_csv(csvf, root=tmp_path)
    assert s.items == [os.path.join(str(tmp_path.resolve()), "a dir/x, y.jpg"), os.path.join(str(tmp_path.resolve()), "b.jpg")]
    assert s.labels.tolist() == [1, 0]


def test_csv_class_names_sorted_unique(tmp_path):
    csvf = _write(tmp_path / "s.csv", "Path , Class_Name\nz.jpg,zebra\na.jpg,ant\nb.jpg,sea_lion\nc.jpg,ant\n")
    s = load_csv(csvf)
    assert s.classnames == ["ant", "sea lion", "zebra"]
    assert s.labels.tolist() == [2, 0, 1, 0]
    assert s.items[0] == os.path.join(str(tmp_path.resolve()), "z.jpg")


def test_csv_class_names_against_classnames_file(tmp_path):
    cn = _write(tmp_path / "cn.txt", "n01440764 tench\nn01443537 goldfish\n")
    csvf = _write(tmp_path / "s.csv", "path,class_name\na.jpg,goldfish\nb.jpg,n01440764\n")
    s = load_csv(csvf, classnames_file=cn)
    assert s.classnames == ["tench", "goldfish"] and s.labels.tolist() == [1, 0]
    bad = _write(tmp_path / "bad.csv", "path,class_name\na.jpg,goldfish\nb.jpg,tuna\n")
    with pytest.raises(TinltError, match=rf"{bad}:3: unknown class name 'tuna' in {cn}"):
        load_csv(bad, classnames_file=cn)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("file_name,target\na.jpg,0\n", r":1: expected a header 'path,label' or 'path,class_name'"),
        ("path,label\na.jpg,0\nb.jpg,x\n", r":3: label must be an integer"),
        ("path,label\na.jpg,0\nb.jpg\n", r":3: expected 2 columns"),
        ("path,label\na.jpg,-2\n", r":2: label -2 out of range"),
        ("path,label\n", r": no samples \(empty split\)"),
        ("", r": no samples \(empty split\)"),
    ],
)
def test_csv_errors(tmp_path, text, pattern):
    csvf = _write(tmp_path / "d.csv", text)
    with pytest.raises(TinltError, match=str(csvf).replace(".", r"\.") + pattern):
        load_csv(csvf)


def test_csv_label_out_of_range_and_missing(tmp_path):
    cn = _write(tmp_path / "cn.txt", "a\nb\n")
    csvf = _write(tmp_path / "d.csv", "path,label\nx.jpg,1\ny.jpg,5\n")
    with pytest.raises(TinltError, match=rf"{csvf}:3: label 5 out of range"):
        load_csv(csvf, classnames_file=cn)
    with pytest.raises(TinltError, match="CSV file not found: .*gone.csv"):
        load_csv(tmp_path / "gone.csv")
