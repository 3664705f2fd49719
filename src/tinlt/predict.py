"""Top-k prediction for image files or folders with a trained checkpoint.

Class text features are computed once per call, so each batch costs one image-tower pass.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import torch

from .errors import TinltError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file()))
        elif p.is_file():
            paths.append(p)
        else:
            raise TinltError(f"no such image or folder: {p}")
    if not paths:
        raise TinltError(f"no images found in: {', '.join(map(str, inputs))}")
    return paths


@torch.no_grad()
def predict_paths(checkpoint: str | Path, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64) -> list[dict]:
    from .data.dataset import open_image
    from .engine.inference import load_model
    from .engine.progress import progress
    from .engine.trainer import make_transforms
    from .onnx_predict import threshold_rule

    model, cfg, ckpt = load_model(checkpoint)
    _, tf = make_transforms(model, cfg)
    classnames = ckpt["classnames"]
    k = min(topk, len(classnames))
    # a calibrated two-class checkpoint decides by its threshold (tinlt calibrate), not argmax
    rule = threshold_rule(ckpt.get("threshold"), ckpt.get("threshold_info"), classnames)
    text = model.class_text_features() if model.uses_text_head else None
    paths = collect_images(inputs)
    rows: list[dict] = []
    for start in progress(range(0, len(paths), batch_size), desc="predict", unit="batch"):
        batch, kept = [], []
        for p in paths[start : start + batch_size]:
            try:
                batch.append(tf(open_image(p)))
                kept.append(p)
            except Exception as e:  # one unreadable file must not sink the rest
                rows.append({"path": str(p), "error": f"{type(e).__name__}: {e}".splitlines()[0]})
        if not batch:
            continue
        probs = model(torch.stack(batch), text_features=text).float().softmax(-1)
        top_p, top_i = probs.topk(k, dim=-1)
        decided = rule.decide(probs.cpu().numpy()) if rule is not None else None
        for n, (p, ps, idx) in enumerate(zip(kept, top_p.tolist(), top_i.tolist())):
            rows.append(
                {
                    "path": str(p),
                    "topk": [{"class": classnames[i], "index": i, "score": round(s, 6)} for s, i in zip(ps, idx)],
                }
            )
            if decided is not None:
                c = int(decided[n])
                rows[-1]["prediction"] = {"class": classnames[c], "index": c, "threshold": rule.value,
                                          "positive": rule.positive_name}
    return rows


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2))
    elif out.suffix.lower() == ".csv":
        k = max((len(r.get("topk", [])) for r in rows), default=0)
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"score_{i}")] + ["error"])
            for r in rows:
                cells = [c for t in r.get("topk", []) for c in (t["class"], t["score"])]
                cells += [""] * (2 * k - len(cells))
                w.writerow([r["path"]] + cells + [r.get("error", "")])
    else:
        raise TinltError(f"--out must end in .csv or .json, got {out}")
    return out


def format_predictions(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']}: skipped ({r['error']})")
            continue
        tops = ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["topk"])
        lines.append(f"{r['path']}: {tops}")
    return "\n".join(lines)
