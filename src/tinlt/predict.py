"""Top-k prediction for image files or folders with a trained checkpoint (needs torch).

Class text features are computed once per call, so each batch costs one image-tower pass.
Listing images, building rows, the threshold rule and writing CSV/JSON are shared with the
torch-free ONNX path in ``onnx_predict.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .onnx_predict import collect_images, format_predictions, rows_from_probs, threshold_rule, write_predictions

__all__ = ["predict_paths", "collect_images", "format_predictions", "write_predictions"]


@torch.no_grad()
def predict_paths(checkpoint: str | Path, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64) -> list[dict]:
    from .data.dataset import open_image
    from .engine.inference import load_model
    from .engine.progress import progress
    from .engine.trainer import make_transforms

    model, cfg, ckpt = load_model(checkpoint)
    _, tf = make_transforms(model, cfg)
    classnames = ckpt["classnames"]
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
        if batch:
            probs = model(torch.stack(batch), text_features=text).float().softmax(-1).cpu().numpy()
            rows.extend(rows_from_probs(kept, probs, classnames, topk, rule))
    return rows
