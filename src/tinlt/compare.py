"""``tinlt compare``: several runs side by side.

Owns :func:`compare_runs`: run (or eval) folders -> ``compare/`` holding ``compare.csv`` (one
row per run), ``compare.md`` and a stand-alone ``index.html`` (the same tables), and
``per_class_accuracy.png`` (every run's per-class accuracy against its training count).

What the pages show, beyond accuracy per group:

- two-class runs: the rare class's precision, recall and ROC-AUC at argmax, and at the
  calibrated threshold when the run has a current operating point
  (:func:`tinlt.report.operating_point`: an evaluation whose checkpoint bytes still match);
- runs whose configs differ only in their seeds are one group: a ``mean ± std`` row over them;
- a config diff: every key whose value is not the same in all runs.

Reads run folders through :mod:`tinlt.report` (``load_run``); writes nothing into them.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import fileio
from .errors import TinltError
from .names import csv_writer
from .plots import RUN_COLOURS, figure, save_figure, short, style
from .report import RunView, load_run, operating_point, pct, table_html, table_md
from .report.figures import MANY_CLASSES, binned_mean, count_axis
from .report.page import CSS
from .tables import mean_std

__all__ = ["compare_runs", "config_diff", "seed_groups", "COMPARE_COLUMNS"]

# keys that name a run's seed: runs differing only in these are repeats of one recipe
SEED_KEYS = ("train.seed", "data.val.seed")
# keys that differ between any two runs without changing what was trained
IGNORED_KEYS = ("train.output_dir", "train.quiet", "train.report", "train.tensorboard", "train.feature_cache",
                "data.num_workers", "train.eval_batch_size")

COMPARE_COLUMNS = ("run", "overall", "many", "medium", "few", "instance", "rare_precision", "rare_recall", "rare_auc",
                   "threshold", "precision_at_threshold", "recall_at_threshold", "train_time_min")
_PERCENT = ("overall", "many", "medium", "few", "instance")
_HEAD = {"overall": "overall", "many": "many", "medium": "medium", "few": "few", "instance": "instance",
         "rare_precision": "rare P", "rare_recall": "rare R", "rare_auc": "AUC", "threshold": "threshold",
         "precision_at_threshold": "P @ thr", "recall_at_threshold": "R @ thr", "train_time_min": "train time"}


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Shortest distinct trailing path parts, e.g. fmnist_lt/tin vs fmnist_clamp/tin."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _flat(cfg: Any) -> Optional[dict]:
    """A loaded config as ``{"optim.lr": 0.001, ...}`` (lists kept whole), or None."""
    if cfg is None:
        return None
    from omegaconf import OmegaConf

    out: dict = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def config_diff(runs: Sequence[RunView]) -> tuple[list[str], list[list[str]]]:
    """The keys whose values differ between runs, as (keys, one row of values per key).

    A run without a loadable config shows ``?``; keys a run lacks show ``(absent)``.
    """
    flats = [_flat(r.config) for r in runs]
    known = [f for f in flats if f is not None]
    keys = sorted({k for f in known for k in f if k not in IGNORED_KEYS})
    rows = []
    for k in keys:
        values = [f.get(k, "(absent)") for f in known]
        if all(v == values[0] for v in values):
            continue
        rows.append([k, *("?" if f is None else _show(f.get(k, "(absent)")) for f in flats)])
    return [r[0] for r in rows], rows


def _show(v: Any) -> str:
    return "null" if v is None else str(v)


def seed_groups(runs: Sequence[RunView]) -> list[list[int]]:
    """Indices of runs that are one recipe over several seeds (configs equal but for SEED_KEYS).

    Runs without a config are never grouped. Groups keep the order of first appearance.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        f = _flat(r.config)
        key = ("#", i) if f is None else tuple(sorted(
            (k, repr(v)) for k, v in f.items() if k not in SEED_KEYS and k not in IGNORED_KEYS))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _row(name: str, rf: RunView) -> dict:
    m = rf.metrics
    t = m.get("train_time_s")
    row: dict = {"run": name, "overall": m.get("overall"), "many": m.get("many"), "medium": m.get("medium"),
                 "few": m.get("few"), "instance": m.get("instance_acc"),
                 "train_time_min": None if t is None else round(float(t) / 60.0, 2)}
    b = m.get("binary")
    if isinstance(b, dict):
        row.update(rare_precision=b.get("precision"), rare_recall=b.get("recall"), rare_auc=b.get("auc"))
    op = operating_point(rf)
    if op:
        at = op["at_threshold"]
        row.update(threshold=at.get("threshold"), precision_at_threshold=at["binary"].get("precision"),
                   recall_at_threshold=at["binary"].get("recall"))
    return row


def _cell(key: str, v: Any) -> str:
    if v is None:
        return "\u2013"
    if key in _PERCENT:
        return pct(v, 2)
    if key == "train_time_min":
        return f"{v:.1f} min"
    if key == "threshold":
        return f"{v:.4g}"
    return f"{v:.3f}"


def _columns(rows: list[dict]) -> list[str]:
    """The columns any run has a value in (a table of multi-class runs has no rare-class columns)."""
    return [k for k in COMPARE_COLUMNS[1:] if any(r.get(k) is not None for r in rows)]


def _table(rows: list[dict], runs: Sequence[RunView]) -> tuple[list[str], list[list[str]]]:
    cols = _columns(rows)
    out = [[r["run"], *(_cell(k, r.get(k)) for k in cols)] for r in rows]
    for idx in seed_groups(runs):
        if len(idx) < 2:
            continue
        label = f"mean ± std of {', '.join(rows[i]['run'] for i in idx)}"
        vals = []
        for k in cols:
            xs = [rows[i].get(k) for i in idx]
            vals.append(mean_std(xs, digits=2 if k in _PERCENT or k == "train_time_min" else 3))
        out.append([label, *vals])
    return ["run", *(_HEAD[k] for k in cols)], out


def _write_csv(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(COMPARE_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k])
                    for k in COMPARE_COLUMNS])
    fileio.write_text(path, buf.getvalue())


def _default_out(paths: Sequence[Path]) -> Path:
    common = Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    if common in {p.resolve() for p in paths}:
        common = common.parent
    return common / "compare"


INTRO = ("Mean per-class accuracy (%) on each run's test split; rare P / R / AUC: the rare class's precision, "
         "recall and ROC-AUC at argmax; @ thr: at the run's calibrated threshold (tinlt calibrate, then tinlt eval).")


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: Optional[str | os.PathLike] = None) -> Path:
    """Write ``compare.csv``, ``compare.md``, ``index.html`` and ``per_class_accuracy.png``; returns the folder.

    ``out`` defaults to ``compare/`` in the runs' common parent folder.
    """
    if not run_dirs:
        raise TinltError("compare: name at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    dest = Path(out) if out is not None else _default_out([r.path for r in runs])
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TinltError(f"{dest}: cannot create the output folder ({e.strerror})") from None
    names = _unique_names([r.path for r in runs])
    rows = [_row(n, rf) for n, rf in zip(names, runs)]
    _write_csv(dest / "compare.csv", rows)
    head, table = _table(rows, runs)
    _keys, diff = config_diff(runs)
    no_config = [n for n, r in zip(names, runs) if r.config is None]
    fig = fig_compare(runs, names)
    if fig is not None:
        save_figure(fig, dest / "per_class_accuracy.png")

    md = ["# tinlt compare", "", INTRO, "", table_md(head, table), ""]
    if fig is not None:
        md += ["![per-class accuracy](per_class_accuracy.png)", ""]
    md += ["## Config differences", ""]
    md += [table_md(["key", *names], diff) if diff else "The runs' configs are identical.", ""]
    if no_config:
        md += [f"No config.yaml for {', '.join(no_config)} (shown as ?).", ""]
    md += ["## Runs", ""] + [f"- `{n}`: {rf.path.resolve()}" for n, rf in zip(names, runs)]
    fileio.write_text(dest / "compare.md", "\n".join(md) + "\n")

    e = html.escape
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>tinlt compare</title><style>{CSS}</style></head><body>", "<h1>tinlt compare</h1>",
            f"<p>{e(INTRO)}</p>", table_html(head, table)]
    if fig is not None:
        page.append('<figure><img src="per_class_accuracy.png" alt="per-class accuracy"></figure>')
    page.append("<h2>Config differences</h2>")
    page.append(table_html(["key", *names], diff) if diff else "<p>The runs' configs are identical.</p>")
    if no_config:
        page.append(f"<p class=\"meta\">No config.yaml for {e(', '.join(no_config))} (shown as ?).</p>")
    page.append("<h2>Runs</h2><ul>" + "".join(f"<li><b>{e(n)}</b> <span class=\"file\">{e(str(rf.path.resolve()))}"
                                             f"</span></li>" for n, rf in zip(names, runs)) + "</ul></body></html>")
    fileio.write_text(dest / "index.html", "\n".join(page))
    return dest


def fig_compare(runs: Sequence[RunView], names: Sequence[str]):
    from matplotlib.lines import Line2D

    all_counts = np.concatenate([np.maximum(r.train_counts, 1) for r in runs])
    with style():
        fig = figure(9.0, 5.2)
        ax = fig.add_subplot()
        count_axis(ax, all_counts)
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
                bx, by = binned_mean(x[ok], acc[ok])
            else:  # classes with the same count share one point: their mean
                bx = np.unique(x[ok])
                by = np.array([acc[ok][x[ok] == v].mean() for v in bx])
            ax.plot(bx, by, color=colour, linewidth=2, zorder=4)
            handles.append(Line2D([], [], color=colour, marker="o", linewidth=2,
                                  label=f"{short(name, 40)} (overall {pct(rf.metrics.get('overall'))})"))
        ax.set_ylim(-3, 105)
        ax.set_xlabel("training images of the class (log scale)")
        ax.set_ylabel("test accuracy of the class (%)")
        ax.set_title("Per-class accuracy vs training count")
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
