"""Reports a person wants to look at: figures, a stand-alone HTML page and Markdown for runs.

Owns :func:`build_report` (``tinlt report``: one run folder -> ``report/`` with PNG figures,
``index.html`` and ``report.md``), the figure functions the TensorBoard logger and
:mod:`tinlt.compare` reuse (:func:`run_figures`, :func:`fig_compare`), and
:func:`operating_point` (a run's current calibrated evaluation).

Reads only what a run folder holds: ``metrics.json`` (required), and ``run.json``,
``config.yaml`` and ``log.jsonl`` when present. A ``tinlt eval`` folder holds only
``metrics.json``; it borrows the rest from the training run one level up when the class
names agree. Every missing piece costs a figure (with a note on the page), never the report.

Figures are drawn with matplotlib, the well-kept standard Python plotting library, through
its object API on the non-interactive Agg canvas: no display, no pyplot global state, and
the caller's own matplotlib backend is left alone.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .data.validate import REPORT_JSON as DATA_REPORT
from . import fileio
from .engine.run_folder import CONFIG, EVAL_DIR, LOG, METRICS, PREDICTIONS, REPORT_DIR, RUN_INFO
from .errors import TinltError

GROUP_NAMES = ("many", "medium", "few")
GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728", "overall": "#4d4d4d", None: "#8c8c8c"}
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MANY_CLASSES = 30  # above this: no class names on axes, small confusion heatmap + a list of top confusions
GRID_IMAGES = 24  # test images in the sample grid

# every file a report may write; stale ones from an earlier report are removed first
FIGURE_FILES = (
    "per_class_accuracy.png",
    "groups.png",
    "confusion.png",
    "training_curves.png",
    "eval_curves.png",
    "pr_roc.png",
    "samples.png",
    "grad_ratio.png",
)

_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "savefig.dpi": 110,
    "figure.dpi": 110,
}


# --------------------------------------------------------------------------- reading a run folder


@dataclass
class RunView:
    """Everything a report needs from one run (or eval) folder."""

    path: Path
    metrics: dict
    run: dict = field(default_factory=dict)  # run.json, {} when absent
    log: list = field(default_factory=list)  # log.jsonl records, de-duplicated by epoch
    config_text: str = ""  # config.yaml as written
    config: Any = None  # the loaded DictConfig, or None
    meta_dir: Optional[Path] = None  # where run.json / config.yaml were found (path or its parent)
    notes: list = field(default_factory=list)  # what could not be shown, and why

    @property
    def name(self) -> str:
        if self.meta_dir is not None and self.meta_dir != self.path:
            return f"{self.meta_dir.name}/{self.path.name}"
        return self.path.name

    @property
    def per_class(self) -> list:
        return self.metrics["per_class"]

    @property
    def classnames(self) -> list:
        return [str(r["name"]) for r in self.per_class]

    @property
    def train_counts(self) -> np.ndarray:
        return np.array([int(r["train_count"]) for r in self.per_class], dtype=np.int64)

    @property
    def accuracy(self) -> np.ndarray:
        return np.array([np.nan if r["accuracy"] is None else float(r["accuracy"]) for r in self.per_class])

    def group_of(self) -> list:
        """Group name of each class: run.json's stored groups, else metrics.json's per-class field."""
        groups = self.run.get("groups")
        out: list = [None] * len(self.per_class)
        if isinstance(groups, dict):
            for name in GROUP_NAMES:
                for c in groups.get(name, []):
                    if 0 <= int(c) < len(out) and out[int(c)] is None:
                        out[int(c)] = name
            if any(g is not None for g in out):
                return out
        return [r.get("group") for r in self.per_class]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TinltError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except OSError as e:
        raise TinltError(f"{path}: cannot read ({e.strerror})") from None


def _read_log(path: Path, notes: list) -> list:
    records: dict = {}
    bad = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1  # e.g. a line cut short by a crash
            continue
        if isinstance(r, dict) and isinstance(r.get("epoch"), (int, float)):
            records[r["epoch"]] = r  # a resumed run re-logs an epoch: the later record wins
    if bad:
        notes.append(f"{path.name}: skipped {bad} unreadable line(s)")
    return [records[k] for k in sorted(records)]


def load_run(path: str | os.PathLike) -> RunView:
    """Read a run folder (or a ``tinlt eval`` folder); TinltError if it holds no usable metrics.json."""
    folder = Path(path)
    if not folder.is_dir():
        raise TinltError(f"{folder}: no such run folder")
    mpath = folder / METRICS
    if not mpath.is_file():
        raise TinltError(f"{folder}: no {METRICS} here (not a finished tinlt run or eval folder)")
    metrics = _read_json(mpath)
    if not isinstance(metrics, dict):
        raise TinltError(f"{mpath}: expected a JSON object")
    for key in ("per_class", "confusion", "overall"):
        if key not in metrics:
            raise TinltError(f"{mpath}: missing key '{key}' (not written by tinlt?)")
    rows = metrics["per_class"]
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"name", "train_count", "test_count", "accuracy"} <= r.keys() for r in rows
    ):
        raise TinltError(f"{mpath}: 'per_class' must be a list of rows with name, train_count, test_count, accuracy")
    names = [str(r.get("name")) for r in rows]
    rf = RunView(path=folder, metrics=metrics)

    def _matches(d: Path) -> bool:
        if not (d / RUN_INFO).is_file():
            return (d / CONFIG).is_file()
        try:
            run = json.loads((d / RUN_INFO).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(run, dict) and list(map(str, run.get("classnames", names))) == names

    # an eval folder sits inside (or next to) the checkpoint's run folder
    for d in (folder, folder.parent):
        if ((d / RUN_INFO).is_file() or (d / CONFIG).is_file()) and _matches(d):
            rf.meta_dir = d
            break
    if rf.meta_dir is not None and rf.meta_dir != folder:
        rf.notes.append(f"{RUN_INFO}, {CONFIG} and {LOG} are those of the training run in {rf.meta_dir}")
    _read_meta(rf)
    return rf


def training_run(path: str | os.PathLike) -> Optional[RunView]:
    """A run still training (no metrics.json yet) from run.json and log.jsonl, or None without run.json.

    Holds no accuracies: only the figures drawn from the log (gradient ratio, accuracy per
    epoch) make sense for it.
    """
    folder = Path(path)
    try:
        run = json.loads((folder / RUN_INFO).read_text())
        names, counts = list(run["classnames"]), list(run["train_counts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    per_class = [{"class": c, "name": str(n), "train_count": int(k), "test_count": 0, "accuracy": None, "group": None}
                 for c, (n, k) in enumerate(zip(names, counts))]
    rf = RunView(path=folder, metrics={"per_class": per_class, "confusion": [], "overall": None}, meta_dir=folder)
    _read_meta(rf)
    return rf


def _read_meta(rf: RunView) -> None:
    if rf.meta_dir is not None:
        if (rf.meta_dir / RUN_INFO).is_file():
            try:
                run = _read_json(rf.meta_dir / RUN_INFO)
                rf.run = run if isinstance(run, dict) else {}
            except TinltError as e:
                rf.notes.append(str(e))
        cpath = rf.meta_dir / CONFIG
        if cpath.is_file():
            rf.config_text = cpath.read_text()
            from .config import load_config

            try:
                rf.config = load_config(cpath)
            except TinltError as e:
                rf.notes.append(f"config not loaded: {e}")
        lpath = rf.meta_dir / LOG
        if lpath.is_file():
            rf.log = _read_log(lpath, rf.notes)


# --------------------------------------------------------------------------- figure helpers


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _style():
    import matplotlib

    return matplotlib.rc_context(_STYLE)


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, facecolor="white")
    return path


def _short(text: str, limit: int = 18) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def pct(v: Optional[float], digits: int = 1) -> str:
    return "\u2013" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _eval_split(rf: RunView) -> Optional[str]:
    split = rf.run.get("eval_split")
    if split:
        return split
    for r in rf.log:
        for k in ("val", "test"):
            if isinstance(r.get(k), dict):
                return k
    return None


def group_bounds(rf: RunView) -> tuple[list, str]:
    """Shaded x-ranges ``[(group, lo, hi), ...]`` of the training-count axis, and how they were found.

    Absolute groups come from the config thresholds (few: count < few_threshold, many:
    count > many_threshold; integer counts, so the edges sit half-way). Otherwise (relative
    groups, or no config) the edges lie half-way, on the log axis, between the groups'
    observed counts.
    """
    counts = rf.train_counts
    cfg = rf.config
    if cfg is not None:
        from .data.groups import resolve_mode

        try:
            mode = resolve_mode(len(counts), str(cfg.data.groups))
        except TinltError:
            mode = None
        if mode == "absolute":
            few_t, many_t = int(cfg.data.few_threshold), int(cfg.data.many_threshold)
            bounds = [("few", 0.0, few_t - 0.5), ("medium", few_t - 0.5, many_t + 0.5), ("many", many_t + 0.5, math.inf)]
            return bounds, f"few: < {few_t}, medium: {few_t}\u2013{many_t}, many: > {many_t} training images"
    groups = rf.group_of()
    present = [g for g in ("few", "medium", "many") if any(x == g for x in groups)]
    if not present:
        return [], ""
    ranges = {g: (counts[[x == g for x in groups]].min(), counts[[x == g for x in groups]].max()) for g in present}
    bounds, lo = [], 0.0
    for i, g in enumerate(present):
        if i + 1 < len(present):
            nxt = ranges[present[i + 1]][0]
            if nxt <= ranges[g][1]:  # groups overlap in count: no clean edge to draw
                return [], ""
            hi = math.sqrt(max(ranges[g][1], 0.5) * nxt)
        else:
            hi = math.inf
        bounds.append((g, lo, hi))
        lo = hi
    how = "relative groups: the larger class is many, the smaller few" if len(counts) == 2 else "stored groups"
    return bounds, how


def _binned_mean(x: np.ndarray, y: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Mean of y in log-spaced bins of x (x > 0); bins with no point are dropped."""
    lx = np.log10(x)
    edges = np.linspace(lx.min(), lx.max() + 1e-9, bins + 1)
    idx = np.clip(np.digitize(lx, edges) - 1, 0, bins - 1)
    xs, ys = [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            xs.append(10 ** lx[m].mean())
            ys.append(y[m].mean())
    return np.array(xs), np.array(ys)


def _log_ticks(axis) -> None:
    """Plain numbers at 1, 2, 5 x 10^k on a log axis (not 2 x 10^0)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _count_axis(ax, counts: np.ndarray) -> tuple[float, float]:
    lo, hi = max(counts.min(), 1) / 1.6, max(counts.max(), 1) * 1.6
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    _log_ticks(ax.xaxis)
    return lo, hi


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


# --------------------------------------------------------------------------- the figures
# Each returns a matplotlib Figure, or None with the reason appended to ``notes``.


def fig_per_class_accuracy(rf: RunView, notes: list):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    counts = rf.train_counts.astype(float)
    acc = rf.accuracy
    groups = rf.group_of()
    ok = ~np.isnan(acc)
    if not ok.any():
        notes.append("per-class accuracy: no class has test images")
        return None
    if (counts[ok] <= 0).any():
        notes.append("per-class accuracy: classes with no training image are drawn at 1 on the log axis")
    x = np.maximum(counts, 1.0)
    many = len(counts) > MANY_CLASSES
    with _style():
        fig = _figure(10.0, 5.2)
        ax = fig.add_subplot()
        lo, hi = _count_axis(ax, x[ok])
        bounds, how = group_bounds(rf)
        band = {g: (a, b) for g, a, b in bounds}
        handles = []
        for g, a, b in bounds:
            a, b = max(a, lo), min(b, hi)
            if b > a:
                ax.axvspan(a, b, color=GROUP_COLOURS[g], alpha=0.08, lw=0)
            n = sum(1 for k in groups if k == g)
            handles.append(Patch(facecolor=GROUP_COLOURS[g], alpha=0.35, label=f"{g} ({_plural(n, 'class')})"))
        for g in dict.fromkeys(groups):
            m = ok & np.array([k == g for k in groups])
            if not m.any():
                continue
            ax.scatter(x[m], acc[m], s=14 if many else 46, color=GROUP_COLOURS.get(g, GROUP_COLOURS[None]),
                       alpha=0.45 if many else 0.9, edgecolor="none" if many else "white", linewidth=0.8, zorder=3)
            mean = float(acc[m].mean())
            a, b = band.get(g, (0.0, math.inf))  # the mean's segment stays inside its group's band
            ax.hlines(mean, max(x[m].min() / 1.25, a), min(x[m].max() * 1.25, b), color=GROUP_COLOURS.get(g, "#888"),
                      linestyle="--", linewidth=1.6, zorder=2)
        if not bounds:
            handles += [Patch(facecolor=GROUP_COLOURS.get(g, "#888"), alpha=0.6, label=str(g))
                        for g in dict.fromkeys(groups) if g is not None]
        handles.append(Line2D([], [], color="#555", linestyle="--", label="group mean"))
        if many:
            bx, by = _binned_mean(x[ok], acc[ok])
            ax.plot(bx, by, color="black", linewidth=1.8, zorder=4)
            handles.append(Line2D([], [], color="black", label="mean over count bins"))
        else:  # name each class; alternate above/below so neighbours do not collide
            order = np.argsort(x + np.where(ok, 0, np.inf))
            for j, c in enumerate(c for c in order if ok[c]):
                ax.annotate(_short(rf.classnames[c], 16), (x[c], acc[c]), xytext=(0, 8 if j % 2 == 0 else -14),
                            textcoords="offset points", ha="center", fontsize=8, color="#333", zorder=5,
                            annotation_clip=False)
        ax.set_ylim(-6, 108)
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("test accuracy of the class (%)")
        overall = rf.metrics.get("overall")
        ax.set_title(f"Per-class accuracy vs training count \u2014 overall {pct(overall)}%")
        leg = ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="shot groups")
        leg.get_title().set_fontweight("bold")
        if how:
            ax.text(1.01, 0.0, how.replace(", ", "\n"), transform=ax.transAxes, fontsize=8, color="#555",
                    va="bottom", ha="left")
    return fig


def fig_groups(rf: RunView, notes: list):
    m = rf.metrics
    sizes = m.get("group_sizes") or {}
    labels, values, colours = ["overall"], [m.get("overall")], [GROUP_COLOURS["overall"]]
    labels[0] = f"overall\n{len(rf.per_class)} classes"
    for g in GROUP_NAMES:
        n = sizes.get(g, sum(1 for k in rf.group_of() if k == g))
        labels.append(f"{g}\n{_plural(n, 'class')}")
        values.append(m.get(g))
        colours.append(GROUP_COLOURS[g])
    with _style():
        fig = _figure(6.4, 4.2)
        ax = fig.add_subplot()
        pos = np.arange(len(values))
        heights = [0 if v is None else v for v in values]
        bars = ax.bar(pos, heights, color=colours, width=0.62, zorder=3)
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, (v or 0) + 1.5, "n/a" if v is None else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=10, fontweight="bold" if v is not None else "normal",
                    color="#222" if v is not None else "#888")
        inst = m.get("instance_acc")
        if inst is not None:
            ax.axhline(inst, color="#555", linestyle=":", linewidth=1.2, zorder=2, label=f"instance accuracy {inst:.1f}")
            ax.legend(loc="upper right")
        ax.set_xticks(pos, labels)
        ax.set_ylim(0, 115)
        ax.set_ylabel("mean per-class accuracy (%)")
        ax.set_title("Accuracy by shot group")
        ax.grid(axis="x", visible=False)
    return fig


def fig_confusion(rf: RunView, notes: list):
    cm = np.asarray(rf.metrics["confusion"], dtype=np.float64)
    C = cm.shape[0]
    if cm.ndim != 2 or C == 0 or cm.shape != (C, C):
        notes.append("confusion matrix: malformed in metrics.json")
        return None
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    order = np.argsort(-rf.train_counts, kind="stable")  # head classes first: tail errors show as left columns
    norm = norm[np.ix_(order, order)]
    small = C <= MANY_CLASSES
    with _style():
        side = max(4.5, min(7.5, 3.0 + 0.4 * C)) if small else 5.2
        fig = _figure(side + 1.2, side)
        ax = fig.add_subplot()
        ax.grid(False)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_label("share of the true class's test images")
        if small:
            names = [_short(rf.classnames[c], 16) for c in order]
            ax.set_xticks(range(C), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
            ax.set_yticks(range(C), names, fontsize=8)
            if C <= 12:
                for i in range(C):
                    for j in range(C):
                        v = norm[i, j]
                        if not np.isnan(v) and v >= 0.005:
                            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8,
                                    color="white" if v > 0.55 else "#222")
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"predicted class ({C}, most training images first)")
            ax.set_ylabel("true class (same order)")
        ax.set_title("Confusion matrix (rows normalised)")
    return fig


def _epoch_series(log: list, key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in log:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["epoch"])
            ys.append(float(v))
    return np.array(xs), np.array(ys)


def fig_training_curves(rf: RunView, notes: list):
    if not rf.log:
        notes.append("training curves: no log.jsonl (an evaluation-only folder)")
        return None
    ex, loss = _epoch_series(rf.log, "loss")
    lx, lr = _epoch_series(rf.log, "lr")
    if len(ex) < 2:
        notes.append("training curves: fewer than two epochs logged")
        return None
    with _style():
        fig = _figure(9.0, 3.6)
        a1, a2 = fig.subplots(1, 2)
        a1.plot(ex, loss, marker="o", ms=4, color="#1f77b4")
        a1.set_title("Training loss")
        a1.set_xlabel("epoch")
        a1.set_ylabel("mean loss over the epoch")
        a2.plot(lx, lr, marker="o", ms=4, color="#2ca02c")
        a2.set_title("Learning rate (end of epoch)")
        a2.set_xlabel("epoch")
        a2.set_ylabel("learning rate")
        from matplotlib.ticker import FuncFormatter

        a2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.1e}"))
        for a in (a1, a2):
            a.xaxis.get_major_locator().set_params(integer=True)
    return fig


def fig_eval_curves(rf: RunView, notes: list):
    split = _eval_split(rf)
    recs = [r for r in rf.log if split and isinstance(r.get(split), dict)]
    if len(recs) < 2:
        if rf.log:
            notes.append("accuracy per epoch: fewer than two evaluated epochs (set train.eval_every=1)")
        return None
    ep = np.array([r["epoch"] for r in recs])
    with _style():
        fig = _figure(8.0, 4.4)
        ax = fig.add_subplot()
        for key, label in (("overall", "overall"), ("many", "many"), ("medium", "medium"), ("few", "few")):
            ys = np.array([np.nan if r[split].get(key) is None else r[split][key] for r in recs], dtype=float)
            if np.isnan(ys).all():
                continue
            ax.plot(ep, ys, marker="o", ms=4, label=label, color=GROUP_COLOURS[key],
                    linewidth=2.4 if key == "overall" else 1.6)
        best = [r["epoch"] for r in recs if r.get("best")]
        if best and split == "val":
            ax.axvline(best[-1], color="#555", linestyle=":", linewidth=1.2, label=f"selected epoch {best[-1]}")
        ax.set_ylim(-3, 103)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean per-class accuracy (%)")
        ax.set_title(f"Accuracy per epoch on the {split} split")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def operating_point(rf: RunView) -> Optional[dict]:
    """The evaluation at a calibrated threshold that belongs to this run now: an eval folder's
    metrics with ``at_threshold``, whose checkpoint still has the bytes it was evaluated with
    (so a re-calibrated or retrained run never shows a stale point). None otherwise."""
    folders = [rf.path] if "at_threshold" in rf.metrics else []
    folders.append(rf.path / EVAL_DIR)
    for folder in folders:
        m = rf.metrics if folder == rf.path else _read_json_or_none(folder / METRICS)
        if not isinstance(m, dict) or "at_threshold" not in m:
            continue
        ck = m.get("checkpoint") or {}
        try:
            fresh = Path(ck["path"]).is_file() and fileio.sha256(ck["path"]) == ck["sha256"]
        except (KeyError, OSError, TypeError):
            fresh = False
        if fresh:
            return m
    return None


def _read_json_or_none(path: Path) -> Any:
    return fileio.read_json(path)


def _threshold(rf: RunView) -> Optional[float]:
    """The decision threshold to mark on the PR figure: the current calibrated operating point's."""
    op = operating_point(rf)
    return float(op["at_threshold"]["threshold"]) if op else None


def fig_pr_roc(rf: RunView, notes: list):
    from .metrics import precision_recall_curve, roc_curve

    b = rf.metrics.get("binary")
    if len(rf.per_class) != 2 or not isinstance(b, dict):
        return None
    pred = rf.metrics.get("predictions") or {}
    scores, targets = pred.get("scores"), pred.get("target")
    if scores is None or targets is None:
        notes.append("precision-recall / ROC: metrics.json has no prediction scores")
        return None
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != (len(targets), 2):
        notes.append("precision-recall / ROC: prediction scores are malformed")
        return None
    pos = int(b.get("positive_class", 1))
    s, y = scores[:, pos], targets == pos
    try:
        prec, rec, _ = precision_recall_curve(s, y)
        fpr, tpr, _ = roc_curve(s, y)
    except TinltError as e:
        notes.append(f"precision-recall / ROC: {e}")
        return None
    ap = float(np.sum(np.diff(np.r_[0.0, rec]) * prec))  # step-wise area, as average precision is defined
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    name = _short(b.get("positive_name", rf.classnames[pos]), 24)
    points = []  # (label, precision, recall, fpr, style)
    if b.get("precision") is not None and b.get("recall") is not None:
        neg_n = int(b["fp"]) + int(b["tn"])
        points.append(("argmax prediction", b["precision"], b["recall"], b["fp"] / neg_n if neg_n else 0.0,
                       dict(marker="o", color="black")))
    t = _threshold(rf)
    if t is not None:
        hit = s >= t
        tp, fp = int((hit & y).sum()), int((hit & ~y).sum())
        p_t = tp / (tp + fp) if tp + fp else 1.0
        points.append((f"threshold {t:.3g}", p_t, tp / max(int(y.sum()), 1), fp / max(int((~y).sum()), 1),
                       dict(marker="*", color="#d62728", markersize=14)))
    with _style():
        fig = _figure(10.0, 4.6)
        a1, a2 = fig.subplots(1, 2)
        a1.step(np.r_[0.0, rec], np.r_[prec[0], prec], where="pre", color="#1f77b4", linewidth=2,
                label=f"PR curve (AP {ap:.3f})")
        a1.axhline(y.mean(), color="#888", linestyle=":", label=f"chance (prevalence {y.mean():.2f})")
        a2.plot(fpr, tpr, color="#1f77b4", linewidth=2, label=f"ROC (AUC {auc:.3f})")
        a2.plot([0, 1], [0, 1], color="#888", linestyle=":", label="chance")
        for label, p, r, f, st in points:
            kw = dict(st, linestyle="none", markersize=st.get("markersize", 8))
            a1.plot([r], [p], label=label, **kw)
            a2.plot([f], [r], label=label, **kw)
        a1.set(xlabel=f"recall of '{name}'", ylabel="precision", title=f"Precision-recall: rare class '{name}'")
        a2.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC curve")
        for a in (a1, a2):
            a.set_xlim(-0.02, 1.02)
            a.set_ylim(-0.02, 1.05)
            a.set_aspect("equal")
            a.legend(loc="lower left" if a is a1 else "lower right")
    return fig


def _rebuild_test_split(rf: RunView, notes: list):
    """The test split the predictions index into, or None (with a note) if it cannot be trusted."""
    from .data.build import build_split

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


def _thumbnail(samples, item_index: int, size: int = 160) -> np.ndarray:
    from PIL import Image

    from .data.images import open_image

    item = samples.items[item_index]
    img = Image.fromarray(np.asarray(item)) if samples.in_memory else open_image(item, draft_size=size)
    img = img.convert("RGB")
    img.thumbnail((size, size))
    return np.asarray(img)


def fig_samples(rf: RunView, notes: list):
    samples = _rebuild_test_split(rf, notes)
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
                ax.imshow(_thumbnail(samples, int(index[i])), interpolation="nearest" if samples.in_memory else "antialiased")
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


def fig_grad_ratio(rf: RunView, notes: list):
    recs = [r for r in rf.log if isinstance(r.get("grad_ratio"), list)]
    if not recs:
        if rf.log:
            notes.append("gradient ratio: log.jsonl has no grad_ratio")
        return None
    ratio = np.asarray(recs[-1]["grad_ratio"], dtype=np.float64)
    counts = rf.train_counts
    if ratio.shape != counts.shape:
        notes.append("gradient ratio: class count differs from metrics.json")
        return None
    order = np.argsort(-counts, kind="stable")
    groups = rf.group_of()
    C = len(order)
    small = C <= MANY_CLASSES
    with _style():
        fig = _figure(max(7.0, min(12.0, 0.45 * C + 3)) if small else 10.0, 4.8)
        ax = fig.add_subplot()
        ax.bar(np.arange(C), ratio[order], width=0.8 if small else 1.0, zorder=3,
               color=[GROUP_COLOURS.get(groups[c], GROUP_COLOURS[None]) for c in order])
        ax.axhline(1.0, color="#555", linestyle=":", linewidth=1.2, label="balanced (ratio 1)")
        ax2 = ax.twinx()
        ax2.plot(np.arange(C), np.maximum(counts[order], 1), color="#333", linewidth=1.2, marker="." if small else None,
                 label="training images (right axis)")
        ax2.set_yscale("log")
        _log_ticks(ax2.yaxis)
        ax2.set_ylabel("training images (log)")
        ax2.grid(False)
        ax2.spines["right"].set_visible(True)
        if small:
            ax.set_xticks(np.arange(C), [_short(rf.classnames[c], 16) for c in order], rotation=45, ha="right",
                          rotation_mode="anchor", fontsize=8)
            ax.set_xlabel("class (most training images first)")
        else:
            ax.set_xlabel("class rank by training images (most first)")
        ax.set_xlim(-0.7, C - 0.3)
        ax.set_ylabel("positive / negative gradient")
        ax.set_title(f"Accumulated positive/negative gradient ratio per class (epoch {recs[-1]['epoch']})")
        ax.grid(axis="x", visible=False)
        from matplotlib.patches import Patch

        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        present = [g for g in GROUP_NAMES if g in groups]
        hg = [Patch(color=GROUP_COLOURS[g], label=g) for g in present]
        fig.legend(hg + h1 + h2, [g for g in present] + l1 + l2, loc="outside lower center", ncol=len(hg) + 2)
        top = np.nanmax(ratio) if np.isfinite(ratio).any() else 1.0
        ax.set_ylim(0, max(1.1, top) * 1.08)
    return fig


FIGURES: list[tuple[str, str, Callable]] = [
    ("per_class_accuracy.png", "Per-class accuracy against training images", fig_per_class_accuracy),
    ("groups.png", "Many / medium / few", fig_groups),
    ("confusion.png", "Confusion matrix", fig_confusion),
    ("pr_roc.png", "Rare class: precision-recall and ROC", fig_pr_roc),
    ("training_curves.png", "Training curves", fig_training_curves),
    ("eval_curves.png", "Accuracy per epoch", fig_eval_curves),
    ("grad_ratio.png", "Gradient balance per class", fig_grad_ratio),
    ("samples.png", "Test images", fig_samples),
]

CAPTIONS = {
    "per_class_accuracy.png": "Each dot is a class: its test accuracy against its number of training images (log "
    "scale). Shaded bands are the many / medium / few groups; dashed lines are each group's mean.",
    "groups.png": "Mean per-class accuracy over all classes and within each shot group; the dotted line is the "
    "instance (per-image) accuracy.",
    "confusion.png": "Each row is a true class and sums to 1; classes sorted by training images, most first, so "
    "tail classes swallowed by head classes show up below the diagonal, on the left.",
    "pr_roc.png": "Scores are the predicted probability of the rare class; markers show the operating points.",
    "training_curves.png": "Mean training loss per epoch and the learning rate at the end of each epoch.",
    "eval_curves.png": "Accuracy of each shot group on the evaluation split after each evaluated epoch.",
    "grad_ratio.png": "Accumulated positive over negative gradient on each class's logit during training. Tail "
    "classes with a ratio far below 1 are being pushed down by the negatives of head classes (what seesaw "
    "loss counters).",
    "samples.png": "True and predicted labels with the predicted class's probability; red frames are mistakes.",
}


def run_figures(rf: RunView, notes: Optional[list] = None, only: Optional[Sequence[str]] = None) -> dict:
    """``{file name: Figure}`` for every figure the run supports; each failure becomes a note."""
    notes = rf.notes if notes is None else notes
    out = {}
    for fname, title, fn in FIGURES:
        if only is not None and fname not in only:
            continue
        try:
            fig = fn(rf, notes)
        except TinltError as e:
            notes.append(f"{title}: {e}")
            continue
        except Exception as e:  # a figure must never cost the report
            notes.append(f"{title}: not drawn ({type(e).__name__}: {e})")
            continue
        if fig is not None:
            out[fname] = fig
    return out


# --------------------------------------------------------------------------- the report page


def _headline_rows(m: dict) -> list[tuple[str, str]]:
    sizes = m.get("group_sizes") or {}
    rows = [("overall", pct(m.get("overall"), 2)), ("many", pct(m.get("many"), 2)),
            ("medium", pct(m.get("medium"), 2)), ("few", pct(m.get("few"), 2)),
            ("instance", pct(m.get("instance_acc"), 2))]
    labels = []
    for name, v in rows:
        n = sizes.get(name)
        labels.append((f"{name} ({n})" if n is not None else name, v))
    return labels


def _binary_rows(m: dict) -> list[tuple[str, str]]:
    b = m.get("binary")
    if not isinstance(b, dict):
        return []

    def f(v):
        return "\u2013" if v is None else f"{v:.3f}"

    return [("rare class", str(b.get("positive_name"))), ("precision", f(b.get("precision"))),
            ("recall", f(b.get("recall"))), ("F1", f(b.get("f1"))), ("ROC-AUC", f(b.get("auc")))]


def operating_rows(rf: RunView) -> list[list[str]]:
    """Rows (decision rule, precision, recall with its 95% interval, false-positive rate,
    expected precision at the training prevalence) for argmax and the calibrated threshold."""
    def f(v):
        return "\u2013" if v is None else f"{v:.3f}"

    def row(label, b):
        ci = b.get("recall_ci95")
        rec = f(b.get("recall")) + (f" ({ci[0]:.2f}\u2013{ci[1]:.2f})" if ci else "")
        return [label, f(b.get("precision")), rec, f(b.get("fpr")), f(b.get("precision_at_train_prevalence"))]

    op = operating_point(rf)
    source = op if op else rf.metrics
    rows = [row("argmax", source["binary"])] if isinstance(source.get("binary"), dict) else []
    if op:
        rows.insert(0, row(f"threshold {op['at_threshold']['threshold']:.4g} (calibrated)", op["at_threshold"]["binary"]))
    return rows


OPERATING_HEAD = ["decision", "precision", "recall (95% CI)", "false-positive rate", "precision at training prevalence"]


def mistakes(rf: RunView, k: int = 12) -> list[dict]:
    """The ``k`` test images the model was surest about and wrong on (predictions.csv)."""
    import csv

    path = rf.path / PREDICTIONS
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = []
    for r in rows:
        if r.get("correct") == "1":
            continue
        p_pred = float(r.get(f"p_{r['predicted']}", r.get("confidence", "nan")) or "nan")
        p_true = r.get(f"p_{r['true']}")
        wrong.append({**r, "p_pred": p_pred, "p_true": float(p_true) if p_true not in (None, "") else None})
    return sorted(wrong, key=lambda r: -r["p_pred"])[:k]


def _thumb_uri(rf: RunView, item: dict, samples) -> str:
    """A small inline PNG of a mistake's image ("" when it cannot be read)."""
    import base64
    import io

    from PIL import Image

    try:
        if "#" in item["path"] and samples is not None:
            arr = _thumbnail(samples, int(item["index"]), size=96)
        else:
            from .data.images import open_image

            img = open_image(item["path"], draft_size=96).convert("RGB")
            img.thumbnail((96, 96))
            arr = np.asarray(img)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a moved file leaves the thumbnail out, not the report
        return ""


def _summary_line(rf: RunView) -> list[tuple[str, str]]:
    cfg = rf.config
    items = [("folder", str(rf.path.resolve()))]
    if cfg is not None:
        items += [("model", str(cfg.model.name)), ("head", str(cfg.model.head)), ("loss", str(cfg.loss.name)),
                  ("epochs", str(cfg.optim.epochs))]
    items.append(("classes", str(len(rf.per_class))))
    items.append(("test images", str(rf.metrics.get("num_samples", "?"))))
    if rf.run.get("train_images") is not None:
        items.append(("training images", str(rf.run["train_images"])))
    if rf.metrics.get("train_time_s") is not None:
        items.append(("training time", f"{rf.metrics['train_time_s'] / 60:.1f} min"))
    if rf.run.get("device"):
        items.append(("device", f"{rf.run['device']} x{rf.run.get('world_size', 1)}"))
    return items


def _confusion_rows(rf: RunView, k: int = 10) -> list[tuple[str, str, int, str]]:
    from .metrics import top_confusions

    test_counts = {str(r["name"]): int(r["test_count"]) for r in rf.per_class}
    rows = []
    for true, predicted, n in top_confusions(rf.metrics["confusion"], rf.classnames, k=k):
        share = f"{100 * n / test_counts[true]:.0f}%" if test_counts.get(true) else "\u2013"
        rows.append((true, predicted, n, share))
    return rows


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.2em;color:#222;line-height:1.45;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;
padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{padding:.3em .8em;border-bottom:1px solid #e4e4e4;
text-align:left}
th{background:#f5f5f5}table.headline td,table.headline th{text-align:center;font-size:1.1em}
table.headline td:first-child{font-weight:bold}.meta{color:#555;font-size:.92em}
.meta span{margin-right:1.2em;white-space:nowrap}figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em;
max-width:900px}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em;border:1px solid #e4e4e4}
.notes li{color:#8a5a00}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta span{display:inline-block;max-width:100%;overflow-wrap:anywhere}
table{display:block;max-width:100%;overflow-x:auto}td.file{overflow-wrap:anywhere;max-width:420px}
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table_md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _versions(rf: RunView) -> list[tuple[str, str]]:
    v = rf.run.get("versions")
    return [(str(k), str(x)) for k, x in v.items()] if isinstance(v, dict) else []


def _command(rf: RunView) -> str:
    cmd = rf.run.get("command")
    if isinstance(cmd, list):
        import shlex

        return " ".join(shlex.quote(str(c)) for c in cmd)
    return str(cmd) if cmd else ""


def _write_html(rf: RunView, out: Path, figures: list[tuple[str, str]], notes: list) -> Path:
    e = html.escape
    m = rf.metrics
    head = _headline_rows(m)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>tinlt report: {e(rf.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>tinlt report: {e(rf.name)}</h1>",
        '<p class="meta">' + "".join(f"<span><b>{e(k)}</b> {e(v)}</span>" for k, v in _summary_line(rf)) + "</p>",
        "<p>Mean per-class accuracy (%) on the test split; group sizes (classes) in brackets.</p>",
        table_html([h for h, _ in head], [[v for _, v in head]], "headline"),
    ]
    binary = _binary_rows(m)
    if binary:
        parts.append(table_html([h for h, _ in binary], [[v for _, v in binary]], "headline"))
        parts.append("<h2>Operating point</h2>")
        parts.append(table_html(OPERATING_HEAD, operating_rows(rf)))
        if operating_point(rf) is None:
            parts.append("<p class=\"meta\">No calibrated threshold evaluated for this run: tinlt calibrate, then "
                         "tinlt eval --checkpoint RUN/eval/calibrated.pt. Precision depends on how common the rare "
                         "class is: the last column is what the same recall and false-positive rate give at the "
                         "training split's share.</p>")
    wrong = mistakes(rf)
    if wrong:
        samples = _rebuild_test_split(rf, []) if any("#" in w["path"] for w in wrong) else None
        parts.append("<h2>Most confident mistakes</h2><table class=\"mistakes\"><tr><th></th><th>file</th>"
                     "<th>true</th><th>predicted</th><th>P(predicted)</th><th>P(true)</th></tr>")
        for w in wrong:
            uri = _thumb_uri(rf, w, samples)
            img = f'<img src="{uri}" alt="" width="64">' if uri else ""
            pt = "\u2013" if w["p_true"] is None else f"{w['p_true']:.3f}"
            parts.append(f"<tr><td>{img}</td><td class=\"file\">{e(w['path'])}</td><td>{e(w['true'])}</td>"
                         f"<td>{e(w['predicted'])}</td><td>{w['p_pred']:.3f}</td><td>{pt}</td></tr>")
        parts.append("</table>")
    for fname, title in figures:
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(f'<figure><img src="{e(fname)}" alt="{e(title)}"><figcaption>{e(CAPTIONS.get(fname, ""))}'
                     f"</figcaption></figure>")
        if fname == "confusion.png":
            rows = _confusion_rows(rf)
            if rows:
                parts.append("<h3>Most frequent confusions</h3>")
                parts.append(table_html(["true class", "predicted as", "images", "share of true class"], rows))
    if notes:
        parts.append("<h2>Not shown</h2><ul class=\"notes\">" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<pre>{e(rf.config_text)}</pre>" if rf.config_text else "<p>No config.yaml in this folder.</p>")
    vers = _versions(rf)
    if vers:
        parts.append("<h2>Versions</h2>" + table_html(["package", "version"], vers))
    cmd = _command(rf)
    if cmd:
        parts.append(f"<h2>Command</h2><pre>{e(cmd)}</pre>")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f'<p class="meta">Written by tinlt report on {stamp}.</p></body></html>')
    return fileio.write_text(out / "index.html", "\n".join(parts))


def _write_markdown(rf: RunView, out: Path, figures: list[tuple[str, str]], notes: list) -> Path:
    m = rf.metrics
    head = _headline_rows(m)
    lines = [f"# tinlt report: {rf.name}", "", " | ".join(f"**{k}** {v}" for k, v in _summary_line(rf)), "",
             "Mean per-class accuracy (%) on the test split; group sizes (classes) in brackets.", "",
             table_md([h for h, _ in head], [[v for _, v in head]]), ""]
    binary = _binary_rows(m)
    if binary:
        lines += [table_md([h for h, _ in binary], [[v for _, v in binary]]), "", "## Operating point", "",
                  table_md(OPERATING_HEAD, operating_rows(rf)), ""]
    wrong = mistakes(rf)
    if wrong:
        lines += ["## Most confident mistakes", "",
                  table_md(["file", "true", "predicted", "P(predicted)"],
                            [[w["path"], w["true"], w["predicted"], f"{w['p_pred']:.3f}"] for w in wrong]), ""]
    for fname, title in figures:
        lines += [f"## {title}", "", f"![{title}]({fname})", "", CAPTIONS.get(fname, ""), ""]
        if fname == "confusion.png":
            rows = _confusion_rows(rf)
            if rows:
                lines += ["### Most frequent confusions", "",
                          table_md(["true class", "predicted as", "images", "share of true class"], rows), ""]
    if notes:
        lines += ["## Not shown", ""] + [f"- {n}" for n in notes] + [""]
    if rf.config_text:
        lines += ["## Configuration", "", "```yaml", rf.config_text.rstrip(), "```", ""]
    vers = _versions(rf)
    if vers:
        lines += ["## Versions", "", table_md(["package", "version"], vers), ""]
    cmd = _command(rf)
    if cmd:
        lines += ["## Command", "", "```", cmd, "```", ""]
    return fileio.write_text(out / "report.md", "\n".join(lines))


def build_report(run_dir: str | os.PathLike, out: Optional[str | os.PathLike] = None) -> Path:
    """Write figures, ``index.html`` and ``report.md`` for a run folder; returns the report folder.

    ``out`` defaults to ``RUN_DIR/report``. Raises TinltError only when the folder has no
    usable ``metrics.json``; anything else missing leaves out a figure, with a note on the page.
    """
    rf = load_run(run_dir)
    dest = Path(out) if out is not None else rf.path / REPORT_DIR
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinltError(f"{dest}: cannot create the report folder ({e.strerror})") from None
    for stale in FIGURE_FILES:
        (dest / stale).unlink(missing_ok=True)
    notes = list(rf.notes)
    figs = run_figures(rf, notes)
    written: list[tuple[str, str]] = []
    titles = {f: t for f, t, _ in FIGURES}
    for fname, fig in figs.items():
        try:
            save_figure(fig, dest / fname)
            written.append((fname, titles[fname]))
        except Exception as e:
            notes.append(f"{titles[fname]}: could not be saved ({type(e).__name__}: {e})")
    _write_html(rf, dest, written, notes)
    _write_markdown(rf, dest, written, notes)
    return dest


def refresh_report(run_dir: str | os.PathLike, *, quiet: bool = False) -> Optional[Path]:
    """Rebuild a run's existing report (e.g. after ``tinlt calibrate``); None when it has none."""
    from .engine.progress import echo

    run_dir = Path(run_dir)
    if not ((run_dir / REPORT_DIR).is_dir() and (run_dir / METRICS).is_file()):
        return None
    try:
        return build_report(run_dir)
    except TinltError as e:
        echo(f"report not refreshed ({e})", quiet=quiet)
        return None


# --------------------------------------------------------------------------- training hooks

# figures that need only run.json + log.jsonl (drawn every epoch) and those that need metrics.json (at the end)
EPOCH_FIGURES = ("grad_ratio.png", "eval_curves.png")
FINAL_FIGURES = ("per_class_accuracy.png", "groups.png", "confusion.png", "pr_roc.png")


def _figure_to_rgb(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class ReportHook:
    """A training hook (engine/hooks.py): the report's figures in TensorBoard every epoch
    (``train.tensorboard``) and the report folder when training ends (``train.report``)."""

    def __init__(self, *, figures: bool, report: bool) -> None:
        self.figures, self.report = figures, report

    def _log_figures(self, ctx, final: bool) -> None:
        try:  # a figure must never stop training
            rf, only = (load_run(ctx.run.path), EPOCH_FIGURES + FINAL_FIGURES) if final else \
                (training_run(ctx.run.path), EPOCH_FIGURES)
            if rf is not None:
                figs = run_figures(rf, notes=[], only=only)
                ctx.logger.log_images(ctx.epoch, {Path(n).stem: _figure_to_rgb(f) for n, f in figs.items()})
        except Exception as e:  # noqa: BLE001
            from .engine.progress import echo

            echo(f"tensorboard: figures skipped ({type(e).__name__}: {e})")

    def on_epoch_end(self, ctx) -> None:
        if self.figures:
            self._log_figures(ctx, final=False)

    def on_finish(self, ctx) -> None:
        from .engine.progress import echo

        if self.figures:
            self._log_figures(ctx, final=True)
        if self.report:
            try:  # figures and pages for people: a failure here must never lose the run
                echo(f"report: {build_report(ctx.run.path) / 'index.html'}")
            except Exception as e:  # noqa: BLE001
                print(f"tinlt: warning: report not written ({type(e).__name__}: {e})", file=sys.stderr)


def training_hooks(cfg) -> list:
    """The hooks ``tinlt train``, ``demo`` and ``sweep`` attach to a run of ``cfg``."""
    figures, report = bool(cfg.train.get("tensorboard", False)), bool(cfg.train.get("report", True))
    return [ReportHook(figures=figures, report=report)] if (figures or report) else []


# --------------------------------------------------------------------------- comparing runs


def fig_compare(runs: Sequence[RunView], names: Sequence[str]):
    from matplotlib.lines import Line2D

    all_counts = np.concatenate([np.maximum(r.train_counts, 1) for r in runs])
    with _style():
        fig = _figure(9.0, 5.2)
        ax = fig.add_subplot()
        _count_axis(ax, all_counts)
        handles = []
        for i, (rf, name) in enumerate(zip(runs, names)):
            colour = RUN_COLOURS[i % len(RUN_COLOURS)]
            x, acc = np.maximum(rf.train_counts, 1).astype(float), rf.accuracy
            ok = ~np.isnan(acc)
            if not ok.any():
                continue
            many = len(x) > MANY_CLASSES
            ax.scatter(x[ok], acc[ok], s=12 if many else 40, color=colour, alpha=0.35 if many else 0.85,
                       edgecolor="none" if many else "white", zorder=3)
            if many:
                bx, by = _binned_mean(x[ok], acc[ok])
            else:  # classes with the same count share one point: their mean
                bx = np.unique(x[ok])
                by = np.array([acc[ok][x[ok] == v].mean() for v in bx])
            ax.plot(bx, by, color=colour, linewidth=2, zorder=4)
            handles.append(Line2D([], [], color=colour, marker="o", linewidth=2,
                                  label=f"{_short(name, 40)} (overall {pct(rf.metrics.get('overall'))})"))
        ax.set_ylim(-3, 105)
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("test accuracy of the class (%)")
        ax.set_title("Per-class accuracy vs training count")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
