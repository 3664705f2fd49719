"""``tinlt benchmark``: the benchmark protocol (docs/benchmark.md), both data sets, one command.

Runs the bundled grid ``grids/benchmark`` (one sweep per data set, through :mod:`tinlt.sweep`:
finished cells are reused, interrupted ones resume) and writes ``OUT/benchmark.md`` with each
data set's table (mean ± std over the seeds) and figures, drawn by the grid's report page
(:mod:`tinlt.report.sweep_page`): the best row of each ``kind`` (TIN, baseline) is picked by
its mean **validation** score; the test columns play no part in any choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from . import fileio
from .errors import TinltError

GRID = "grids/benchmark"


def run_benchmark(out: str | Path = "runs/benchmark", only: Optional[Sequence[str]] = None, quiet: bool = False,
                  fresh: bool = False, dry_run: bool = False, seeds: Optional[Sequence[int]] = None,
                  log=print, grid: str = GRID, launch=None) -> Path:
    """Run (or reuse) every data set's sweep and write ``OUT/benchmark.md``; returns its path."""
    from .report.sweep_page import pick, sweep_figures
    from .sweep import format_markdown, load_sweeps, run_sweep

    out = Path(out)
    sweeps = load_sweeps(grid, out=out)
    keys = [s.dataset for s in sweeps]
    for k in only or ():
        if k not in keys:
            raise TinltError(f"--only: no benchmark '{k}'; expected some of: {', '.join(keys)}")
    parts = ["# tinlt benchmark", "",
             "Mean per-class accuracy (%) on the balanced test set, scored once per run; every choice made on "
             "the held-out validation split. Each row: mean ± std over the seeds.", ""]
    for sweep in sweeps:
        if only and sweep.dataset not in only:
            continue
        log(f"benchmark {sweep.dataset}: {len(sweep.cells)} runs -> {sweep.out}")
        rows = run_sweep(sweep, dry_run=dry_run, quiet=quiet, fresh=fresh, seeds=seeds, log=log, launch=launch)
        if dry_run:
            continue
        table = format_markdown(sweep, rows, compact=True).split("\n", 1)[1]
        two = any(r.get("rare_recall") is not None for r in rows)
        names = sweep_figures(rows, out, sweep.title, f"{sweep.dataset}_", two_classes=two)
        chosen = [f"- best {kind} row (by val): {best[1][0]['label']}" for kind in ("tin", "baseline")
                  if (best := pick(rows, kind)) is not None]
        parts += [f"## {sweep.title}", table, *chosen, "", *[f"![{n}]({n})" for n in names], ""]
    return fileio.write_text(out / "benchmark.md", "\n".join(parts) + "\n")
