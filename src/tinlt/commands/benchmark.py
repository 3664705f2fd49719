"""``tinlt benchmark``: the benchmark protocol on both data sets (see :mod:`tinlt.benchmark`)."""

from __future__ import annotations

import argparse

from .common import add_launch_args, launch_options


def register(subparsers) -> dict:
    p = subparsers.add_parser(
        "benchmark",
        help="the benchmark protocol: every row, 3 seeds, both data sets; writes OUT/benchmark.md",
        description="Runs grids/benchmark on both of its data sets (finished runs are reused, "
        "interrupted ones resume) and writes OUT/benchmark.md with the tables and figures.",
    )
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--only", default=None, help="comma-separated: fmnist_lt, fmnist_clamp")
    p.add_argument("--seeds", default=None,
                   help="comma-separated seeds to run now, e.g. 0 (the rest stay pending; rerun to add them)")
    p.add_argument("--dry-run", action="store_true", help="show what would run")
    p.add_argument("--fresh", action="store_true", help="retrain runs even when finished ones exist")
    p.add_argument("--quiet", "-q", action="store_true")
    add_launch_args(p)
    return {"benchmark": _cmd_benchmark}


def _cmd_benchmark(a: argparse.Namespace) -> int:
    from ..benchmark import run_benchmark
    from .sweep import parse_seeds

    only = [k.strip() for k in a.only.split(",") if k.strip()] if a.only else None
    path = run_benchmark(a.out, only=only, quiet=a.quiet, fresh=a.fresh, dry_run=a.dry_run,
                         seeds=parse_seeds(a.seeds), launch=launch_options(a))
    if not a.dry_run:
        print(f"benchmark: {path}")
    return 0
