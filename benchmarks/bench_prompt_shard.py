"""Class prompts split across ranks (models/prompt_shard.py): exact, and cheaper per rank.

Run under torchrun (gloo on CPU works): ``torchrun --nproc_per_node 2 benchmarks/bench_prompt_shard.py``.
Every rank builds the same tiny model and, side by side in one run:

1. checks the sharded class features against the unsharded ones (max abs difference) and the
   text tower's gradients summed over ranks (what DDP averages) against the unsharded sum, and
   counts the collectives one sharded step makes (one gather for all length groups);
2. times the text tower's forward + backward per rank, sharded and unsharded, ``--repeats``
   times each, alternating.

Rank 0 prints one JSON line (``--out`` also writes it). ``--classes`` sets the class count (500
by default, as the target is stated); ``--check-only`` skips the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def build(classes: int):
    from tinlt.config import load_config
    from tinlt.models.factory import create_model
    from tinlt.models.towers.clip_weights import register_model_configs

    register_model_configs()
    names = [f"class {i}" + " detail" * (i % 6) for i in range(classes)]  # varied lengths: several buckets
    cfg = load_config(None, ["model.name=tiny-vit", "data.image_size=32",
                             'model.templates=["a photo of a {}.", "a close-up photo of the {}, in good light."]'])
    torch.manual_seed(0)
    return create_model(cfg.model, names, image_size=32).train()


def features_and_grads(model, sharded: bool, weight: torch.Tensor):
    model.shard_prompts = sharded
    params = [p for p in model.text_tower.parameters() if p.requires_grad]
    feats = model.class_text_features()
    grads = torch.autograd.grad((feats * weight).sum(), params)
    return feats.detach(), [g.detach() for g in grads]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build(args.classes)
    g = torch.Generator().manual_seed(100 + rank)  # each rank's own loss
    weight = torch.randn(model.class_text_features().shape, generator=g)

    rows = []
    hook = model.text_tower.register_forward_pre_hook(
        lambda mod, inp: rows.append(int((inp[0] if isinstance(inp[0], torch.Tensor) else next(iter(inp[0].values()))).shape[0])))
    full, g_full = features_and_grads(model, False, weight)
    rows_full, rows[:] = sum(rows), []
    calls = {"all_gather": 0, "all_reduce": 0}
    real = {k: getattr(dist, k) for k in calls}

    def counted(name):
        def call(*a, **kw):
            calls[name] += 1
            return real[name](*a, **kw)
        return call

    for k in calls:
        setattr(dist, k, counted(k))
    try:
        part, g_part = features_and_grads(model, True, weight)
    finally:
        for k, fn in real.items():
            setattr(dist, k, fn)
    rows_part = sum(rows)
    hook.remove()
    for t in (*g_full, *g_part):
        dist.all_reduce(t)  # summed over ranks: what DDP averages
    feat_diff = float((full - part).abs().max())
    grad_rel = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(g_full, g_part))
    report = {"world": world, "classes": args.classes, "prompts": int(full.shape[0]) * 2,
              "rows_encoded_by_rank0": {"unsharded": rows_full, "sharded": rows_part},
              "length_groups": len(model._bucket_lengths) or 1, "collectives_per_step": calls,
              "feature_max_abs_diff": feat_diff, "grad_sum_max_rel_diff": grad_rel}

    if not args.check_only:
        times = {"unsharded": [], "sharded": []}
        for _ in range(args.repeats):
            for name, sharded in (("unsharded", False), ("sharded", True)):
                dist.barrier()
                t0 = time.perf_counter()
                features_and_grads(model, sharded, weight)
                times[name].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        report.update({f"{k}_s_median": round(v, 4) for k, v in med.items()},
                      sharded_over_unsharded=round(med["sharded"] / med["unsharded"], 3))
    if rank == 0:
        line = json.dumps(report)
        print(line, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
