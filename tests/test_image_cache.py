"""The pre-resized image cache (tinlt.data.image_cache, ``tinlt data cache``): what it stores
equals decoding and resizing each file with Pillow directly, reads repeat bit for bit, stale
or unknown files are decoded from disk, and a build that fails leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tinlt.data import image_cache as ic
from tinlt.data.dataset import ImageDataset
from tinlt.data.samples import Samples
from tinlt.errors import TinltError


def picture(w, h, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.fixture()
def files(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    out = []
    for i, (w, h) in enumerate([(500, 375), (200, 300), (1200, 900), (100, 80)]):
        p = d / f"{i}.jpg"
        picture(w, h, i).save(p, quality=92)
        out.append(str(p))
    png = d / "grey.png"
    picture(90, 400, 9).convert("L").save(png)
    out.append(str(png))
    bad = d / "broken.jpg"
    bad.write_bytes(b"not an image")
    out.append(str(bad))
    return out


def expected(path, short):
    """By hand with Pillow: decode (JPEG DCT-scaled while both sides stay >= short), RGB,
    shorter side -> short with bicubic, never enlarged."""
    img = Image.open(path)
    if img.format == "JPEG":
        img.draft("RGB", (short, short))
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) > short:
        img = img.resize((short, round(h * short / w)) if w <= h else (round(w * short / h), short), Image.BICUBIC)
    return img


def test_cached_pixels_equal_pillow_by_hand_and_repeat(files, tmp_path):
    entry, built = ic.build(files, tmp_path / "cache", 256)
    assert built and entry.name.startswith("images-256-")
    cache = ic.ImageCache(entry)
    rows = cache.rows(files)
    assert rows.tolist() == list(range(len(files)))
    sizes = []
    for p, r in zip(files[:-1], rows[:-1]):
        got = cache.read(int(r))
        sizes.append(got.size)
        assert got.tobytes() == expected(p, 256).tobytes()
        assert cache.read(int(r)).tobytes() == got.tobytes()
    # 500x375 -> 341x256; 200x300 kept; 1200x900 drafted to 600x450 -> 341x256; 100x80 kept; 90x400 kept
    assert sizes == [(341, 256), (200, 300), (341, 256), (100, 80), (90, 400)]
    with pytest.raises(ValueError, match="UnidentifiedImageError"):
        cache.read(int(rows[-1]))


def test_the_dataset_reads_the_cache_and_decodes_what_it_does_not_hold(files, tmp_path, monkeypatch):
    entry, _ = ic.build(files[:3] + files[-1:], tmp_path / "cache", 64)
    cache = ic.ImageCache(entry)
    # a file changed after the build: same path, new content and mtime -> decoded from disk
    picture(300, 200, 42).save(files[1], quality=92)
    os.utime(files[1], ns=(1, 10**18))
    samples = Samples(items=files, labels=np.zeros(len(files), dtype=np.int64), classnames=["a"])
    ds = ImageDataset(samples, None, image_cache=cache)
    # cached: files 0, 2 and the broken one; decoded: the changed one and the two never cached
    assert ds.uncached == 3
    import tinlt.data.dataset as dataset_module

    decoded = []
    real = dataset_module.open_image
    monkeypatch.setattr(dataset_module, "open_image", lambda p, **k: decoded.append(p) or real(p, **k))
    assert ds._decode(0).size == (85, 64)  # 500x375 at short side 64 (draft 1/4 -> 125x94, then 85x64)
    assert ds._decode(1).size == (300, 200)  # the new content, at full size
    img, _, i = ds[5]  # the broken file (known broken from the build): skipped to the next sample
    assert i == 0 and ds.bad_items[0][0] == files[5]
    assert decoded == [files[1]]


def test_reuse_new_keys_and_failed_builds_leave_nothing(files, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    first, built = ic.build(files, root, 128)
    again, built_again = ic.build(files, root, 128)
    assert built and not built_again and again == first
    other, _ = ic.build(files, root, 96)
    assert other != first
    calls = []

    def boom(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ic.build(files[:4], root, 200, tick=boom)
    assert sorted(p.name for p in root.iterdir()) == sorted([first.name, other.name])  # no entry, no .tmp-


def test_shards_roll_over_and_damage_is_one_line(files, tmp_path, monkeypatch):
    monkeypatch.setattr(ic, "SHARD_BYTES", 100_000)  # each 256-px image is ~260 KB: one per shard
    entry, _ = ic.build(files[:3], tmp_path / "cache", 256)
    cache = ic.ImageCache(entry)
    assert cache.shards == 3 and sorted(cache.index[:, 0].tolist()) == [0, 1, 2]
    assert cache.read(2).tobytes() == expected(files[2], 256).tobytes()
    with open(entry / "pixels-001.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(TinltError, match=r"data.image_cache .*pixels-001.bin is missing or short"):
        ic.ImageCache(entry)
    with pytest.raises(TinltError, match="not an image cache entry"):
        ic.ImageCache(tmp_path)
    rebuilt, built = ic.build(files[:3], tmp_path / "cache", 256)  # a damaged entry is rebuilt
    assert built and ic.ImageCache(rebuilt).read(1).size == expected(files[1], 256).size


def test_a_name_that_is_not_utf8_round_trips(tmp_path):
    if sys.platform == "darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    picture(60, 40, 1).save(raw.decode(errors="surrogateescape"), format="JPEG")
    path = os.fsdecode(raw)
    entry, _ = ic.build([path], tmp_path / "cache", 32)
    cache = ic.ImageCache(entry)
    assert cache.rows([path]).tolist() == [0] and cache.read(0).size == (48, 32)


def test_the_command(files, tmp_path):
    folder = tmp_path / "tree" / "cls"
    folder.mkdir(parents=True)
    for p in files[:2]:
        os.link(p, folder / os.path.basename(p))
    run = [sys.executable, "-m", "tinlt", "data", "cache", "--train-folder", str(tmp_path / "tree"),
           "--cache-dir", str(tmp_path / "c"), "--short-side", "100"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("train with: data.image_cache=") and "images-100-" in last
    cache = ic.ImageCache(last.split("=", 1)[1])
    assert len(cache.paths) == 2
    bad = subprocess.run(run[:-1] + ["0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--short-side must be >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_training_from_the_cache_equals_training_from_the_files(dataset, tmp_path, capsys):
    """Images smaller than the short side are stored as they are, so a run reading the cache
    must reproduce a run decoding the files to the last bit; a split the entry does not hold
    is decoded and said so."""
    import json

    from conftest import common_args, split_args

    from tinlt.cli import main

    split = split_args("folder", dataset)
    cache_dir = tmp_path / "c"
    assert main(["data", "cache", "-c", "starter_clip", *split, "--cache-dir", str(cache_dir), "--short-side", "64"]) == 0
    entry = capsys.readouterr().out.strip().splitlines()[-1].split("=", 1)[1]
    assert len(ic.ImageCache(entry).paths) == sum(1 for _ in (dataset / "train").rglob("*.png")) + 9

    runs = {}
    for name, extra in (("files", []), ("cache", [f"data.image_cache={entry}"])):
        out = tmp_path / name
        assert main(["train", *common_args(out), *split, *extra]) == 0
        runs[name] = ([json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()],
                      json.loads((out / "metrics.json").read_text())["confusion"])
    assert runs["cache"] == runs["files"]
    capsys.readouterr()
    train_only, _ = ic.build(sorted(str(p) for p in (dataset / "train").rglob("*.png")), cache_dir, 64)
    assert main(["train", *common_args(tmp_path / "part"), *split, "train.quiet=false",
                 f"data.image_cache={train_only}"]) == 0
    said = capsys.readouterr().out
    assert "9 of 9 images" in said and "not in the cache" in said
