"""How much does exact text truncation save in a TIN training step with a training text tower?

Owns one measurement: a full TIN training step (forward, seesaw loss, backward, SGD step)
of the ViT-B-32 architecture (random weights, fp32, CPU, 2 threads) on a random batch, with
the class prompts truncated (``model.truncate_text: true`` with ``model.text_buckets: 4``,
the defaults: prompts in up to 4 length groups, each cut after its longest prompt's
end-of-text token) versus the full 77-token context. A third variant, ``--variants``
``one-group``, cuts all prompts at the longest one's end (``text_buckets: 1``). The class
names are ImageNet-LT's first N (the bundled list), so prompt lengths are realistic.

Each variant runs in its own subprocess (same seed, hence the same weights and batch), so
its peak memory is the process's peak resident set size (``resource.getrusage``
``ru_maxrss``; tracemalloc does not see torch's allocations). The children apply tinlt's
malloc tuning (``tinlt.runtime.tune_allocator``), as the CLI does. The first step's
logits of both variants are compared (they must agree to 1e-5).

Time is reported twice per step: wall clock and the process's CPU time (all threads,
``time.process_time``). On a machine shared with other jobs the wall clock depends on
their load; CPU time does not (much), so the speed-up is computed from CPU time and the
wall-clock ratio is printed beside it.

    python benchmarks/bench_truncation.py [--classes 500] [--batch 32] [--steps 2] [--warmup 1]

Memory: with a training text tower the full context keeps ~0.54 MiB of activations per
prompt token for the backward pass (ViT-B-32, fp32), ~41 MiB per class at 77 tokens: 500
classes need ~25 GiB for the full-context variant. ``--grad-checkpointing auto`` (the
default) therefore turns on ``model.grad_checkpointing`` - in every variant alike, so the
comparison stays fair - when that estimate exceeds 80% of the memory available.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def worker(args: argparse.Namespace) -> None:
    from tinlt.runtime import tune_allocator

    tune_allocator()
    import resource

    import numpy as np
    import torch

    from tinlt.config import LossConfig
    from tinlt.data.sources import read_classnames
    from tinlt.losses import build_loss
    from tinlt.models.factory import create_model

    torch.set_num_threads(args.threads)
    names_file = os.path.join(os.path.dirname(__file__), "..", "src", "tinlt", "data", "lists", "ImageNet_LT",
                              "classnames.txt")
    classnames = read_classnames(names_file)[: args.classes]
    torch.manual_seed(0)
    model = create_model({"name": args.model, "truncate_text": args.variant != "full",
                          "text_buckets": 1 if args.variant == "one-group" else 4,
                          "grad_checkpointing": bool(args.ckpt)}, classnames).train()
    counts = np.maximum(1, (1000 * 0.01 ** (np.arange(args.classes) / max(1, args.classes - 1)))).astype(int)
    loss_fn = build_loss(LossConfig(), counts)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, model.image_size, model.image_size, generator=g)
    targets = torch.randint(0, args.classes, (args.batch,), generator=g)
    n_prompts = len(model.prompts())
    times, cpu_times, first_logits = [], [], None
    for i in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(images)
        loss = loss_fn(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if first_logits is None:
            first_logits = logits.detach().clone()
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
        print(f"  {args.variant:9s} step {i + 1}: {dt:.2f}s wall, {dc:.2f}s CPU",
              file=sys.stderr, flush=True)
    torch.save(first_logits, args.logits_out)
    print(json.dumps({
        "variant": args.variant,
        "prompts": n_prompts,
        "text_tokens": model.text_token_count(),
        "step_s": times,
        "step_cpu_s": cpu_times,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--classes", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="truncated,full",
                    help="comma-separated, from: truncated (4 length groups), one-group, full")
    ap.add_argument("--grad-checkpointing", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="truncated", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--logits-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - {"truncated", "one-group", "full"}
    if unknown or "full" not in variants or len(variants) < 2:
        raise SystemExit(f"--variants {args.variants!r}: need 'full' and at least one of truncated, one-group")
    need_gib = (4.3 * 1024 + 0.54 * args.classes * 77) / 1024 if "full" in variants else 0.0
    avail_gib = _available_gib()
    ckpt = {"on": True, "off": False}.get(args.grad_checkpointing, need_gib > 0.8 * avail_gib)
    if args.grad_checkpointing == "auto" and ckpt:
        print(f"full context needs ~{need_gib:.0f} GiB without checkpointing, {avail_gib:.0f} GiB available: "
              "gradient checkpointing on in every variant", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            path = os.path.join(tmp, f"logits-{variant}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--variant={variant}",
                   f"--ckpt={int(ckpt)}", f"--logits-out={path}"] + [
                f"--{k}={getattr(args, k)}" for k in ("model", "classes", "batch", "steps", "warmup", "threads")]
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
            results[variant]["logits"] = torch.load(path)
    full = results["full"]
    med = {name: (statistics.median(r["step_s"]), statistics.median(r["step_cpu_s"])) for name, r in results.items()}
    print(f"\n{args.model} (random weights), {args.classes} classes, batch {args.batch}, fp32 CPU, "
          f"{args.threads} threads, gradient checkpointing {'on' if ckpt else 'off'}; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'variant':10s} {'text tokens':>12s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS MiB':>13s}")
    for name, r in results.items():
        print(f"{name:10s} {r['text_tokens']:12d} {med[name][0]:8.2f} {med[name][1]:8.2f} {r['max_rss_mib']:13.0f}")
    lines = []
    for name, r in results.items():
        if name == "full":
            continue
        diff = (r["logits"] - full["logits"]).abs().max().item()
        print(f"{name}: max |logit difference| vs full = {diff:.2e} (must be <= 1e-5)")
        lines.append(f"{name}: {med['full'][1] / med[name][1]:.2f}x less CPU time per step "
                     f"(wall clock {med['full'][0] / med[name][0]:.2f}x), peak RSS {r['max_rss_mib']:.0f} vs "
                     f"{full['max_rss_mib']:.0f} MiB ({full['max_rss_mib'] / r['max_rss_mib']:.2f}x lower)")
    print("\n".join(sorted(lines, key=lambda line: line.startswith("truncated"))))  # headline last


def _available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return float("inf")


if __name__ == "__main__":
    main()
