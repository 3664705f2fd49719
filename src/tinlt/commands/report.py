"""``tinlt report`` and ``tinlt compare``: figures and pages for people, from run folders.

Thin shells over :func:`tinlt.report.build_report` and :func:`tinlt.compare.compare_runs`;
matplotlib is imported only when one of them runs.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> dict:
    p = subparsers.add_parser(
        "report",
        help="figures + stand-alone HTML and Markdown report of a run, eval or sweep folder",
        description="Write RUN_DIR/report/ (or --out): PNG figures, index.html and report.md. A sweep folder "
        "(results.csv, or one sub-folder per data set) gets the grid's page: its tables and figures.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder holding metrics.json (a training or eval run), or "
                   "a sweep folder")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")

    p = subparsers.add_parser(
        "compare",
        help="several runs side by side: accuracy, rare-class metrics, seed mean ± std, config diff",
        description="Write index.html, compare.md, compare.csv and per_class_accuracy.png for the given runs.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default: compare/ in the runs' common parent)")
    return {"report": _cmd_report, "compare": _cmd_compare}


def _cmd_report(a) -> int:
    from pathlib import Path

    from ..engine.run_folder import RunFolder
    from ..fit.outputs import PAGE
    from ..fit.plan import ENSEMBLE_DIR, MODEL_DIR
    from ..fit.run import FIT_JSON
    from ..report import build_report
    from ..report.sweep_page import RESULTS, build_sweep_report

    folder = Path(a.run_dir)
    run = RunFolder(folder)
    if (folder / FIT_JSON).is_file():  # a fit folder: its page is written by fit; the report is the model's
        print(f"fit: {folder / PAGE}")
        from ..fileio import read_json

        rec = read_json(folder / FIT_JSON)
        name = Path(str(rec.get("model") or "")).name if isinstance(rec, dict) else ""
        name = name if name in (MODEL_DIR, ENSEMBLE_DIR) else MODEL_DIR  # the two folders fit writes, nothing else
        folder, run = folder / name, RunFolder(folder / name)
    if run.metrics_path.is_file() and (run.read_metrics() or {}).get("split", "test") is None:
        scored = RunFolder(run.eval_dir)
        if not scored.metrics_path.is_file():  # a model trained blind: nothing scored yet
            from ..errors import TinltError

            raise TinltError(f"{folder}: nothing scored yet; run tinlt eval --checkpoint {folder} first")
        folder, run = scored.path, scored
    is_sweep = not run.metrics_path.is_file() and (
        (folder / RESULTS).is_file() or any(folder.glob(f"*/{RESULTS}")))
    dest = build_sweep_report(folder, out=a.out) if is_sweep else build_report(folder, out=a.out)
    print(f"report: {dest / 'index.html'}")
    return 0


def _cmd_compare(a) -> int:
    from ..compare import compare_runs

    dest = compare_runs(a.run_dirs, out=a.out)
    print((dest / "compare.md").read_text().split("\n![", 1)[0].split("\n## ", 1)[0].rstrip())
    print(f"\ncompare: {dest / 'index.html'}, {dest / 'compare.md'}, {dest / 'compare.csv'}")
    return 0
