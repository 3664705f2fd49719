"""The test images a report shows: the test split rebuilt from the run's config, a grid
that puts rare classes and mistakes first, thumbnails."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..data.validate import REPORT_JSON as DATA_REPORT
from ..errors import TinltError
from ..plots import figure as _figure, short as _short, style as _style
from .view import RunView

GRID_IMAGES = 24  # test images in the sample grid


def rebuild_test_split(rf: RunView, notes: list):
    """The test split the predictions index into, or None (with a note) if it cannot be trusted."""
    from ..data.build import build_split

    pred = rf.metrics.get("predictions") or {}
    index, target = pred.get("index"), pred.get("target")
    if index is None or target is None or pred.get("pred") is None:
        notes.append("test images: metrics.json has no per-image predictions")
        return None
    if rf.config is None:
        notes.append("test images: no config.yaml to find the test split")
        return None
    try:
        split_cfg = rf.config.data.test if str(rf.config.data.test.kind or "") else rf.config.data.val
        samples = build_split(split_cfg)
    except TinltError as e:
        notes.append(f"test images are not reachable any more: {e}")
        return None
    except Exception as e:  # a vanished mount fails in more ways than we can name
        notes.append(f"test images are not reachable any more: {type(e).__name__}: {e}")
        return None
    if samples is None:
        notes.append("test images: the config names no test split")
        return None
    if rf.meta_dir is not None and not samples.in_memory:
        split_key = "data.test" if str(rf.config.data.test.kind or "") else "data.val"
        samples = _drop_checked_out(samples, rf.meta_dir / DATA_REPORT, split_key)
    index, target = np.asarray(index, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if (len(samples) != len(index) or (index.size and (index.min() < 0 or index.max() >= len(samples)))
            or not np.array_equal(samples.labels[index], target)):
        notes.append("test images: the split in config.yaml no longer matches the predictions "
                     "(evaluated on another split, or the files changed)")
        return None
    return samples


def _drop_checked_out(samples, report_path: Path, split_key: str):
    """Remove what the trainer's up-front data check removed (data_report.json), so indices line up.

    The check keeps the first listing of a path and drops later ones, and skips bad files;
    the caller still verifies the result against the predictions' labels.
    """
    try:
        problems = json.loads(report_path.read_text()).get("problems", [])
    except (OSError, ValueError, AttributeError):
        return samples
    bad = {os.path.realpath(str(p.get("item"))) for p in problems
           if isinstance(p, dict) and p.get("split") == split_key and p.get("action") == "skipped"
           and not str(p.get("reason", "")).startswith("listed again")}
    seen: set = set()
    keep = []
    for i, item in enumerate(samples.items):
        key = os.path.realpath(str(item))  # as the data check compares files
        if key not in seen and key not in bad:
            keep.append(i)
        seen.add(key)
    return samples if len(keep) == len(samples) else samples.subset(np.asarray(keep, dtype=np.int64))


def select_grid(targets: np.ndarray, preds: np.ndarray, train_counts: np.ndarray, k: int = GRID_IMAGES) -> list:
    """Positions of up to k predictions to show: rare classes and mistakes first.

    Takes one image per class in turn, rarest class first and each class's mistakes before
    its correct images, so a few large tail classes cannot fill the grid; the result is
    ordered mistakes first, then by training count.
    """
    by_class: dict = {}
    for i in np.lexsort((np.arange(len(targets)), targets == preds)):  # mistakes first, then position
        by_class.setdefault(int(targets[i]), []).append(int(i))
    classes = sorted(by_class, key=lambda c: (train_counts[c], c))
    chosen: list = []
    depth = 0
    while len(chosen) < k and any(depth < len(by_class[c]) for c in classes):
        for c in classes:
            if depth < len(by_class[c]) and len(chosen) < k:
                chosen.append(by_class[c][depth])
        depth += 1
    return sorted(chosen, key=lambda i: (targets[i] == preds[i], train_counts[targets[i]], targets[i], i))


def thumbnail(samples, item_index: int, size: int = 160) -> np.ndarray:
    from PIL import Image

    from ..data.images import open_image

    item = samples.items[item_index]
    img = Image.fromarray(np.asarray(item)) if samples.in_memory else open_image(item, draft_size=size)
    img = img.convert("RGB")
    img.thumbnail((size, size))
    return np.asarray(img)


def fig_samples(rf: RunView, notes: list):
    samples = rebuild_test_split(rf, notes)
    if samples is None:
        return None
    pred = rf.metrics["predictions"]
    index = np.asarray(pred["index"], dtype=np.int64)
    targets, preds = np.asarray(pred["target"], dtype=np.int64), np.asarray(pred["pred"], dtype=np.int64)
    conf = np.asarray(pred.get("confidence") or [np.nan] * len(index), dtype=np.float64)
    chosen = select_grid(targets, preds, rf.train_counts)
    if not chosen:
        notes.append("test images: no predictions")
        return None
    cols = min(6, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    names = rf.classnames
    unreadable = 0
    with _style():
        fig = _figure(2.05 * cols, 2.35 * rows + 0.5)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax in axes:
            ax.axis("off")
        for ax, i in zip(axes, chosen):
            try:
                ax.imshow(thumbnail(samples, int(index[i])), interpolation="nearest" if samples.in_memory else "antialiased")
            except Exception:  # one unreadable file costs one cell
                unreadable += 1
                ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes, color="#888")
            right = targets[i] == preds[i]
            colour = "#1a7f37" if right else "#c62828"
            c_txt = "" if math.isnan(conf[i]) else f" {100 * conf[i]:.0f}%"
            ax.set_title(f"true: {_short(names[targets[i]], 16)}\npred: {_short(names[preds[i]], 12)}{c_txt}",
                         fontsize=8, color=colour, fontweight="normal", loc="center")
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for sp in ax.spines.values():
                sp.set_visible(True)
                sp.set_color(colour)
                sp.set_linewidth(2.5 if not right else 1.0)
        n_wrong = int(sum(targets[i] != preds[i] for i in chosen))
        fig.suptitle(f"Test images, rare classes and mistakes first ({n_wrong} of {len(chosen)} shown are wrong)",
                     fontsize=12, fontweight="bold")
    if unreadable == len(chosen):
        notes.append("test images: none of the chosen image files could be read")
        return None
    if unreadable:
        notes.append(f"test images: {unreadable} file(s) could not be read")
    return fig
