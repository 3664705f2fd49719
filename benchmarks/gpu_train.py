"""GPU training throughput of TIN: truncated vs full text context, eager vs torch.compile.

Owns one measurement on one CUDA GPU: training steps of TIN with the ViT-B/32 architecture
(random weights; image and text towers both training, so the text tower runs every step),
batch 128 of random 224 px images, 1,000 classes (ImageNet-LT's names, so prompt lengths are
realistic), bf16 autocast, seesaw loss, SGD with momentum. Four variants, one after the
other in this process, each from the same seed:

  eager/truncated  eager/full  compiled/truncated  compiled/full

Reported per variant: images/s over the timed steps (after warm-up; for compiled variants
the warm-up includes compilation, whose time is printed), and peak memory
(``torch.cuda.max_memory_allocated`` since the variant started). The whole run takes about
3-5 minutes on an H200, most of it compiling.

``--check`` instead runs the real trainer (``tinlt.engine.trainer.train``) for a few steps
on the GPU with the paths that cannot be exercised on a CPU-only machine: fp16 autocast +
GradScaler with a channels-last ResNet tower, and bf16 + torch.compile + the on-disk feature
cache with a ViT tower; it prints one line per path and fails loudly on any error.

``--trainer`` measures what a user's run does instead: the real trainer on generated JPEGs
(``--images`` of ``--width`` x ``--height``, class folders), its DataLoader with ``--workers``
workers, the paper's augmentation, uint8 batches normalised on the device, DDP when started
under torchrun, the step as shipped. Reported (rank 0): images/s over the timed steps, the
data-wait share (time the step loop spent blocked on the loader's next batch / the loop's
time), and peak GPU memory. Target on one GPU with 15 workers: data-wait <= 10%.

    python benchmarks/gpu_train.py [--steps 20] [--warmup 3] [--variants all] [--check]
    python benchmarks/gpu_train.py --trainer --workers 15 [--batch 128] [--images 4096]
    torchrun --nproc_per_node 8 benchmarks/gpu_train.py --trainer --workers 15

Without a CUDA GPU it prints why and exits with status 1 (``--device cpu`` with a tiny model
is accepted for a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("eager/truncated", "eager/full", "compiled/truncated", "compiled/full")


def _classnames(n: int) -> list[str]:
    from tinlt.data.sources import read_classnames

    lists = Path(__file__).resolve().parent.parent / "src" / "tinlt" / "data" / "lists"
    names = read_classnames(lists / "ImageNet_LT" / "classnames.txt")
    return [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(n)]


def measure(variant: str, args: argparse.Namespace, device) -> dict:
    import numpy as np
    import torch

    from tinlt.config import LossConfig
    from tinlt.engine.device import autocast_for
    from tinlt.losses import build_loss
    from tinlt.models.factory import create_model

    compiled, context = variant.split("/")
    torch.manual_seed(0)
    model = create_model({"name": args.model, "truncate_text": context == "truncated"}, _classnames(args.classes),
                         image_size=args.image_size).to(device).train()
    counts = np.maximum(1, (1000 * 0.01 ** (np.arange(args.classes) / max(1, args.classes - 1)))).astype(int)
    loss_fn = build_loss(LossConfig(), counts).to(device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    step_model = torch.compile(model, backend=args.compile_backend) if compiled == "compiled" else model
    g = torch.Generator(device="cpu").manual_seed(1)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    targets = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)

    def step() -> float:
        with autocast_for(device, args.amp):
            logits = step_model(images)
        loss = loss_fn(logits.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    result = {
        "variant": variant,
        "text_tokens": model.text_token_count(),  # summed over the length groups
        "images_per_s": args.batch * args.steps / dt,
        "step_ms": 1000 * dt / args.steps,
        "warmup_s": warm_s,
        "peak_gib": peak,
        "loss": float(loss.detach()),
    }
    if compiled == "compiled":
        torch._dynamo.reset()  # compiled graphs hold on to this variant's weights
    return result


def check(args: argparse.Namespace) -> None:
    """A few real trainer steps per GPU-only path; raises on any failure."""
    import numpy as np
    from PIL import Image

    from tinlt.config import load_config
    from tinlt.engine.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for split, n in (("train", 8), ("test", 4)):
            for c in range(3):
                d = root / split / f"class_{c}"
                d.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(d / f"{i}.png")
        common = ["data.num_workers=2", "optim.batch_size=8", "optim.epochs=2", "train.quiet=true",
                  f"train.device={args.device}", "data.train.kind=folder", f"data.train.path={root / 'train'}",
                  "data.test.kind=folder", f"data.test.path={root / 'test'}"]
        paths = {
            "fp16 + GradScaler + channels_last (tiny-rn)": [
                "model.name=tiny-rn", "data.image_size=64", "train.amp=fp16", "train.channels_last=true"],
            "bf16 + torch.compile + feature cache (tiny-vit, frozen tower)": [
                "model.name=tiny-vit", "data.image_size=32", "train.amp=bf16", "train.compile=true",
                "model.freeze_image=true", "data.augment=none", f"train.feature_cache={root / 'cache'}"],
            "bf16 + feature cache, second run reads it": [
                "model.name=tiny-vit", "data.image_size=32", "train.amp=bf16",
                "model.freeze_image=true", "data.augment=none", f"train.feature_cache={root / 'cache'}"],
        }
        for i, (name, extra) in enumerate(paths.items()):
            t0 = time.perf_counter()
            metrics = train(load_config(None, [*common, *extra, f"train.output_dir={root / f'run{i}'}"]))
            log = [json.loads(line) for line in (root / f"run{i}" / "log.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in log]
            assert all(np.isfinite(losses)), f"{name}: non-finite loss {losses}"
            print(f"ok  {name}: losses {[round(x, 4) for x in losses]}, test overall {metrics['overall']:.1f}, "
                  f"{time.perf_counter() - t0:.1f}s", flush=True)
        entries = sorted(p.name for p in (root / "cache").iterdir())
        print(f"ok  cache entries: {entries}")


class TimedLoader:
    """The trainer's DataLoader, with the time each ``next()`` blocked and when it was asked."""

    def __init__(self, loader) -> None:
        self.loader, self.asked, self.got = loader, [], []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.asked.append(time.perf_counter())
            try:
                batch = next(it)
            except StopIteration:
                self.asked.pop()
                return
            self.got.append(time.perf_counter())
            yield batch


def make_jpegs(root: Path, n: int, width: int, height: int, classes: int = 10) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.float32)
        Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)).save(
            d / f"{i}.jpg", quality=90)


def trainer_run(args: argparse.Namespace) -> dict:
    """The real trainer (see the module doc); rank 0's numbers."""
    import os

    import torch

    import tinlt.engine.trainer as trainer_module
    from tinlt.config import load_config
    from tinlt.engine.trainer import train

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    steps = args.warmup + args.steps + 1  # one more: a step is timed until the next batch is asked for
    n = args.images or steps * args.batch * world
    root = Path(tempfile.gettempdir()) / f"tinlt_gpu_train_{n}_{args.width}x{args.height}"
    done = root / "done"
    if rank == 0 and not done.exists():
        make_jpegs(root / "train", n, args.width, args.height)
        make_jpegs(root / "test", 20, args.width, args.height)
        done.touch()
    while not done.exists():  # the other ranks wait for rank 0's images
        time.sleep(0.5)
    timed: list[TimedLoader] = []
    real = trainer_module.train_loader

    def timed_loader(*a, **k):
        timed.append(TimedLoader(real(*a, **k)))
        return timed[-1]

    trainer_module.train_loader = timed_loader
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out = Path(tempfile.mkdtemp(prefix="tinlt_gpu_train_run_"))
    overrides = [f"model.name={args.model}", f"data.image_size={args.image_size}", f"data.num_workers={args.workers}",
                 f"optim.batch_size={args.batch}", "optim.epochs=1000", f"train.max_steps={steps}",
                 f"train.device={args.device}", f"train.amp='{args.amp}'", "train.quiet=true", "train.report=false",
                 "data.train.kind=folder", f"data.train.path={root / 'train'}", "data.test.kind=folder",
                 f"data.test.path={root / 'test'}", f"train.output_dir={out}", "data.validate=false",
                 *args.overrides]
    t0 = time.perf_counter()
    train(load_config(args.config, overrides))
    total = time.perf_counter() - t0
    loader = timed[-1]
    got, asked = loader.got, loader.asked
    # batch i: waited got[i] - asked[i]; its step ran until asked[i + 1] (the next request)
    spans = [(got[i] - asked[i], asked[i + 1] - got[i]) for i in range(len(got) - 1)][args.warmup:args.warmup + args.steps]
    wait = sum(w for w, _ in spans)
    loop = sum(w + c for w, c in spans)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() and args.device.startswith("cuda") else 0.0
    return {"rank": rank, "world": world, "images_per_s": len(spans) * args.batch * world / max(loop, 1e-9),
            "data_wait_share": wait / max(loop, 1e-9), "timed_steps": len(spans), "peak_gib": peak,
            "run_s": round(total, 1), "workers": args.workers, "batch": args.batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "off"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--variants", default="all", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--check", action="store_true", help="run the GPU-only trainer paths instead")
    ap.add_argument("--trainer", action="store_true", help="measure the real trainer on generated JPEGs instead")
    ap.add_argument("--workers", type=int, default=15, help="--trainer: DataLoader workers")
    ap.add_argument("--images", type=int, default=0, help="--trainer: training JPEGs (default: enough for the steps)")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--config", default=None, help="--trainer: a config to start from (its data is replaced)")
    ap.add_argument("overrides", nargs="*", help="--trainer: key=value overrides")
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_train.py: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was measured",
              file=sys.stderr)
        sys.exit(1)
    device = torch.device(args.device)
    from tinlt.runtime import tune_allocator

    tune_allocator()
    if args.check:
        check(args)
        return
    if args.trainer:
        r = trainer_run(args)
        if r["rank"] == 0:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            print(f"trainer: {r['images_per_s']:.1f} img/s over {r['timed_steps']} steps, data-wait "
                  f"{100 * r['data_wait_share']:.1f}% of the step loop (target <= 10%), peak {r['peak_gib']:.2f} GiB; "
                  f"{args.model}, batch {args.batch} x {r['world']} process(es), {args.image_size} px, "
                  f"{args.workers} workers, {args.width}x{args.height} JPEGs; {name}", flush=True)
            print(json.dumps(r), flush=True)
        # the trainer stopped mid-epoch at train.max_steps and its persistent loader workers kept
        # this process from exiting (seen: still alive after 10 minutes); the numbers are out
        sys.stdout.flush()
        sys.stderr.flush()
        import os

        os._exit(0)
    variants = VARIANTS if args.variants == "all" else tuple(args.variants.split(","))
    for v in variants:
        if v not in VARIANTS:
            sys.exit(f"gpu_train.py: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = []
    for v in variants:
        r = measure(v, args, device)
        results.append(r)
        print(f"{v:19s} tokens {r['text_tokens']:>7d}  {r['images_per_s']:8.1f} img/s  "
              f"{r['step_ms']:7.1f} ms/step  peak {r['peak_gib']:6.2f} GiB  warm-up {r['warmup_s']:6.1f}s  "
              f"loss {r['loss']:.4f}", flush=True)
    print(f"\n{args.model} (random weights), batch {args.batch}, {args.image_size} px, {args.classes} classes, "
          f"amp {args.amp}, text tower training; {args.steps} timed steps after {args.warmup} warm-up; {name}")
    by = {r["variant"]: r for r in results}
    parts = []
    for mode in ("eager", "compiled"):
        t, f = by.get(f"{mode}/truncated"), by.get(f"{mode}/full")
        if t and f:
            parts.append(f"{mode}: truncation {t['images_per_s'] / f['images_per_s']:.2f}x img/s, "
                         f"peak {t['peak_gib']:.1f} vs {f['peak_gib']:.1f} GiB")
    for ctx in ("truncated", "full"):
        e, c = by.get(f"eager/{ctx}"), by.get(f"compiled/{ctx}")
        if e and c:
            parts.append(f"compile ({ctx}): {c['images_per_s'] / e['images_per_s']:.2f}x img/s")
    print("; ".join(parts) if parts else json.dumps(results))


if __name__ == "__main__":
    main()
