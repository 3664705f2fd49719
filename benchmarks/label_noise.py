"""Does ``tinlt fit``'s label_issues.csv find labels we broke on purpose?

Owns one measurement: the training split of a config (default: the clamp-like set,
demo_fmnist_clamp: 1,230 T-shirts and 30 shirts) has a share of its labels flipped at
random (``--rate``, default 5%; images drawn from the whole split, so both directions
occur; each flipped image gets a random other class), written out as PNGs with a CSV of
the noisy labels, and ``tinlt fit`` runs on it (``--only``: which recipes; the test split
is not used). Reported: how many of the flipped images are among the top N rows of
label_issues.csv (N = the number flipped; the issue's target is >= 70%), how many cleanlab
flagged, and how many of those were flipped.

    python benchmarks/label_noise.py [--config demo_fmnist_clamp] [--rate 0.05] [--seed 0]
        [--only probe_logistic] [--out runs/label_noise] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path


def write_noisy_split(cfg, out: Path, rate: float, seed: int) -> tuple[Path, Path, set[int]]:
    """(CSV of path,label with flipped labels, classnames file, indices flipped)."""
    import numpy as np
    from PIL import Image

    from tinlt.data.build import build_split

    train = build_split(cfg.data.train, "data.train")
    n, c = len(train), train.num_classes
    rng = np.random.default_rng(seed)
    flipped = rng.choice(n, size=round(rate * n), replace=False)
    labels = train.labels.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, c, size=len(flipped))) % c
    folder = out / "train"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = folder / f"{i:05d}.png"
        if not p.exists():
            item = train.items[i]
            (Image.fromarray(np.asarray(item)) if train.in_memory else Image.open(item)).save(p)
        rows.append((str(p), int(labels[i])))
    table = out / "train_noisy.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    names = out / "classnames.txt"
    names.write_text("".join(f"{k} {name}\n" for k, name in enumerate(train.classnames)))
    return table, names, {int(i) for i in flipped}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo_fmnist_clamp")
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="probe_logistic", help="recipes of the fit grid to run ('' = all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", default="runs/label_noise")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from tinlt.config import load_config
    from tinlt.fit.run import run_fit

    out = Path(args.out).resolve()
    cfg = load_config(args.config, args.overrides)
    table, names, flipped = write_noisy_split(cfg, out / "data", args.rate, args.seed)
    noisy = ["data.train.kind=csv", f"data.train.path={table}", f"data.train.classnames={names}", "data.train.classes=[]",
             "data.train.counts=[]", "data.train.lt_n_max=0"]
    t0 = time.time()
    run_fit(args.config, out / "fit", folds=args.folds, only=args.only.split(",") if args.only else None,
            overrides=[*args.overrides, *noisy], quiet=True, log=lambda *a, **k: None)
    wall = time.time() - t0
    with open(out / "fit" / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    top = [int(r["index"]) for r in rows[:len(flipped)]]
    hits = len(flipped.intersection(top))
    flagged = [int(r["index"]) for r in rows if r["flagged"] == "1"]
    result = {"config": args.config, "rate": args.rate, "seed": args.seed, "only": args.only,
              "images": len(rows), "flipped": len(flipped), "top_n_hits": hits,
              "top_n_share": hits / max(1, len(flipped)), "flagged": len(flagged),
              "flagged_flipped": len(flipped.intersection(flagged)), "wall_s": round(wall, 1)}
    print(f"{len(flipped)} of {len(rows)} labels flipped (seed {args.seed}); fit with {args.only or 'every recipe'}: "
          f"{hits} of the top {len(flipped)} rows of label_issues.csv are flipped images "
          f"({100 * result['top_n_share']:.1f}%; target >= 70%); cleanlab flagged {len(flagged)}, "
          f"{result['flagged_flipped']} of them flipped; {wall:.0f} s")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
