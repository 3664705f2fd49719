"""A model to serve or mine with: an exported ONNX file (no torch) or a checkpoint (torch).

Owns :func:`open_model`: path -> a prediction backend (the object
:func:`tinlt.deploy.types.predict_rows` takes). The checkpoint backend is imported only
when a checkpoint is given, so the ONNX path never loads torch; what a backend says about
itself is :mod:`.card`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TinltError

ONNX_SUFFIXES = (".onnx",)


def open_model(path: str | Path, *, threads: int = 0, quiet: bool = True) -> Any:
    """An ONNX file from ``tinlt export`` (onnxruntime, no torch), else a tinlt checkpoint or run folder."""
    p = Path(path)
    if p.suffix.lower() in ONNX_SUFFIXES:
        from .onnx_predict import OnnxClassifier

        return OnnxClassifier(p, threads=threads)
    if not p.exists():
        raise TinltError(f"model not found: {p} (an .onnx file from tinlt export, a checkpoint, or a run folder)")
    from .predict import CheckpointClassifier  # torch: imported only for a checkpoint

    return CheckpointClassifier(p, quiet=quiet)
