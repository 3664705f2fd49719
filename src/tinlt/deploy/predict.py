"""Top-k prediction for image files or folders with a trained checkpoint (needs torch).

Owns :class:`CheckpointClassifier`, the torch backend of the shared batch loop
(``deploy.types.predict_rows``; the ONNX backend is ``onnx_predict.OnnxClassifier``): the
model loaded as every scoring path loads it (``engine.inference.load_model``), its
torchvision eval transform, and class text features computed once per call, so each
batch costs one image-tower pass.
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
from .types import predict_rows


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
    def probs(self, batch: np.ndarray) -> np.ndarray:
        logits = over_views(self.score, torch.from_numpy(batch))
        return logits.float().softmax(-1).cpu().numpy()


def predict_paths(checkpoint: str | Path, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64,
                  quiet: bool = False) -> list[dict]:
    return predict_rows(CheckpointClassifier(checkpoint, quiet=quiet), inputs, topk=topk, batch_size=batch_size,
                        quiet=quiet)
