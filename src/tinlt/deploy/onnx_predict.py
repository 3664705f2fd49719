"""Prediction with an exported ONNX model, without PyTorch.

Owns :class:`OnnxClassifier`: an exported tinlt model opened with onnxruntime, its
metadata (class names, preprocessing, decision threshold; written by
``tinlt.deploy.export``) and its scores: a backend of deploy/backend.py (``predict``,
``serve``, ``mine`` and ``eval`` take it). Imports only numpy, PIL, onnxruntime and tqdm (an
import contract checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import TinltError
from ..metrics import threshold_rule
from .backend import softmax, view_logits
from .onnx_session import open_session, run
from .preprocess import Preprocess
from .rows import predict_rows

# metadata keys written by tinlt.deploy.export; each value is a JSON string
META_KEYS = ("classnames", "train_counts", "templates", "preprocess", "threshold", "threshold_info", "tinlt_version", "source_checkpoint", "model")


def _json_meta(meta: dict, key: str, path: Path) -> Any:
    if key not in meta:
        raise TinltError(f"{path}: metadata key '{key}' missing; export the model with 'tinlt export'")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise TinltError(f"{path}: metadata '{key}' is not valid JSON") from None


def _quant_method(meta: dict) -> Optional[str]:
    try:
        quant = json.loads(meta.get("quantization", "null") or "null")
    except json.JSONDecodeError:
        return None
    return quant.get("method") if isinstance(quant, dict) else None


class OnnxClassifier:
    """An exported tinlt model: ``logits(batch)``, ``predict(paths)``, plus its metadata."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        try:
            import onnxruntime  # noqa: F401 - say what is missing before anything else
        except ImportError:
            raise TinltError("--model needs onnxruntime: pip install onnxruntime") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise TinltError(f"model not found: {self.path}")
        try:
            self.session = open_session(self.path, threads=threads)
            self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
            if _quant_method(self.metadata) == "weights":  # int8 weights, float math
                self.session = open_session(self.path, threads=threads, weights_only=True)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TinltError(f"{self.path}: not a readable ONNX model ({first})") from None
        self.classnames: list[str] = [str(c) for c in _json_meta(self.metadata, "classnames", self.path)]
        self.transform = Preprocess.from_dict(
            _json_meta(self.metadata, "preprocess", self.path), where=f"{self.path}: metadata 'preprocess'"
        )
        thr = json.loads(self.metadata.get("threshold", "null") or "null")
        thr_info = json.loads(self.metadata.get("threshold_info", "null") or "null")
        self.rule = threshold_rule(thr, thr_info, self.classnames)
        self.input_name = self.session.get_inputs()[0].name
        self._check_graph()

    def _check_graph(self) -> None:
        """The metadata must describe the graph: one float input of (N, 3, S, S) at the preprocessing's
        size, (N, classes) logits out. A file whose names or size disagree with its graph made predict
        end in a traceback and serve report ready and then answer 500 to every request; here it is one
        line at load time. A one-image run checks what static shapes cannot (symbolic axes)."""
        where, s, c = f"{self.path}: metadata and graph disagree", self.transform.image_size, len(self.classnames)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise TinltError(f"{where}: the graph has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
        spec = inputs[0]
        if spec.type != "tensor(float)":
            raise TinltError(f"{where}: the input is {spec.type}, expected tensor(float)")
        shape = list(spec.shape)
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or fixed[1] not in (None, 3) or any(d not in (None, s) for d in fixed[2:]):
            raise TinltError(f"{where}: the input is {shape}, the metadata's preprocessing gives (N, 3, {s}, {s})")
        try:
            out = run(self.session, np.zeros((1, 3, s, s), np.float32))
        except Exception as e:  # onnxruntime's own exception types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TinltError(f"{where}: a (1, 3, {s}, {s}) input fails in the graph ({first[:200]})") from None
        if out.ndim != 2 or out.shape != (1, c):
            raise TinltError(f"{where}: the graph gives {tuple(out.shape)} for one image, the metadata names {c} classes")

    def meta(self, key: str, default: Any = None) -> Any:
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) normalised float32 -> (N, C) logits."""
        return run(self.session, batch)

    def probs(self, batch: np.ndarray) -> np.ndarray:
        return softmax(view_logits(self.logits, batch))

    def card(self) -> dict:
        """What the model says about itself (see deploy/card.py)."""
        from ..fileio import sha256

        return {"kind": "onnx", "file": str(self.path.resolve()), "file_sha256": sha256(self.path),
                "train_counts": self.meta("train_counts", None), "preprocess": self.transform.to_dict(),
                "tinlt_version": self.meta("tinlt_version", None),
                "source_checkpoint": self.meta("source_checkpoint", None)}

    def predict(self, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64, quiet: bool = False) -> list[dict]:
        """Rows of :func:`tinlt.deploy.rows.predict_rows` for images and folders."""
        return predict_rows(self, inputs, topk=topk, batch_size=batch_size, quiet=quiet)
