"""Prediction with an exported ONNX model, without PyTorch.

Owns everything ``tinlt predict --model model.onnx`` runs: reading the metadata that
``tinlt export`` stores in the graph (class names, preprocessing, decision threshold),
the evaluation preprocessing re-implemented in PIL + numpy, the decision rule of a
calibrated two-class model, and writing/printing prediction rows (also used for
checkpoint predictions, so both paths print the same way).

Imports only numpy, PIL and onnxruntime (tqdm if installed, for a progress bar). The
preprocessing mirrors ``tinlt.data.transforms`` eval mode step by step: upright 8-bit RGB,
shorter side resized to ``image_size`` with PIL bicubic (what torchvision itself calls
for PIL input), centre crop with torchvision's rounding, then ``(x / 255 - mean) / std``
in float32.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from .errors import TinltError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# metadata keys written by tinlt.export; each value is a JSON string
META_KEYS = ("classnames", "templates", "preprocess", "threshold", "threshold_info", "tinlt_version", "source_checkpoint", "model")


# ----------------------------------------------------------------------------- inputs


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


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """The evaluation transform of a model: resize shorter side, centre crop, normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shorter_side"
    interpolation: str = "bicubic"
    crop: str = "center"

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": "x / 255, then (x - mean) / std, RGB, float32, NCHW",
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "metadata 'preprocess'") -> "Preprocess":
        try:
            pre = cls(
                image_size=int(d["image_size"]),
                mean=tuple(float(m) for m in d["mean"]),
                std=tuple(float(s) for s in d["std"]),
                resize=str(d.get("resize", "shorter_side")),
                interpolation=str(d.get("interpolation", "bicubic")),
                crop=str(d.get("crop", "center")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TinltError(f"{where}: missing or bad field ({type(e).__name__}: {e})") from None
        if (pre.resize, pre.interpolation, pre.crop) != ("shorter_side", "bicubic", "center"):
            raise TinltError(
                f"{where}: unsupported preprocessing resize={pre.resize} interpolation={pre.interpolation} "
                f"crop={pre.crop} (this tinlt knows shorter_side/bicubic/center)"
            )
        if len(pre.mean) != 3 or len(pre.std) != 3 or pre.image_size < 1:
            raise TinltError(f"{where}: needs image_size >= 1 and 3 mean/std values")
        return pre

    def __call__(self, img: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) float32, equal to the torchvision eval transform."""
        from .data.images import to_rgb  # numpy + PIL only

        img = to_rgb(img)
        size = self.image_size
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
        # centre crop (the resized image is never smaller than the crop); round() as torchvision
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        x = np.asarray(img, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x - mean) / std).transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------------- decision rule


@dataclass(frozen=True)
class ThresholdRule:
    """Two classes: predict ``positive`` when its probability >= ``value``, else the other class."""

    value: float
    positive: int
    positive_name: str
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = ""
        if "target_recall" in self.info:
            extra = f" (calibrated for recall >= {self.info['target_recall']:g} on the {self.info.get('split', '?')} split)"
        return f"predicts '{self.positive_name}' when P({self.positive_name}) >= {self.value:.6g}{extra}"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, 2) probabilities -> (N,) class indices."""
        pos = probs[:, self.positive] >= self.value
        return np.where(pos, self.positive, 1 - self.positive)


def threshold_rule(threshold: Any, info: Optional[dict], classnames: Sequence[str]) -> Optional[ThresholdRule]:
    """The rule stored with a calibrated checkpoint/model, or None (argmax)."""
    if threshold is None:
        return None
    if len(classnames) != 2:
        raise TinltError(f"a decision threshold needs 2 classes, the model has {len(classnames)}")
    info = dict(info or {})
    pos = int(info.get("positive_class", 1))
    if pos not in (0, 1):
        raise TinltError(f"threshold info: positive_class must be 0 or 1, got {pos}")
    value = float(threshold)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise TinltError(f"threshold must be a probability in [0, 1], got {threshold}")
    return ThresholdRule(value=value, positive=pos, positive_name=str(classnames[pos]), info=info)


def rows_from_probs(
    paths: Sequence[str | Path],
    probs: np.ndarray,
    classnames: Sequence[str],
    topk: int,
    rule: Optional[ThresholdRule] = None,
) -> list[dict]:
    """One row per image: top-k classes by probability, plus ``prediction`` when a threshold applies."""
    k = max(1, min(int(topk), len(classnames)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    decided = rule.decide(probs) if rule is not None else None
    rows = []
    for n, p in enumerate(paths):
        row: dict[str, Any] = {
            "path": str(p),
            "topk": [{"class": classnames[i], "index": int(i), "score": round(float(probs[n, i]), 6)} for i in order[n]],
        }
        if decided is not None:
            c = int(decided[n])
            row["prediction"] = {"class": classnames[c], "index": c, "threshold": rule.value,
                                 "positive": rule.positive_name}
        rows.append(row)
    return rows


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- the ONNX model


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
        self.preprocess = Preprocess.from_dict(
            _json_meta(self.metadata, "preprocess", self.path), where=f"{self.path}: metadata 'preprocess'"
        )
        thr = json.loads(self.metadata.get("threshold", "null") or "null")
        thr_info = json.loads(self.metadata.get("threshold_info", "null") or "null")
        self.rule = threshold_rule(thr, thr_info, self.classnames)
        self.input_name = self.session.get_inputs()[0].name

    def meta(self, key: str, default: Any = None) -> Any:
        return json.loads(self.metadata[key]) if key in self.metadata else default

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) normalised float32 -> (N, C) logits."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def predict(self, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64, quiet: bool = False) -> list[dict]:
        """Rows as :func:`rows_from_probs`; an unreadable image gives a row with ``error``."""
        from .data.images import open_image

        paths = collect_images(inputs)
        rows: list[dict] = []
        for start in _progress(range(0, len(paths), max(1, batch_size)), quiet=quiet):
            batch, kept = [], []
            for p in paths[start : start + batch_size]:
                try:
                    batch.append(self.preprocess(open_image(p)))
                    kept.append(p)
                except Exception as e:  # one unreadable file must not sink the rest
                    rows.append({"path": str(p), "error": f"{type(e).__name__}: {e}".splitlines()[0]})
            if batch:
                probs = softmax(self.logits(np.stack(batch)))
                rows.extend(rows_from_probs(kept, probs, self.classnames, topk, self.rule))
        return rows


def _progress(it: Iterable, quiet: bool) -> Iterable:
    import os
    import sys

    if quiet or not (sys.stderr.isatty() or os.environ.get("TINLT_PROGRESS") == "1"):
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, desc="predict", unit="batch", leave=False, dynamic_ncols=True)


def predict_onnx(
    model: str | Path, inputs: Sequence[str | Path], topk: int = 5, batch_size: int = 64, quiet: bool = False
) -> tuple[list[dict], Optional[ThresholdRule]]:
    clf = OnnxClassifier(model)
    return clf.predict(inputs, topk=topk, batch_size=batch_size, quiet=quiet), clf.rule


# ----------------------------------------------------------------------------- output


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """``.json``: the rows as they are; ``.csv``: path, class_i/score_i, [prediction], error."""
    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise TinltError(f"--out must end in .csv or .json, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2))
        return out
    k = max((len(r.get("topk", [])) for r in rows), default=0)
    decided = any("prediction" in r for r in rows)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        head = ["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"score_{i}")]
        w.writerow(head + (["prediction", "threshold"] if decided else []) + ["error"])
        for r in rows:
            cells = [c for t in r.get("topk", []) for c in (t["class"], t["score"])]
            cells += [""] * (2 * k - len(cells))
            if decided:
                pred = r.get("prediction")
                cells += [pred["class"], pred["threshold"]] if pred else ["", ""]
            w.writerow([r["path"]] + cells + [r.get("error", "")])
    return out


def format_predictions(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"{r['path']}: skipped ({r['error']})")
            continue
        tops = ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["topk"])
        pred = f" -> {r['prediction']['class']}" if "prediction" in r else ""
        lines.append(f"{r['path']}: {tops}{pred}")
    return "\n".join(lines)
