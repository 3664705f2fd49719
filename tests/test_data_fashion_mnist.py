"""IDX reader on hand-made bytes, Fashion-MNIST loading, class selection and long-tail subsets."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from tinlt.data.fashion_mnist import CLASSNAMES, DEFAULT_FOLDER, load_fashion_mnist, read_idx
from tinlt.data.longtail import long_tail_counts
from tinlt.errors import TinltError

# ---------------------------------------------------------------- IDX bytes by hand


def idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


def test_read_idx_uint8_raw_and_gz(tmp_path):
    payload = bytes(range(24))
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(idx_bytes(0x08, (2, 3, 4), payload))
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(0x08, (2, 3, 4), payload)))
    expected = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for p in (raw, gz):
        a = read_idx(p)
        assert a.dtype == np.uint8 and a.shape == (2, 3, 4)
        np.testing.assert_array_equal(a, expected)


def test_read_idx_big_endian_types(tmp_path):
    cases = [
        (0x09, ">b", [-3, 7], np.int8),
        (0x0B, ">h", [-300, 1000], np.int16),
        (0x0C, ">i", [-70000, 123456789], np.int32),
        (0x0D, ">f", [1.5, -2.25], np.float32),
        (0x0E, ">d", [1e300, -0.125], np.float64),
    ]
    for code, fmt, values, dtype in cases:
        p = tmp_path / f"t{code}"
        p.write_bytes(idx_bytes(code, (2,), struct.pack(">" + fmt[1] * 2, *values)))
        a = read_idx(p)
        assert a.dtype == dtype, code
        assert a.tolist() == values


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "not an IDX file"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX data type 0x07"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        (idx_bytes(0x08, (10, 28, 28), bytes(100)), "truncated IDX file"),
        (idx_bytes(0x08, (2,), bytes(5)), "3 bytes beyond"),
        (gzip.compress(idx_bytes(0x08, (500,), bytes(500)))[:-12], "broken gzip"),
    ],
)
def test_read_idx_malformed(tmp_path, data, fragment):
    p = tmp_path / "bad-idx1-ubyte.gz"
    p.write_bytes(data)
    with pytest.raises(TinltError) as e:
        read_idx(p)
    assert str(p) in str(e.value) and fragment in str(e.value)


# ---------------------------------------------------------------- synthetic Fashion-MNIST folder


def make_fashion_folder(folder: Path, n_per_class: int = 50, gz: bool = True, layout: str = "") -> np.ndarray:
    """Four IDX files; labels cycle 0..9 so classes interleave in file order.
    Pixel [0, 0] / [0, 1] encode the sample's index, so the test can see which were kept."""
    target = folder / layout
    target.mkdir(parents=True, exist_ok=True)
    labels = {}
    for prefix, n in (("train", 10 * n_per_class), ("t10k", 10 * 3)):
        lab = (np.arange(n) % 10).astype(np.uint8)
        img = np.zeros((n, 28, 28), dtype=np.uint8)
        img[:, 0, 0] = np.arange(n) // 256
        img[:, 0, 1] = np.arange(n) % 256
        for kind, arr, code in (("images-idx3-ubyte", img, 0x08), ("labels-idx1-ubyte", lab, 0x08)):
            data = idx_bytes(code, arr.shape, arr.tobytes())
            name = f"{prefix}-{kind}"
            if gz:
                (target / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (target / name).write_bytes(data)
        labels[prefix] = lab
    return labels["train"]


def original_index(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0].astype(np.int64) * 256 + images[:, 0, 1]


@pytest.mark.parametrize("gz, layout", [(True, ""), (False, ""), (True, "FashionMNIST/raw")])
def test_load_full_split_layouts(tmp_path, gz, layout):
    make_fashion_folder(tmp_path, gz=gz, layout=layout)
    s = load_fashion_mnist(tmp_path, split="train")
    assert s.in_memory and s.items.shape == (500, 28, 28) and s.items.dtype == np.uint8
    assert s.classnames == CLASSNAMES and s.class_counts().tolist() == [50] * 10
    np.testing.assert_array_equal(original_index(s.items), np.arange(500))
    t = load_fashion_mnist(tmp_path, split="test")
    assert len(t) == 30


def test_long_tail_first_images_per_class(tmp_path):
    train_labels = make_fashion_folder(tmp_path, n_per_class=50)
    n_max, ratio, C = 40, 10.0, 10
    s = load_fashion_mnist(tmp_path, lt_n_max=n_max, lt_ratio=ratio)
    expected = [math.floor(n_max * (1 / ratio) ** (c / (C - 1))) for c in range(C)]
    assert expected[0] == 40 and expected[-1] == 4  # sanity of the formula itself
    assert s.class_counts().tolist() == expected
    kept = original_index(s.items)
    for c in range(C):
        first = np.flatnonzero(train_labels == c)[: expected[c]]
        np.testing.assert_array_equal(np.sort(kept[s.labels == c]), first)
    assert np.all(np.diff(kept) > 0)  # file order preserved


def test_two_class_selection_and_explicit_counts(tmp_path):
    train_labels = make_fashion_folder(tmp_path, n_per_class=50)
    s = load_fashion_mnist(tmp_path, classes=[0, 6], counts=[41, 1])
    assert s.classnames == ["T-shirt/top", "Shirt"]
    assert s.class_counts().tolist() == [41, 1]
    kept = original_index(s.items)
    np.testing.assert_array_equal(kept[s.labels == 0], np.flatnonzero(train_labels == 0)[:41])
    np.testing.assert_array_equal(kept[s.labels == 1], np.flatnonzero(train_labels == 6)[:1])
    # long-tail profile over the kept classes: C=2 -> n_max, n_max/ratio
    lt = load_fashion_mnist(tmp_path, classes=[6, 0], lt_n_max=30, lt_ratio=10)
    assert lt.classnames == ["Shirt", "T-shirt/top"] and lt.class_counts().tolist() == [30, 3]
    lim = load_fashion_mnist(tmp_path, split="test", per_class_limit=2)
    assert lim.class_counts().tolist() == [2] * 10


def test_subset_errors(tmp_path):
    make_fashion_folder(tmp_path, n_per_class=50)
    with pytest.raises(TinltError, match="counts has 3 entries but the split has 2 classes"):
        load_fashion_mnist(tmp_path, classes=[0, 6], counts=[3, 2, 1])
    with pytest.raises(TinltError, match="asks for 51 images of class 0"):
        load_fashion_mnist(tmp_path, lt_n_max=51)
    with pytest.raises(TinltError, match="class 10 out of range"):
        load_fashion_mnist(tmp_path, classes=[0, 10])
    with pytest.raises(TinltError, match="split must be 'train' or 'test'"):
        load_fashion_mnist(tmp_path, split="val")


def test_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(TinltError) as e:
        load_fashion_mnist(tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and "sudo apt-get install dataset-fashion-mnist" in msg and "data.train.path" in msg
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(8, (1, 28, 28), bytes(784))))
    with pytest.raises(TinltError, match="train-labels-idx1-ubyte.* not found in .*partial.*apt-get"):
        load_fashion_mnist(tmp_path / "partial")


def test_long_tail_counts_formula():
    for C, n_max, ratio in [(10, 6000, 100.0), (10, 5000, 50.0), (7, 1000, 3.0), (2, 1230, 41.0), (100, 500, 100.0)]:
        want = [max(1, math.floor(n_max * (1 / ratio) ** (c / (C - 1)))) for c in range(C)]
        assert long_tail_counts(C, n_max, ratio) == want
    # values worked out with bc: 6000 / 100^(c/9) = 6000, 3596.9, 2156.3, 1292.7, ..., 60
    assert long_tail_counts(10, 6000, 100.0)[:4] == [6000, 3596, 2156, 1292]
    assert long_tail_counts(10, 6000, 100.0)[-1] == 60
    assert long_tail_counts(1, 77, 100.0) == [77]
    assert long_tail_counts(3, 5, 1000.0) == [5, 1, 1]  # floor would give 0: classes never vanish
    with pytest.raises(TinltError):
        long_tail_counts(3, 10, 0.5)


# ---------------------------------------------------------------- the real files (Debian package)

REAL = Path(DEFAULT_FOLDER)


@pytest.mark.skipif(
    not REAL.is_dir(), reason=f"{DEFAULT_FOLDER} absent (sudo apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist():
    train = load_fashion_mnist(REAL, split="train")
    assert train.items.shape == (60000, 28, 28) and train.items.dtype == np.uint8
    assert train.class_counts().tolist() == [6000] * 10
    test = load_fashion_mnist(REAL, split="test")
    assert test.items.shape == (10000, 28, 28) and test.class_counts().tolist() == [1000] * 10
    lt = load_fashion_mnist(REAL, lt_n_max=6000, lt_ratio=100)
    want = [math.floor(6000 * (1 / 100) ** (c / 9)) for c in range(10)]
    assert lt.class_counts().tolist() == want
    clamp = load_fashion_mnist(REAL, classes=[0, 6], counts=[1230, 30])
    assert clamp.class_counts().tolist() == [1230, 30]
    # the kept images are the first of their class in file order
    first_shirts = train.items[train.labels == 6][:30]
    np.testing.assert_array_equal(clamp.items[clamp.labels == 1], first_shirts)
