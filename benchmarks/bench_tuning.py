"""What does each tuning method cost per step, and how much does a frozen prefix save per epoch?

Owns two measurements, side by side in one run (random weights, fp32, CPU, 2 threads):

1. **Step time and peak memory of each method against full fine-tuning** of the image tower:
   one TIN training step (forward, seesaw loss, backward, AdamW step) of the ViT-B-32
   architecture on a random batch at 224 px, text tower frozen in every variant, plus the
   paper's TIN (both towers fully fine-tuned) for reference. Each variant runs in its own
   subprocess, so its peak memory is the process's peak resident set size
   (``resource.getrusage`` ``ru_maxrss``). Time is the process's CPU time per step (all
   threads, ``time.process_time``; steady against other jobs' load), wall clock beside it.
2. **Epoch speed-up of the frozen-prefix cache** (``train.feature_cache``, kind ``prefix``)
   through the real trainer: ``last_k`` and LoRA limited to the last blocks
   (``model.tune_image.blocks``) on N generated JPEGs, cached vs recomputed, best of the
   epochs' CPU times (the trainer's ``cpu_s``, read by a training hook). Losses must agree.

    python benchmarks/bench_tuning.py [--model ViT-B-32] [--batch 32] [--steps 3] [--images 64] [--blocks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {
    "full": {"method": "full"},
    "lora": {"method": "lora"},  # q and v; on a conv tower (RN50, effnet) every 1x1 conv
    "adaptformer": {"method": "adaptformer"},
    "vpt": {"method": "vpt"},
    "bitfit": {"method": "bitfit"},
    "ln": {"method": "ln"},
    "ssf": {"method": "ssf"},
    "last_k": {"method": "last_k", "blocks": 2},
    "frozen": {"method": "frozen"},
}


def _convolutional(model: str) -> bool:
    return "rn" in model.lower() or "effnet" in model.lower()


def worker(args: argparse.Namespace) -> None:
    from tinlt.runtime import tune_allocator

    tune_allocator()
    import resource

    import torch

    from tinlt.config import LossConfig
    from tinlt.losses import build_loss
    from tinlt.models.factory import create_model
    from tinlt.models.tuning import trainable_summary

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = [f"class {i}" for i in range(args.classes)]
    paper = args.one == "tin-paper"
    model_cfg = {"name": args.model, "freeze_text": not paper}
    if not paper:
        model_cfg["tune_image"] = dict(METHODS[args.one])
        if args.one == "lora" and _convolutional(args.model):
            model_cfg["tune_image"]["targets"] = ["conv1x1"]
    model = create_model(model_cfg, classes).train()
    size = model.image_size
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    loss_fn = build_loss(LossConfig(), [10] * args.classes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, size, size, generator=g)
    y = torch.randint(0, args.classes, (args.batch,), generator=g)
    cpu, wall = [], []
    for step in range(args.warmup + args.steps):
        c0, w0 = time.process_time(), time.perf_counter()
        loss = loss_fn(model(x), y)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step >= args.warmup:
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    trainable, total = trainable_summary(model.image_tower)
    print(json.dumps({"cpu_s": min(cpu), "wall_s": min(wall), "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "trainable": trainable, "total": total}))


def step_costs(args: argparse.Namespace) -> dict:
    out = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    for name in [*args.methods.split(","), "tin-paper"]:
        cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--classes", str(args.classes),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"{name}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: {out[name]}", file=sys.stderr, flush=True)
    return out


def make_images(root: Path, n: int, classes: int = 8) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(d / f"{i}.jpg", quality=90)


class Epochs:
    """A training hook: each epoch's training-pass CPU seconds (the trainer's ``cpu_s``)."""

    def __init__(self) -> None:
        self.cpu: list[float] = []

    def on_epoch_end(self, ctx) -> None:
        self.cpu.append(ctx.record["cpu_s"])


def prefix_epochs(args: argparse.Namespace, root: Path) -> dict:
    import torch

    from tinlt.config import load_config
    from tinlt.engine.trainer import train

    torch.set_num_threads(args.threads)
    out = {}
    variants = {"last_k": ["model.tune_image.method=last_k"],
                "lora": ["model.tune_image.method=lora"]}
    if _convolutional(args.model):
        variants["lora"].append("model.tune_image.targets=[conv1x1]")
    for name, tune in variants.items():
        runs = {}
        for cache in ("", str(root / "cache")):
            clock = Epochs()
            run = root / f"{name}-{'cached' if cache else 'plain'}"
            overrides = [
                f"model.name={args.model}", "model.freeze_text=true", *tune, f"model.tune_image.blocks={args.blocks}",
                "data.augment=none", "data.num_workers=0", f"optim.batch_size={args.batch}",
                f"optim.epochs={args.epochs}", "optim.lr=1e-4", "optim.name=adamw", "train.eval_every=0",
                "train.quiet=true", "train.report=false", "train.device=cpu", f"train.output_dir={run}",
                "data.train.kind=folder", f"data.train.path={root / 'train'}",
                "data.test.kind=folder", f"data.test.path={root / 'test'}",
            ] + ([f"train.feature_cache={cache}"] if cache else [])
            train(load_config(None, overrides), hooks=[clock])
            losses = [json.loads(r)["loss"] for r in (run / "log.jsonl").read_text().splitlines()]
            runs["cached" if cache else "plain"] = {"cpu": clock.cpu, "loss": losses}
        out[name] = runs
        print(f"{name} prefix: {runs}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=64, help="training images for the prefix-cache epochs")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=2, help="tuned last blocks in the prefix-cache runs")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return worker(args)

    costs = step_costs(args)
    full = costs["full"]
    print(f"\n{args.model} (random weights), batch {args.batch}, fp32 CPU, {args.threads} threads; image tower "
          f"tuned, text tower frozen (tin-paper: both towers fully fine-tuned); best of {args.steps} steps")
    print(f"{'method':12s} {'trainable':>12s} {'share':>8s} {'CPU s/step':>11s} {'vs full':>8s} {'wall s':>7s} "
          f"{'peak MiB':>9s} {'vs full':>8s}")
    for name, c in costs.items():
        print(f"{name:12s} {c['trainable']:12,d} {100 * c['trainable'] / c['total']:7.3g}% {c['cpu_s']:11.2f} "
              f"{c['cpu_s'] / full['cpu_s']:7.2f}x {c['wall_s']:7.2f} {c['peak_mib']:9.0f} "
              f"{c['peak_mib'] / full['peak_mib']:7.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "train", args.images)
        make_images(root / "test", 8)
        epochs = prefix_epochs(args, root)
    print(f"\nfrozen-prefix cache: the first blocks run once, the last {args.blocks} every step "
          f"({args.images} JPEGs, batch {args.batch}, best of {args.epochs} epochs, CPU s)")
    ratios = {}
    for name, r in epochs.items():
        plain, cached = min(r["plain"]["cpu"]), min(r["cached"]["cpu"])
        ratios[name] = plain / max(cached, 1e-3)
        dl = max(abs(a - b) for a, b in zip(r["plain"]["loss"], r["cached"]["loss"]))
        print(f"{name:8s} uncached {plain:7.2f}  cached {cached:7.2f}  speed-up {ratios[name]:5.1f}x  "
              f"max |loss diff| {dl:.2e}")
    print("epoch speed-up from the frozen-prefix cache (CPU time): "
          + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
