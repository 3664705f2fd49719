"""What does TIN's visual attention cost at inference, next to plain CLIP zero-shot classification?

Owns one measurement: images/s of

  tin   TIN(images, text_features=T): ViT split before its last block, gated large-kernel
        attention on the 7x7 patch map, last block + pooling + projection, cosine logits;
  clip  open_clip ``encode_image`` + L2 norm + ``scale * image @ T.t()``, the same weights,

with the same precomputed class text features T (so the text tower is not timed), ViT-B-32
architecture (random weights) at 224 px, fp32, CPU, 2 threads, ``torch.inference_mode``.
Rounds alternate between the two so that load from other processes hits both alike. Each
batch is timed by wall clock and by the process's CPU time (``time.process_time``, all
threads), which other jobs on a shared machine disturb far less; the overhead figure uses
the median CPU time, the wall-clock medians are printed beside it. The attention's gate is set
non-zero so it is not a numerical no-op (its cost does not depend on the value). The
process applies tinlt's malloc tuning (``tinlt.runtime.tune_allocator``) first.

    python benchmarks/bench_inference.py [--batch 32] [--rounds 5] [--iters 3] [--classes 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="timed batches per variant per round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from tinlt.runtime import tune_allocator

    tune_allocator()
    import open_clip
    import torch
    import torch.nn.functional as F

    from tinlt.models.towers.clip_image import openclip_image_tower
    from tinlt.models.towers.clip_text import OpenCLIPTextTower
    from tinlt.models.towers.clip_weights import register_model_configs
    from tinlt.models.tin import TIN

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_model_configs()  # tiny-vit / tiny-rn
    clip = open_clip.create_model(args.model).eval()
    tin = TIN(openclip_image_tower(clip.visual, name=args.model),
              OpenCLIPTextTower(clip, open_clip.get_tokenizer(args.model), name=args.model),
              [f"class {i}" for i in range(args.classes)]).eval()
    with torch.no_grad():
        tin.attention.gate.fill_(0.5)
    size = tin.image_size
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        text = tin.class_text_features()
        scale = tin.scale()

        def run_tin():
            return tin(x, text_features=text)

        def run_clip():
            return scale * F.normalize(clip.encode_image(x), dim=-1) @ text.t()

        variants = {"tin": run_tin, "clip": run_clip}
        for fn in variants.values():  # warm-up: first-call allocations
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(args.iters):
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        # with the gate at 0 TIN is CLIP exactly: check the two paths share weights and inputs
        tin.attention.gate.zero_()
        diff = (run_tin() - run_clip()).abs().max().item()

    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"\n{args.model} (random weights), {size} px, batch {args.batch}, {args.classes} classes "
          f"(text features precomputed), fp32 CPU, {args.threads} threads; "
          f"{args.rounds} rounds x {args.iters} batches per variant")
    print(f"{'variant':8s} {'img/s (wall)':>13s} {'img per CPU s':>14s}")
    for k in variants:
        print(f"{k:8s} {args.batch / med[k]:13.1f} {args.batch / med_cpu[k]:14.1f}")
    print(f"gate = 0: max |TIN - CLIP logit| = {diff:.2e}")
    print(f"visual attention overhead at inference: {100 * (med_cpu['tin'] / med_cpu['clip'] - 1):+.1f}% CPU time "
          f"per image (wall clock {100 * (med['tin'] / med['clip'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
