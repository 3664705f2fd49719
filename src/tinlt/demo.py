"""``tinlt demo``: the offline first run. TIN vs a cross-entropy baseline on Fashion-MNIST-LT.

Both runs use the same pretrained towers that ship inside pip packages (EfficientNet-Lite0
and all-MiniLM-L6-v2), the same data and the same budget; only the head, the loss and
the visual attention differ. A finished run is reused when its config is unchanged, so
re-running the demo only prints the table; ``--fresh`` retrains (after upgrading tinlt).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional, Sequence

from . import fileio
from .config import load_config
from .engine.progress import echo
from .engine.run_folder import RunFolder, made_by
from .errors import TinltError

DEFAULT_FMNIST = "/usr/share/datasets/fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

VARIANTS = {
    "fmnist_lt": ("demo_fmnist_lt", "demo_fmnist_lt_baseline"),
    "fmnist_clamp": ("demo_fmnist_clamp", "demo_fmnist_clamp_baseline"),
}


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

    head = f"{'run':<40} {'overall':>7} {'many':>6} {'medium':>6} {'few':>6} {'inst.':>6} {'time':>7}"
    lines = [head, "-" * len(head)]
    for name, m, secs in rows:
        lines.append(
            f"{name:<40} {f(m['overall']):>7} {f(m['many']):>6} {f(m['medium']):>6} {f(m['few']):>6} "
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
        names = VARIANTS[v] if baseline else VARIANTS[v][:1]
        for cfg_name in names:
            label = "baseline (linear + CE)" if cfg_name.endswith("baseline") else "TIN (text + seesaw + attn)"
            run_dir = Path(out) / v / ("baseline" if cfg_name.endswith("baseline") else "tin")
            cfg = load_config(cfg_name, [*overrides, f"train.output_dir={run_dir}", f"train.quiet={quiet}"])
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
