"""The figures of one run: per-class accuracy against training count, shot groups, the
confusion matrix, training and evaluation curves, precision-recall / ROC of a two-class run,
the gradient ratio per class; :func:`run_figures` draws every one a run supports (in the
style of :mod:`tinlt.plots`). Each returns a Figure, or None with the reason in ``notes``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import TinltError
from ..plots import GROUP_COLOURS, figure as _figure, short as _short, style as _style
from .binary import fig_pr_roc
from .samples import fig_samples
from .view import GROUP_NAMES, RunView

MANY_CLASSES = 30  # above this: no class names on axes, small confusion heatmap + a list of top confusions

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
        from ..data.groups import resolve_mode

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


def binned_mean(x: np.ndarray, y: np.ndarray, bins: int = 12) -> tuple[np.ndarray, np.ndarray]:
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


def count_axis(ax, counts: np.ndarray) -> tuple[float, float]:
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
        lo, hi = count_axis(ax, x[ok])
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
            bx, by = binned_mean(x[ok], acc[ok])
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
