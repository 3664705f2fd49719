"""``tinlt sweep``: run a grid of configs (ablations, method comparisons) into one results table.

Thin shell over :mod:`tinlt.sweep`; see that module (and docs/ablations.md) for the grid format.
"""

from __future__ import annotations

import argparse

from .common import add_launch_args, launch_options


def register(subparsers) -> dict:
    p = subparsers.add_parser(
        "sweep",
        help="run every cell of a grid file; writes OUT/results.md and OUT/results.csv",
        description="Run every cell of a grid file (one training run per cell, finished cells are reused, "
        "interrupted ones resume) and write OUT/results.md and OUT/results.csv.",
    )
    p.add_argument("--config", "-c", required=True, help="grid YAML file, or a bundled grid (e.g. grids/modules)")
    p.add_argument("--out", default=None, help="output folder (default: runs/sweeps/<grid name>)")
    p.add_argument("--dataset", default=None, metavar="KEY", help="a grid with data sets: run this one only")
    p.add_argument("--base", default=None, metavar="CONFIG",
                   help="run the grid on this config instead of its own base(s), e.g. your own data's my_run.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate every cell and show what would run")
    p.add_argument("--only", default=None, help="comma-separated cell names to run (the table lists all cells)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds to run, e.g. 0 (the table lists all)")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every cell (a cell's own overrides win)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--fresh", action="store_true",
                   help="retrain cells even when a finished run with the same config exists (after an upgrade)")
    add_launch_args(p)
    return {"sweep": _cmd_sweep}


def parse_seeds(text):
    """``--seeds 0,1`` -> [0, 1]; None when not given."""
    from ..errors import TinltError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TinltError(f"--seeds: expected comma-separated integers, got '{text}'") from None


def _cmd_sweep(a: argparse.Namespace) -> int:
    from ..sweep import format_markdown, load_sweeps, run_sweep

    sweeps = load_sweeps(a.config, out=a.out, overrides=a.overrides, base_override=a.base)
    if a.dataset is not None:
        from ..errors import TinltError, did_you_mean

        keys = [s.dataset for s in sweeps]
        if a.dataset not in keys:
            raise TinltError(f"--dataset {a.dataset!r}: the grid's data sets are {keys}{did_you_mean(a.dataset, keys)}")
        sweeps = [s for s in sweeps if s.dataset == a.dataset]
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    failed = []
    for sweep in sweeps:
        print(f"sweep {sweep.name}: {len(sweep.cells)} cells -> {sweep.out}")
        rows = run_sweep(sweep, dry_run=a.dry_run, only=only, quiet=a.quiet, fresh=a.fresh,
                         seeds=parse_seeds(a.seeds), launch=launch_options(a, sweep.launch))
        if not a.dry_run:
            print(format_markdown(sweep, rows))
            failed += [r["cell"] for r in rows if r["status"].startswith(("failed", "interrupted"))]
    if a.dry_run:
        return 0
    if failed:
        print(f"tinlt: {len(failed)} cell(s) failed: {', '.join(failed)}")
        return 1
    return 0
