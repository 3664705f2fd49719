"""What every prediction path shares: inputs, preprocessing, the batch loop and its rows.

Owns :func:`collect_images` (files and folders -> image paths), :class:`Preprocess` (the
evaluation transform in PIL + numpy, stored in exported models' metadata),
:func:`predict_rows` (the one loop from image files to prediction rows, behind any
:class:`Backend`: the ONNX graph of ``onnx_predict`` or the checkpoint of ``predict``),
and writing/printing the rows. Imports only numpy and PIL, so the torch-free predictor
can use all of it.

``Preprocess`` mirrors ``tinlt.data.transforms`` eval mode step by step: upright 8-bit
RGB, shorter side resized to ``image_size`` with PIL bicubic (what torchvision itself
calls for PIL input), centre crop with torchvision's rounding, then
``(x / 255 - mean) / std`` in float32.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import TinltError
from ..metrics import ThresholdRule

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


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
        from ..data.images import to_rgb  # numpy + PIL only

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


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------- the batch loop


class Backend(Protocol):
    """What :func:`predict_rows` needs from a model: its classes, its decision rule, its
    preprocessing of one PIL image, and the class probabilities of a stacked batch."""

    classnames: list[str]
    rule: Optional[ThresholdRule]

    def preprocess(self, image: Image.Image) -> np.ndarray: ...

    def probs(self, batch: np.ndarray) -> np.ndarray: ...


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


def predict_rows(backend: Backend, inputs: Sequence[str | Path], *, topk: int = 5, batch_size: int = 64,
                 quiet: bool = False) -> list[dict]:
    """Rows as :func:`rows_from_probs` for every image in ``inputs``, in order; an unreadable
    image gives a row with ``error`` instead and does not stop the others."""
    from ..data.images import open_image
    from ..engine.progress import progress  # tqdm only: no torch

    paths = collect_images(inputs)
    rows: list[dict] = []
    step = max(1, int(batch_size))
    for start in progress(range(0, len(paths), step), desc="predict", unit="batch", quiet=quiet):
        batch, kept = [], []
        for p in paths[start : start + step]:
            try:
                batch.append(backend.preprocess(open_image(p)))
                kept.append(p)
            except Exception as e:  # one unreadable file must not sink the rest
                rows.append({"path": str(p), "error": f"{type(e).__name__}: {e}".splitlines()[0]})
        if batch:
            rows.extend(rows_from_probs(kept, backend.probs(np.stack(batch)), backend.classnames, topk, backend.rule))
    return rows


# ----------------------------------------------------------------------------- output


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """``.json``: the rows as they are; ``.csv``: path, class_i/score_i, [prediction], error."""
    from ..fileio import write_text

    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise TinltError(f"--out must end in .csv or .json, got {out}")
    if out.suffix.lower() == ".json":
        return write_text(out, json.dumps(rows, indent=2))
    import io

    k = max((len(r.get("topk", [])) for r in rows), default=0)
    decided = any("prediction" in r for r in rows)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    head = ["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"score_{i}")]
    w.writerow(head + (["prediction", "threshold"] if decided else []) + ["error"])
    for r in rows:
        cells = [c for t in r.get("topk", []) for c in (t["class"], t["score"])]
        cells += [""] * (2 * k - len(cells))
        if decided:
            pred = r.get("prediction")
            cells += [pred["class"], pred["threshold"]] if pred else ["", ""]
        w.writerow([r["path"]] + cells + [r.get("error", "")])
    return write_text(out, buf.getvalue())


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
