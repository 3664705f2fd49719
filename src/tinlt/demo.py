"""``tinlt demo``: the offline first run. TIN's best recipe vs the strongest baseline.

The demo trains two rows of the benchmark (:mod:`tinlt.benchmark`, docs/benchmark.md) at
seed 0, read from the benchmark's own grids so the two never drift apart: TIN's best recipe
and the baseline with the best mean validation score over the benchmark's three seeds. Same
pretrained towers that ship inside pip packages (EfficientNet-Lite0 and all-MiniLM-L6-v2),
same data, same held-out split. A finished run is reused when its config is unchanged, so
re-running the demo only prints the table; ``--fresh`` retrains (after upgrading tinlt).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

from . import fileio
from .engine.progress import echo
from .engine.run_folder import RunFolder, made_by
from .errors import TinltError

DEFAULT_FMNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# variant -> (benchmark grid, TIN row, baseline row): the cells the benchmark picked by val
VARIANTS = {
    "fmnist_lt": ("fmnist_lt", "tin_best", "probe_posthoc"),
    "fmnist_clamp": ("fmnist_clamp", "tin_best", "ft_bs"),
}
DEMO_SEED = 0


def demo_cells(variant: str, baseline: bool = True, overrides: Sequence[str] = (), out: str = "runs/demo"):
    """The benchmark cells (seed 0) the demo trains for ``variant``, output under ``out/variant/``."""
    from .benchmark import GRIDS
    from .sweep import load_sweep

    grid, *names = VARIANTS[variant]
    sweep = load_sweep(GRIDS[grid], out=Path(out) / variant, overrides=list(overrides))
    by_name = {c.name: c for c in sweep.cells}
    return [by_name[f"{n}__seed{DEMO_SEED}"] for n in (names if baseline else names[:1])]


def find_fashion_mnist(folder: Optional[str] = None) -> Path:
    cand = Path(folder or os.environ.get("TINLT_FMNIST") or DEFAULT_FMNIST)
    for sub in (cand, cand / "FashionMNIST" / "raw", cand / "raw"):
        if all((sub / f).is_file() or (sub / f"{f}.gz").is_file() for f in IDX_FILES):
            return sub
    raise TinltError(
        f"Fashion-MNIST not found in {cand}. Install it with: sudo apt-get install dataset-fashion-mnist "
        f"(or pass --data /folder/with/the/four/IDX/files)"
    )


def run_or_reuse(cfg, *, quiet: bool = False, fresh: bool = False) -> tuple[dict, float, bool]:
    """Train unless ``output_dir`` already holds finished metrics for this exact config
    (run_folder's reuse rule, as ``tinlt sweep``); ``fresh`` trains from scratch."""
    from .engine.trainer import train
    from .report import training_hooks

    run = RunFolder(cfg.train.output_dir)
    state = run.state(cfg, fresh=fresh)
    m = run.read_metrics() if state == "done" else None
    if m is not None:
        return m, float(m.get("train_time_s", 0.0)), True
    if state != "resume" and run.path.exists():
        run.clear()
    t0 = time.time()
    m = train(cfg, resume="auto" if state == "resume" else None, hooks=training_hooks(cfg))
    return m, time.time() - t0, False


def comparison_table(rows: Sequence[tuple[str, dict, float]]) -> str:
    def f(v):
        return "   -" if v is None else f"{v:5.1f}"

    w = max([40, *(len(name) for name, _, _ in rows)])
    head = f"{'run':<{w}} {'overall':>7} {'many':>6} {'medium':>6} {'few':>6} {'inst.':>6} {'time':>7}"
    lines = [head, "-" * len(head)]
    for name, m, secs in rows:
        lines.append(
            f"{name:<{w}} {f(m['overall']):>7} {f(m['many']):>6} {f(m['medium']):>6} {f(m['few']):>6} "
            f"{f(m['instance_acc']):>6} {secs / 60:6.1f}m"
        )
    return "\n".join(lines)


def run_demo(
    variant: str = "fmnist_lt",
    baseline: bool = True,
    out: str = "runs/demo",
    data: Optional[str] = None,
    overrides: Sequence[str] = (),
    quiet: bool = False,
    fresh: bool = False,
) -> list[tuple[str, dict, float]]:
    folder = find_fashion_mnist(data)
    os.environ["TINLT_FMNIST"] = str(folder)  # the demo configs read it
    variants = list(VARIANTS) if variant == "both" else [variant]
    rows: list[tuple[str, dict, float]] = []
    for v in variants:
        for cell in demo_cells(v, baseline, overrides, out):
            cfg, label, run_dir = cell.cfg, cell.label, cell.out
            cfg.train.quiet = quiet
            echo(f"\n== {v}: {label} -> {run_dir}", quiet=quiet)
            m, secs, reused = run_or_reuse(cfg, quiet=quiet, fresh=fresh)
            if reused:
                echo(f"   (reused finished run in {run_dir}, {made_by(m)})", quiet=quiet)
            rows.append((f"{v}: {label}", m, secs))
            if reused and not (RunFolder(run_dir).report_dir / "index.html").is_file():
                _write_report(run_dir)
    table = comparison_table(rows)
    summary = fileio.write_text(Path(out) / "summary.md",
                                "# tinlt demo\n\nMean per-class accuracy (%), balanced test set.\n\n```\n" + table + "\n```\n")
    print("\n" + table)
    print(f"\nreport: {summary}")
    return rows


def _write_report(run_dir: Path) -> None:
    """Training writes the report; a reused run from an older version may lack one."""
    from .report import build_report

    try:
        build_report(run_dir)
    except TinltError as e:
        echo(f"report skipped: {e}")
