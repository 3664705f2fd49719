"""Does ``tinlt mine`` put the rare images first? Pools from Fashion-MNIST test images at 2% rare.

Each pool: 20 random Shirt images (the clamp-like demo's rare class) among 980 T-shirt/top
images, all from the test split (no model saw them), as PNG files in a folder tree. Every
model ranks each pool with ``tinlt.deploy.mine.mine`` (``--by prob``, near-duplicate
collapsing off so that the ranking itself is measured); the share of the 20 found in the
top 2%, 5% and 10% of the ranking is averaged over the pools, next to a random order's
(its expectation, 2/5/10%, and the mean of 1,000 shuffles).

    python benchmarks/mine_eval.py --model TIN=runs/demo/fmnist_clamp/tin_best__seed0/best.pt \\
        --model CE=runs/benchmark/fmnist_clamp/ft_ce__seed0/best.pt [--pools 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

TOPS = (0.02, 0.05, 0.10)


def build_pool(root: Path, seed: int, n_common: int = 980, n_rare: int = 20) -> set[str]:
    from PIL import Image

    from tinlt.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist(os.environ.get("TINLT_FMNIST", "/usr/share/datasets/fashion-mnist"), "test")
    labels = np.asarray(test.labels)
    rng = np.random.default_rng(seed)
    common = rng.permutation(np.flatnonzero(labels == 0))[:n_common]
    rare = rng.permutation(np.flatnonzero(labels == 6))[:n_rare]
    root.mkdir(parents=True, exist_ok=True)
    names = set()
    # anonymous names, shuffled order: nothing but the pixels tells the classes apart
    for k, i in enumerate(rng.permutation(np.r_[common, rare])):
        path = root / f"img_{k:04d}.png"
        Image.fromarray(np.asarray(test.items[int(i)])).save(path)
        if int(i) in set(rare.tolist()):
            names.add(str(path))
    return names


def found_shares(ranked: list[str], rare: set[str]) -> list[float]:
    n = len(ranked)
    return [len(set(ranked[: int(round(t * n))]) & rare) / len(rare) for t in TOPS]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                    help="a checkpoint or .onnx to rank with (repeat)")
    ap.add_argument("--pools", type=int, default=5)
    ap.add_argument("--class", dest="cls", default="Shirt")
    args = ap.parse_args()
    from tinlt.deploy.backends import open_model
    from tinlt.deploy.mine import mine

    models = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = open_model(path)
    results: dict[str, list[list[float]]] = {name: [] for name in models}
    results["random order"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.pools):
            pool = Path(tmp) / f"pool{seed}"
            rare = build_pool(pool, seed)
            for name, backend in models.items():
                out = Path(tmp) / f"out_{name}_{seed}"
                mine(pool, backend, out, cls=args.cls, dedupe=False, quiet=True)
                import csv

                ranked = [r["path"] for r in csv.DictReader(open(out / "ranked.csv"))]
                results[name].append(found_shares(ranked, rare))
            allp = sorted(str(p) for p in pool.glob("*.png"))
            rng = np.random.default_rng(1000 + seed)
            shuffles = [found_shares(list(rng.permutation(allp)), rare) for _ in range(1000)]
            results["random order"].append(list(np.mean(shuffles, axis=0)))
            print(f"pool {seed}: " + ", ".join(f"{k} {v[-1]}" for k, v in results.items()), file=sys.stderr)
    head = " | ".join(f"top {int(100 * t)}%" for t in TOPS)
    print(f"| ranking | {head} |")
    print("|---|" + "---:|" * len(TOPS))
    for name, rows in results.items():
        cells = []
        for j in range(len(TOPS)):
            vals = [100 * r[j] for r in rows]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nshare (%) of the 20 rare images in the top of a 1,000-image pool; mean ± std over {args.pools} pools")


if __name__ == "__main__":
    main()
