"""Does a pool of workers finish a grid sooner, and does it change any cell's result?

One run, side by side: the benchmark grid's probe and cosine-head cells on Fashion-MNIST-LT
(``tinlt sweep -c grids/benchmark --dataset fmnist_lt --only ...``), each configuration into a
folder of its own, timed by wall clock:

  in-process    --workers 1: the sweep trains each cell in its own process, 2 threads (the default)
  1 worker      --workers 1 --threads 1: one ``tinlt train`` process at a time, 1 thread
  2 workers     --workers 2: two ``tinlt train`` processes at once, 1 thread each

Results per cell are compared: bit-identical between the two launched configurations (the
same thread count), and the largest difference to the in-process run (2 threads round
floats differently). The pool's start-up cost is measured as the wall of one process that
imports tinlt's trainer and exits. These cells train on cached features (seconds each), so
that cost is a large share of their wall: the gain shows where it does not eat it.

    python benchmarks/bench_launcher.py [--out /tmp/bench_launcher] [--seeds 0] [--cells probe_ce,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CELLS = ("probe_ce", "probe_la", "probe_posthoc", "probe_cb", "cosine_text_la")


def sweep(out: Path, cells: list[str], extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "tinlt", "sweep", "-c", "grids/benchmark", "--dataset", "fmnist_lt", "--out",
           str(out), "--only", ",".join(cells), "-q", *extra]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return wall


def results(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "fmnist_lt").glob("*/metrics.json")}


def startup_s() -> float:
    t0 = time.time()
    subprocess.run([sys.executable, "-c", "import tinlt.engine.trainer, tinlt.models.builtin"], check=True)
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/bench_launcher")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--cells", default=",".join(CELLS))
    a = ap.parse_args()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    cells = [f"{c}__seed{s}" for s in a.seeds.split(",") for c in a.cells.split(",")]
    # warm the feature cache once, so no configuration pays for building it
    sweep(out / "warm", cells[:1], [])
    runs = {
        "in-process (1 worker, 2 threads)": (out / "inproc", []),
        "1 worker process (1 thread)": (out / "one", ["--workers", "1", "--threads", "1"]),
        "2 worker processes (1 thread each)": (out / "two", ["--workers", "2"]),
    }
    walls = {name: sweep(folder, cells, extra) for name, (folder, extra) in runs.items()}
    res = {name: results(folder) for name, (folder, _) in runs.items()}
    inproc, one, two = (res[k] for k in runs)  # in the order of ``runs``
    same = sorted(one) == sorted(two) and all(one[c]["predictions"] == two[c]["predictions"] for c in one)
    labels = all(inproc[c]["predictions"]["pred"] == two[c]["predictions"]["pred"] for c in two)
    diff = max(abs(inproc[c]["overall"] - two[c]["overall"]) for c in two)
    score = max(max(abs(x - y) for rx, ry in zip(inproc[c]["predictions"]["scores"], two[c]["predictions"]["scores"])
                    for x, y in zip(rx, ry)) for c in two)
    start = startup_s()
    base = walls["in-process (1 worker, 2 threads)"]
    print(f"{len(cells)} cells: {', '.join(cells)}")
    print(f"{'configuration':<38} {'wall':>8} {'vs in-process':>14}")
    for name, w in walls.items():
        print(f"{name:<38} {w:7.1f}s {base / w:13.2f}x")
    print(f"2 workers vs 1 worker process: {walls['1 worker process (1 thread)'] / walls['2 worker processes (1 thread each)']:.2f}x")
    print(f"per-cell results, 1 vs 2 worker processes (same threads): {'bit-identical' if same else 'DIFFER'}")
    print(f"in-process (2 threads) vs 2 workers (1 thread each): predicted labels "
          f"{'identical' if labels else 'DIFFER'}, largest |overall| difference {diff:.3f} points, "
          f"largest |score| difference {score:.2e}")
    print(f"process start-up (python + tinlt trainer imports): {start:.1f}s per cell; "
          f"{start * len(cells):.0f}s of the launched runs' walls")


if __name__ == "__main__":
    main()
