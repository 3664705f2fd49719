"""The one way tinlt opens an ONNX graph with onnxruntime (the predictor, the export's parity
check): CPU provider, quiet logging, an intra-op thread count, and for int8 weight-only
graphs the weights folded once at load so the math runs in float32. Imports only onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def open_session(path: str | Path, *, threads: int = 0, weights_only: bool = False):
    """An ``onnxruntime.InferenceSession`` for ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # quantised graphs log harmless notices
    if weights_only:  # fold the weight DequantizeLinear nodes once at load: float32 speed
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(session, batch: np.ndarray) -> np.ndarray:
    """The graph's first output for a (N, 3, S, S) float32 batch."""
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
