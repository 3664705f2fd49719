"""Trainable parameters of every tuning method on each tower, as the Markdown table in docs/tuning.md.

Builds the architectures with random weights (the counts do not depend on the weights) and
applies each method with its default keys (last_k: 2 blocks; LoRA on a conv tower: its 1x1
convs) to one tower at a time, the other frozen; the count is that tower's trainable
tensors (tinlt.models.tuning.trainable_summary), each counted once. The offline towers'
new projection into the joint space trains under every method, frozen included.
Methods that do not apply to a tower (AdaptFormer on a conv tower, ...) show "-".

    python benchmarks/tuning_params.py [--models ViT-B-32,effnet-lite0-minilm]
"""

from __future__ import annotations

import argparse

METHODS = ("full", "lora", "adaptformer", "vpt", "bitfit", "ln", "bn", "ssf", "last_k", "frozen")


def counts(model_name: str) -> dict:
    """{(tower, method): (trainable, total) or None}, through the real factory (create_model)."""
    import torch

    from tinlt.errors import TinltError
    from tinlt.models.factory import create_model
    from tinlt.models.tuning import trainable_summary

    out: dict = {}
    conv_image = "vit" not in model_name.lower()
    for side in ("image", "text"):
        for method in METHODS:
            spec: dict = {"method": method}
            if method == "last_k":
                spec["blocks"] = 2
            if method == "lora" and side == "image" and conv_image:
                spec["targets"] = ["conv1x1"]
            other = "text" if side == "image" else "image"
            cfg = {"name": model_name, f"tune_{side}": spec, f"tune_{other}": {"method": "frozen"}}
            if "effnet" not in model_name:
                cfg["pretrained"] = ""  # architecture only: counts do not depend on the weights
            torch.manual_seed(0)
            try:
                model = create_model(cfg, [f"class {i}" for i in range(10)])
            except TinltError:
                out[(side, method)] = None
                continue
            out[(side, method)] = trainable_summary(getattr(model, f"{side}_tower"))
    return out


def _share(part: int, whole: int) -> str:
    pct = 100.0 * part / max(whole, 1)
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 1 else f"{pct:.2g}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="ViT-B-32,effnet-lite0-minilm")
    args = ap.parse_args()
    names = args.models.split(",")
    table = {n: counts(n) for n in names}
    head = [f"{n} {side}" for n in names for side in ("image", "text")]
    print("| method | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for method in METHODS:
        cells = []
        for n in names:
            for side in ("image", "text"):
                v = table[n][(side, method)]
                cells.append("-" if v is None else f"{v[0]:,} ({_share(v[0], v[1])})")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
