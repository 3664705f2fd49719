"""Prediction with an exported ONNX model, without PyTorch.

Owns :class:`OnnxClassifier`: an exported tinlt model opened with onnxruntime, its
metadata (class names, preprocessing, decision threshold; written by
``tinlt.deploy.export``) and its scores. It is a backend of the shared batch loop
(``deploy.types.predict_rows``), which is everything ``tinlt predict --model model.onnx``
runs. Imports only numpy, PIL, onnxruntime and tqdm (an import contract checks it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import TinltError
from ..metrics import threshold_rule
from .types import Preprocess, predict_rows, softmax, view_logits

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
            import onnxruntime as ort
        except ImportError:
            raise TinltError("--model needs onnxruntime: pip install onnxruntime") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise TinltError(f"model not found: {self.path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3  # quantised graphs log harmless notices
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
            if _quant_method(self.metadata) == "weights":
                # int8 weights, float math: fold the weight DequantizeLinear nodes once at load
                opts.add_session_config_entry("session.disable_quant_qdq", "1")
                self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
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

    def meta(self, key: str, default: Any = None) -> Any:
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.transform(image)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) normalised float32 -> (N, C) logits."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def probs(self, batch: np.ndarray) -> np.ndarray:
        return softmax(view_logits(self.logits, batch))

    def predict(self, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64, quiet: bool = False) -> list[dict]:
        """Rows of :func:`tinlt.deploy.types.predict_rows` for images and folders."""
        return predict_rows(self, inputs, topk=topk, batch_size=batch_size, quiet=quiet)
