"""The one scoring backend protocol, and the one loop from image files to probabilities.

A backend is a model ready to score images, whatever it is made of: an exported ONNX graph
(:class:`~tinlt.deploy.onnx_predict.OnnxClassifier`, no torch) or a tinlt checkpoint
(:class:`~tinlt.deploy.predict.CheckpointClassifier`). It offers its classes, its decision
rule, its preprocessing of one PIL image, the logits and probabilities of a stacked batch,
and its model card. :func:`score_files` is the batch loop every command that scores files
uses (``predict``, ``mine``); ``serve`` batches across requests instead (deploy/batcher.py)
and ``tinlt.engine.evaluate`` takes a backend's ``logits`` too. Imports only numpy and PIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import TinltError
from ..metrics import ThresholdRule

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Backend(Protocol):
    """A model ready to score: its classes, its decision rule, its preprocessing of one PIL
    image, the logits and class probabilities of a stacked batch, and what it says about itself."""

    classnames: list[str]
    rule: Optional[ThresholdRule]

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def logits(self, batch: np.ndarray) -> np.ndarray: ...

    def probs(self, batch: np.ndarray) -> np.ndarray: ...

    def card(self) -> dict: ...


def view_logits(logits_of, batch: np.ndarray) -> np.ndarray:
    """Logits of a (B, 3, H, W) batch; a (B, V, 3, H, W) batch of test-time views gives each
    image's mean logits over its views."""
    if batch.ndim == 5:
        b, v = batch.shape[:2]
        return logits_of(batch.reshape(b * v, *batch.shape[2:])).reshape(b, v, -1).mean(axis=1)
    return logits_of(batch)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus every image under the named folders (sorted)."""
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


@dataclass
class Scored:
    """What :func:`score_files` returns: the files it could read, in order, their (N, C)
    probabilities, what ``per_image`` made of each, and the files it could not read, with why."""

    paths: list[Path] = field(default_factory=list)
    probs: Optional[np.ndarray] = None
    extra: list = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def score_files(backend: Backend, paths: Sequence[Path], *, batch_size: int = 64, quiet: bool = False,
                desc: str = "predict", per_image: Optional[Callable[[Image.Image], Any]] = None) -> Scored:
    """Decode, preprocess and score every file in batches; an unreadable file is listed in
    ``bad`` and does not stop the others. ``per_image(image)`` runs on each decoded image."""
    from ..data.images import DEFAULT_DRAFT_SIZE, open_image
    from ..engine.progress import progress  # tqdm only: no torch

    out, probs = Scored(), []
    step = max(1, int(batch_size))
    for start in progress(range(0, len(paths), step), desc=desc, unit="batch", quiet=quiet):
        arrays = []
        for p in paths[start:start + step]:
            try:
                img = open_image(p, draft_size=DEFAULT_DRAFT_SIZE)  # as evaluation and serve decode
                arrays.append(backend.preprocess(img))
                out.extra.append(per_image(img) if per_image is not None else None)
                out.paths.append(p)
            except Exception as e:  # noqa: BLE001 - one unreadable file must not sink the rest
                out.bad.append((str(p), f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"))
        if arrays:
            probs.append(backend.probs(np.stack(arrays)))
    n = len(backend.classnames)
    out.probs = np.concatenate(probs) if probs else np.zeros((0, n), dtype=np.float32)
    return out
