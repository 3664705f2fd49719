"""``tinlt demo``: the offline first run. TIN's best recipe vs the strongest baseline.

The demo trains two rows of the benchmark (:mod:`tinlt.benchmark`, docs/benchmark.md) at
seed 0, read from the benchmark's own grid and run through its sweep, so the two never drift
apart and share one reuse rule: TIN's best recipe and the baseline with the best mean
validation score over the benchmark's three seeds. Same pretrained towers that ship inside
pip packages (EfficientNet-Lite0 and all-MiniLM-L6-v2), same data, same held-out split. A
finished run is reused when its config is unchanged, so re-running the demo only prints the
table; ``--fresh`` retrains (after upgrading tinlt).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from . import fileio
from .engine.progress import echo
from .engine.run_folder import RunFolder
from .errors import TinltError

DEFAULT_FMNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# variant (a data set of grids/benchmark) -> (TIN row, baseline row): the cells the benchmark picked by val
VARIANTS = {
    "fmnist_lt": ("tin_best", "probe_posthoc"),
    "fmnist_clamp": ("tin_best", "ft_bs"),
}
DEMO_SEED = 0


def demo_sweep(variant: str, overrides: Sequence[str] = (), out: str = "runs/demo"):
    """The benchmark grid's sweep of ``variant``, its cells under ``out/variant/``."""
    from .benchmark import GRID
    from .sweep import load_sweep

    return load_sweep(GRID, out=Path(out), overrides=list(overrides), dataset=variant)


def demo_cells(variant: str, baseline: bool = True, overrides: Sequence[str] = (), out: str = "runs/demo"):
    """The benchmark cells (seed 0) the demo trains for ``variant``."""
    names = VARIANTS[variant]
    by_name = {c.name: c for c in demo_sweep(variant, overrides, out).cells}
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
        from .sweep import run_sweep

        sweep = demo_sweep(v, overrides, out)
        cells = demo_cells(v, baseline, overrides, out)
        echo(f"\n== {v}: {', '.join(c.label for c in cells)} -> {sweep.out}", quiet=quiet)
        results = {r["cell"]: r for r in run_sweep(sweep, only=[c.name for c in cells], quiet=quiet, fresh=fresh,
                                                   log=lambda m: echo(m, quiet=quiet), tables=False)}
        for cell in cells:
            m = RunFolder(cell.out).read_metrics()
            if m is None:
                raise TinltError(f"{cell.out}: the run did not finish ({results[cell.name]['status']})")
            rows.append((f"{v}: {cell.label}", m, float(m.get("train_time_s", 0.0))))
            if not (RunFolder(cell.out).report_dir / "index.html").is_file():
                _write_report(cell.out)
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
