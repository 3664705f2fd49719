"""Top-k prediction for image files or folders with a trained checkpoint (needs torch).

Owns :class:`CheckpointClassifier`, the torch backend of deploy/backend.py (the ONNX one
is ``onnx_predict.OnnxClassifier``): the model loaded as every scoring path loads it
(``engine.inference.load_model``), its torchvision eval transform, and its scorer, which
computes the class text features once, so each batch costs one image-tower pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..engine.evaluate import over_views
from ..engine.inference import load_model, rule_of
from ..engine.loaders import make_transforms
from ..engine.progress import echo
from ..engine.run_folder import resolve_checkpoint
from .backend import softmax
from .rows import predict_rows


class CheckpointClassifier:
    """A trained checkpoint as a prediction backend: ``preprocess(image)``, ``probs(batch)``."""

    def __init__(self, checkpoint: str | Path, *, quiet: bool = False) -> None:
        self.path = resolve_checkpoint(checkpoint, log=lambda msg: echo(msg, quiet=quiet))
        self.model, self.cfg, self.ckpt = load_model(self.path)
        _, self.transform = make_transforms(self.model, self.cfg)
        self.classnames = list(self.ckpt["classnames"])
        # a calibrated two-class checkpoint decides by its threshold (tinlt calibrate), not argmax
        self.rule = rule_of(self.ckpt)
        with torch.no_grad():
            self.score = self.model.scorer()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image).numpy()

    @torch.no_grad()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return over_views(self.score, torch.from_numpy(batch)).float().cpu().numpy()

    def probs(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.logits(batch))

    def card(self) -> dict:
        """What the checkpoint says about itself (see deploy/card.py)."""
        from ..fileio import sha256

        ck = self.ckpt
        return {"kind": "checkpoint", "file": str(Path(self.path).resolve()), "file_sha256": sha256(self.path),
                "train_counts": [int(c) for c in ck.get("train_counts", [])],
                "preprocess": {"image_size": int(self.cfg.data.image_size), "tta": str(self.cfg.data.tta)},
                "tinlt_version": (ck.get("versions") or {}).get("tinlt"),
                "source_checkpoint": {"path": str(self.path), "epoch": ck.get("epoch")}}


def predict_paths(checkpoint: str | Path, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64,
                  quiet: bool = False) -> list[dict]:
    return predict_rows(CheckpointClassifier(checkpoint, quiet=quiet), inputs, topk=topk, batch_size=batch_size,
                        quiet=quiet)
