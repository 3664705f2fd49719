"""``tinlt benchmark``: the benchmark protocol (docs/benchmark.md), both data sets, one command.

Runs the two bundled grids (``grids/benchmark_fmnist_lt``, ``grids/benchmark_fmnist_clamp``)
through :mod:`tinlt.sweep` (finished cells are reused, interrupted ones resume) and writes
``OUT/benchmark.md``: per data set, one table (mean ± std over the seeds, each row's wall
time) and two figures:

* per-class test accuracy against training images for the best TIN row and the strongest
  baseline, both picked by their mean **validation** score (the test columns play no part
  in any choice);
* the trade-off between many-shot and few-shot accuracy across all rows (mean ± std).

A row counts as TIN when its cell name starts with ``tin``; every other row is a baseline.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import fileio
from .engine.run_folder import METRICS
from .errors import TinltError

GRIDS = {"fmnist_lt": "grids/benchmark_fmnist_lt", "fmnist_clamp": "grids/benchmark_fmnist_clamp"}
TITLES = {"fmnist_lt": "Fashion-MNIST-LT", "fmnist_clamp": "clamp-like (Shirt vs T-shirt, 41:1)"}


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def pick(rows: list[dict], tin: bool) -> Optional[tuple[str, list[dict]]]:
    """The TIN (or baseline) group with the best mean validation score; None if none has one."""
    from .sweep import grouped

    scored = [(g, rs) for g, rs in grouped(rows) if g.startswith("tin") == tin and _mean(r["val_overall"] for r in rs)
              is not None]
    return max(scored, key=lambda gr: _mean(r["val_overall"] for r in gr[1])) if scored else None


def _per_class(runs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train counts, mean test accuracy per class over the seeds, class names)."""
    import json

    per = [json.loads((Path(r["run"]) / METRICS).read_text())["per_class"] for r in runs]
    counts = np.array([c["train_count"] for c in per[0]], dtype=float)
    acc = np.array([[c["accuracy"] if c["accuracy"] is not None else np.nan for c in p] for p in per]).mean(0)
    return counts, acc, [c["name"] for c in per[0]]


def figures(key: str, rows: list[dict], out: Path) -> list[str]:
    """The two figures of one data set (see the module doc); their file names."""
    from .plots import figure, save_figure, style
    from .sweep import grouped

    written = []
    best_tin, best_base = pick(rows, tin=True), pick(rows, tin=False)
    if best_tin and best_base:
        with style():
            fig = figure(6.4, 4.0)
        ax = fig.subplots()
        for (group, rs), colour in ((best_base, "#d62728"), (best_tin, "#1f77b4")):
            done = [r for r in rs if r["status"] in ("done", "reused")]
            if not done:
                continue
            counts, acc, names = _per_class(done)
            ax.scatter(counts, acc, color=colour, label=f"{rs[0]['label']} ({len(done)} seeds)", zorder=3)
            for x, y, n in zip(counts, acc, names):
                ax.annotate(n, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points", color=colour)
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class (log)")
        ax.set_ylabel("test accuracy of the class (%), mean over seeds")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"{TITLES[key]}: best TIN vs strongest baseline (both chosen on val)", fontsize=9)
        name = f"{key}_per_class_best.png"
        save_figure(fig, out / name)
        written.append(name)

    with style():
        fig = figure(6.4, 4.4)
    ax = fig.subplots()
    for group, rs in grouped(rows):
        many = [r["many"] for r in rs if r["many"] is not None]
        few = [r["few"] for r in rs if r["few"] is not None]
        if not many or not few:
            continue
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.errorbar(statistics.mean(many), statistics.mean(few), xerr=sd(many), yerr=sd(few), fmt="o",
                    color="#1f77b4" if group.startswith("tin") else "#7f7f7f", capsize=2)
        # the cell's short name: the long labels overlap where rows cluster (the table maps names to rows)
        ax.annotate(group, (statistics.mean(many), statistics.mean(few)), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("many-shot accuracy (%)" if key == "fmnist_lt" else "common-class accuracy (%)")
    ax.set_ylabel("few-shot accuracy (%)" if key == "fmnist_lt" else "rare-class accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{TITLES[key]}: many vs few per row\n(TIN in blue; mean ± std over seeds; names as in the grid)",
                 fontsize=9)
    name = f"{key}_many_vs_few.png"
    save_figure(fig, out / name)
    return written + [name]


def run_benchmark(out: str | Path = "runs/benchmark", only: Optional[Sequence[str]] = None, quiet: bool = False,
                  fresh: bool = False, dry_run: bool = False, seeds: Optional[Sequence[int]] = None,
                  log=print) -> Path:
    """Run (or reuse) both grids and write ``OUT/benchmark.md``; returns its path."""
    from .sweep import format_markdown, load_sweep, run_sweep

    out = Path(out)
    keys = list(only or GRIDS)
    for k in keys:
        if k not in GRIDS:
            raise TinltError(f"--only: no benchmark '{k}'; expected some of: {', '.join(GRIDS)}")
    parts = ["# tinlt benchmark", "",
             "Mean per-class accuracy (%) on the balanced test set, scored once per run; every choice made on "
             "the held-out validation split. Each row: mean ± std over the seeds.", ""]
    for key in keys:
        sweep = load_sweep(GRIDS[key], out=out / key)
        log(f"benchmark {key}: {len(sweep.cells)} runs -> {sweep.out}")
        rows = run_sweep(sweep, dry_run=dry_run, quiet=quiet, fresh=fresh, seeds=seeds, log=log)
        if dry_run:
            continue
        table = format_markdown(sweep, rows, compact=True).split("\n", 1)[1]
        names = figures(key, rows, out)
        best_tin, best_base = pick(rows, tin=True), pick(rows, tin=False)
        chosen = [f"- best TIN row (by val): {best_tin[1][0]['label']}" if best_tin else "",
                  f"- strongest baseline (by val): {best_base[1][0]['label']}" if best_base else ""]
        parts += [f"## {TITLES[key]}", table, *[c for c in chosen if c], "",
                  *[f"![{n}]({n})" for n in names], ""]
    path = fileio.write_text(out / "benchmark.md", "\n".join(parts) + "\n")
    return path
