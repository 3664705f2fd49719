"""Shared fixtures: a tiny generated image dataset in list, folder and CSV form, and the
rule that a skip is a failure where every test must run.

``TINLT_NO_SKIPS=1`` (set by ``.ci/run``, whose machine installs Chromium, Fashion-MNIST and
a C++ compiler) turns every skipped test into a failure naming the skip's reason, so a
missing dependency or a swallowed error can never pass as a skip there.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

def _no_skips(rep) -> None:
    if rep.skipped and os.environ.get("TINLT_NO_SKIPS") == "1" and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped, but TINLT_NO_SKIPS=1 requires every test to run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _no_skips((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # a whole module skipped (pytest.importorskip)
    _no_skips((yield).get_result())


# tinlt's tiny open_clip configs (tiny-vit, tiny-rn), which some tests build with open_clip directly
from tinlt.models.towers.clip_weights import register_model_configs  # noqa: E402

register_model_configs()

CLASSES = ["red thing", "green thing", "blue thing"]
TRAIN_COUNTS = [9, 5, 2]
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
TINY = ["model.name=tiny-vit", "data.image_size=32", "data.num_workers=0"]  # the model every training test uses


def noisy_image(colour, rng: np.random.Generator, size=(24, 24), spread: int = 25) -> Image.Image:
    """``colour`` (RGB) plus uniform noise in [-spread, spread); uniform random pixels when colour is None."""
    w, h = size
    if colour is None:
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return Image.fromarray(np.clip(np.array(colour) + rng.integers(-spread, spread, (h, w, 3)), 0, 255).astype(np.uint8))


def write_class_folders(root: Path, counts: dict, colours: dict | None = None, *, seed: int = 0, size=(24, 24),
                        spread: int = 25, rng: np.random.Generator | None = None) -> Path:
    """``root/<class>/<i>.png``: ``counts[class]`` noisy images of ``colours[class]`` each (random
    pixels without a colour). ``size`` is a (w, h) or a list of them cycled over each class's
    images; pass ``rng`` to continue one generator across splits. Returns ``root``."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    sizes = size if isinstance(size, list) else [size]
    for cls, n in counts.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noisy_image((colours or {}).get(cls), rng, sizes[i % len(sizes)], spread).save(d / f"{i}.png")
    return root


def write_list(listing: Path, root: Path, folders: Path, classes: list[str]) -> Path:
    """A ``relative/path label`` list of every image under ``folders/<class>/`` (paths relative to ``root``)."""
    lines = [f"{p.relative_to(root)} {c}\n" for c, name in enumerate(classes)
             for p in sorted((folders / name).glob("*.png"), key=lambda q: int(q.stem))]
    listing.write_text("".join(lines))
    return listing


def _write_images(root: Path, counts, seed=0) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    items = []
    for c, n in enumerate(counts):
        d = root / CLASSES[c].replace(" ", "_")
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = d / f"img {i}.png"  # a space in the name on purpose
            noisy_image(COLOURS[c], rng).save(p)
            items.append((str(p.relative_to(root)), c))
    return items


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train = _write_images(root / "train", TRAIN_COUNTS, seed=0)
    test = _write_images(root / "test", [3, 3, 3], seed=1)
    (root / "classnames.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASSES)))
    for name, items in (("train", train), ("test", test)):
        (root / f"{name}.txt").write_text("".join(f"{name}/{p} {y}\n" for p, y in items))
        with open(root / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "class_name"])
            for p, y in items:
                w.writerow([f"{name}/{p}", CLASSES[y]])
    return root


def common_args(out: Path, epochs: int = 2) -> list[str]:
    return [
        *TINY,
        "optim.batch_size=4",
        "optim.lr=1e-3",
        "optim.name=adamw",
        f"optim.epochs={epochs}",
        "train.eval_batch_size=8",
        f"train.output_dir={out}",
        "train.quiet=true",
        "train.report=false",  # reports have their own tests
    ]


def split_args(kind: str, root: Path) -> list[str]:
    if kind == "list":
        cn = root / "classnames.txt"
        return [
            "data.train.kind=list", f"data.train.path={root / 'train.txt'}", f"data.train.classnames={cn}",
            "data.test.kind=list", f"data.test.path={root / 'test.txt'}", f"data.test.classnames={cn}",
        ]
    if kind == "folder":
        return [
            "data.train.kind=folder", f"data.train.path={root / 'train'}",
            "data.test.kind=folder", f"data.test.path={root / 'test'}",
        ]
    cn = root / "classnames.txt"
    return [
        "data.train.kind=csv", f"data.train.path={root / 'train.csv'}", f"data.train.classnames={cn}",
        "data.test.kind=csv", f"data.test.path={root / 'test.csv'}", f"data.test.classnames={cn}",
    ]




RGB_CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="session")
def rgb_folder(tmp_path_factory):
    """A folder tree with 4 train and 2 test images for each of red/green/blue."""
    root = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    colours = dict(zip(RGB_CLASSES, ([200, 30, 30], [30, 200, 30], [30, 30, 200])))
    for split, n in (("train", 4), ("test", 2)):
        write_class_folders(root / split, {c: n for c in RGB_CLASSES}, colours, spread=40, rng=rng)
    return root
