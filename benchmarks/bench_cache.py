"""How much faster is a training epoch on cached image-tower features than recomputing the frozen tower?

Owns one measurement, through the real trainer (``tinlt.engine.trainer.train``): the
ViT-B-32 architecture (random weights, frozen image and text towers, fp32 CPU, 2 threads)
trains on N generated JPEG images (320x240, decoded and resized to 224 px every time when
uncached) with ``data.augment: none``. An epoch is the trainer's loop over the training
loader (data loading + forward + backward + optimizer; evaluation is not part of it), timed
by wall clock and by the process's CPU time (``time.process_time``, all threads) from the
loader's first batch request to its end: the benchmark wraps the trainer's ``progress``
helper to see those two moments. The speed-up is computed from CPU time, because on a
machine shared with other jobs it depends little on their load; wall-clock ratios are
printed beside it. Variants:

  split      TIN with visual attention: the cache holds forward_split's output (the 7x7
             patch map + class token); attention and the last ViT block still run and
             back-propagate every step.
  embedding  visual attention off: the cache holds the pooled embedding; a step is the
             classifier only.

For each: one run without ``train.feature_cache`` and one with it (the cache is built
before the first epoch; its build time is printed separately). Both use the same seed,
so their losses must agree (printed). The process applies tinlt's malloc tuning
(``tinlt.runtime.tune_allocator``) first, as the CLI does.

    python benchmarks/bench_cache.py [--images 128] [--epochs 3] [--batch 32] [--kinds split,embedding]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int, classes: int = 8) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        # smooth random content compresses like a photo, not like noise
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)


class EpochClock:
    """A training hook (tinlt/engine/hooks.py): each epoch's training-pass times, and the
    feature cache's build times, as the trainer records them."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.build: list[float] = []

    def on_epoch_end(self, ctx) -> None:
        self.wall.append(ctx.record["time_s"])
        self.cpu.append(ctx.record["cpu_s"])

    def on_finish(self, ctx) -> None:
        self.build = list(ctx.features.build_seconds) if ctx.features is not None else []


def run(root: Path, out: Path, *, kind: str, cache: str, args: argparse.Namespace) -> dict:
    from tinlt.config import load_config
    from tinlt.engine.trainer import train

    overrides = [
        f"model.name={args.model}", "model.freeze_image=true", "model.freeze_text=true",
        f"model.visual_attention={'true' if kind == 'split' else 'false'}",
        "data.image_size=224", "data.augment=none", "data.num_workers=0",
        f"optim.batch_size={args.batch}", f"optim.epochs={args.epochs}", "optim.lr=1e-3",
        "train.eval_every=0", "train.quiet=true", "train.device=cpu", f"train.output_dir={out}",
        "data.train.kind=folder", f"data.train.path={root / 'train'}",
        "data.test.kind=folder", f"data.test.path={root / 'test'}",
    ]
    if cache:
        overrides.append(f"train.feature_cache={cache}")
    clock = EpochClock()
    t0 = time.perf_counter()
    train(load_config(None, overrides), hooks=[clock])
    total = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {"epoch_s": clock.wall, "epoch_cpu_s": clock.cpu, "loss": [r["loss"] for r in log],
            "total_s": total, "build_s": sum(clock.build)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kinds", default="split,embedding")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tinlt.runtime import tune_allocator

    tune_allocator()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "train", args.images)
        make_images(root / "test", 8)
        for kind in args.kinds.split(","):
            plain = run(root, root / f"{kind}-plain", kind=kind, cache="", args=args)
            cached = run(root, root / f"{kind}-cached", kind=kind, cache=str(root / "cache"), args=args)
            rows.append((kind, plain, cached, cached["build_s"]))
            print(f"{kind}: uncached epochs {plain['epoch_s']} s wall {plain['epoch_cpu_s']} s CPU; cached epochs "
                  f"{cached['epoch_s']} s wall {cached['epoch_cpu_s']} s CPU; cache build (train + test) "
                  f"{cached['build_s']:.1f} s; losses {plain['loss']} vs {cached['loss']}", file=sys.stderr, flush=True)
        size = {p.name: sum(f.stat().st_size for f in p.glob("*.npy")) for p in (root / "cache").iterdir()}

    print(f"\n{args.model} (random weights), {args.images} JPEGs 320x240 -> 224 px, batch {args.batch}, "
          f"fp32 CPU, {args.threads} threads, data.num_workers=0; best of {args.epochs} epochs "
          f"(the first carries one-off allocation warm-up)")
    print(f"{'kind':10s} {'uncached CPU s':>15s} {'cached CPU s':>13s} {'speed-up':>9s} {'(wall)':>8s} "
          f"{'build s':>8s} {'max |loss diff|':>16s}")
    ratios = {}
    for kind, plain, cached, build in rows:
        u, c = min(plain["epoch_cpu_s"]), min(cached["epoch_cpu_s"])
        uw, cw = min(plain["epoch_s"]), min(cached["epoch_s"])
        ratios[kind] = u / max(c, 1e-3)
        dl = max(abs(a - b) for a, b in zip(plain["loss"], cached["loss"]))
        print(f"{kind:10s} {u:15.2f} {c:13.3f} {ratios[kind]:8.1f}x {uw / max(cw, 1e-3):7.1f}x {build:8.1f} "
              f"{dl:16.2e}")
    print("build s: one-off, wall clock, train + test splits")
    for name, nbytes in sorted(size.items()):
        print(f"cache entry {name}: {nbytes / 2**20:.1f} MiB")
    print("epoch speed-up from the feature cache (CPU time): "
          + ", ".join(f"{k} {r:.1f}x" for k, r in ratios.items()))


if __name__ == "__main__":
    main()
