"""The local pool on one GPU: do two workers sharing it finish a grid sooner than one?

Needs a CUDA GPU (it says so and exits otherwise). One run, side by side: a small grid of
TIN runs (open_clip ViT-B-32 architecture, random weights: nothing to download; generated
long-tailed JPEG images; bf16; 224 px) swept twice through ``tinlt sweep``:

  1 worker     --gpus 0              one ``tinlt train`` process at a time
  2 workers    --gpus 0 --workers 2  two processes sharing GPU 0

Prints each configuration's wall, the throughput ratio (runs per minute), and the peak GPU
memory of each worker process (``nvidia-smi``, polled every 0.5 s), plus the largest
difference between the two configurations' per-run accuracies (GPU kernels need not be
bit-identical run to run).

    python benchmarks/gpu_launcher.py [--runs 4] [--epochs 2] [--images 2000] [--out /tmp/gpu_launcher]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


def make_data(root: Path, n: int, classes: int = 20) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    counts = [max(5, int(n / 4 * (0.02 ** (c / (classes - 1))))) for c in range(classes)]
    for split, per in (("train", counts), ("test", [20] * classes)):
        for c, k in enumerate(per):
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, 3)
            for i in range(k):
                arr = np.clip(base + rng.integers(-60, 60, (160, 200, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg", quality=90)


def watch_memory(stop: threading.Event, peaks: dict) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            for line in out.strip().splitlines():
                pid, mib = (x.strip() for x in line.split(","))
                peaks[pid] = max(peaks.get(pid, 0), int(mib))
        except Exception:  # noqa: BLE001 - a missed poll only loses a sample
            pass
        stop.wait(0.5)


def sweep(grid: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    peaks: dict = {}
    stop = threading.Event()
    t = threading.Thread(target=watch_memory, args=(stop, peaks), daemon=True)
    t.start()
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "tinlt", "sweep", "-c", str(grid), "--out", str(out), "-q", *extra],
                         capture_output=True, text=True)
    wall = time.time() - t0
    stop.set()
    t.join()
    print(res.stdout[-1500:])
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return wall, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/gpu_launcher")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_launcher: no CUDA GPU here; nothing measured")
        return
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    make_data(out / "data", a.images)
    (out / "base.yaml").write_text(
        "model: {name: ViT-B-32, pretrained: ''}\n"
        f"data: {{train: {{kind: folder, path: {out / 'data/train'}}}, test: {{kind: folder, path: {out / 'data/test'}}},"
        " image_size: 224, num_workers: 4}\n"
        f"optim: {{name: adamw, lr: 1.0e-4, batch_size: 64, epochs: {a.epochs}}}\n"
        "train: {eval_batch_size: 256, quiet: true, report: false, amp: bf16}\n")
    (out / "grid.yaml").write_text(f"base: base.yaml\nseeds: {list(range(a.runs))}\ncells:\n  - {{name: tin}}\n")
    walls, mems, overall = {}, {}, {}
    for name, extra in (("1 worker", ["--gpus", "0"]), ("2 workers", ["--gpus", "0", "--workers", "2"])):
        folder = out / name.replace(" ", "_")
        walls[name], peaks = sweep(out / "grid.yaml", folder, extra)
        mems[name] = sorted(peaks.values(), reverse=True)
        overall[name] = {p.parent.name: json.loads(p.read_text())["overall"] for p in folder.glob("*/metrics.json")}
    print(f"{a.runs} runs of ViT-B-32 (random weights), {a.epochs} epochs, {a.images} images, 224 px, bf16, batch 64")
    for name in walls:
        print(f"{name:<10} wall {walls[name]:7.1f}s  {a.runs / walls[name] * 60:6.2f} runs/min  "
              f"peak GPU memory per process (MiB): {mems[name][:4]}")
    print(f"throughput, 2 workers vs 1: {walls['1 worker'] / walls['2 workers']:.2f}x")
    diff = max(abs(overall["1 worker"][k] - overall["2 workers"][k]) for k in overall["1 worker"])
    print(f"largest per-run |overall| difference between the two: {diff:.2f} points")


if __name__ == "__main__":
    main()
