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
``(x / 255 - mean) / std`` in float32. With test-time ensembling (``tta``) it gives the same
stack of views as the torch transform (flip; or torchvision's five / ten crops of the image
resized to ``image_size + tta_expand``), and backends average the views' logits.
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
ALL_PROBS_MAX = 100  # prediction rows carry every class's probability up to this many classes


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
    tta: str = "none"  # none | flip | five_crop | ten_crop
    tta_expand: int = 24

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "tta": self.tta,
            "tta_expand": self.tta_expand,
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
                tta=str(d.get("tta", "none")),
                tta_expand=int(d.get("tta_expand", 24)),
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
        if pre.tta not in ("none", "flip", "five_crop", "ten_crop"):
            raise TinltError(f"{where}: unknown test-time ensembling {pre.tta!r} (this tinlt knows flip, five_crop, "
                             "ten_crop)")
        return pre

    @staticmethod
    def _resize(img: Image.Image, size: int) -> Image.Image:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)  # torchvision truncates the long side
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        return img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC) if (new_w, new_h) != (w, h) else img

    def _crops(self, img: Image.Image) -> list[Image.Image]:
        """The views before normalisation, as torchvision's CenterCrop / FiveCrop / TenCrop cut them."""
        s, (w, h) = self.image_size, img.size
        # centre crop (the resized image is never smaller than the crop); round() as torchvision
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        centre = img.crop((left, top, left + s, top + s))
        if self.tta == "none":
            return [centre]
        if self.tta == "flip":
            return [centre, centre.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]

        def five(im):
            corners = [(0, 0), (w - s, 0), (0, h - s), (w - s, h - s)]  # tl, tr, bl, br (x, y)
            return [im.crop((x, y, x + s, y + s)) for x, y in corners] + [im.crop((left, top, left + s, top + s))]

        views = five(img)
        return views + five(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) if self.tta == "ten_crop" else views

    def __call__(self, img: Image.Image) -> np.ndarray:
        """PIL image -> (3, S, S) float32 (or (V, 3, S, S) with test-time views), equal to the
        torchvision eval transform."""
        from ..data.images import to_rgb  # numpy + PIL only

        expand = self.tta_expand if self.tta in ("five_crop", "ten_crop") else 0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = []
        for view in self._crops(self._resize(to_rgb(img), self.image_size + expand)):
            x = np.asarray(view, dtype=np.uint8).astype(np.float32) * np.float32(1.0 / 255.0)
            out.append(((x - mean) / std).transpose(2, 0, 1))
        return out[0].copy() if self.tta == "none" else np.stack(out)


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
    """One row per image: top-k classes by probability, every class's probability (``probs``,
    up to ALL_PROBS_MAX classes), plus ``prediction`` when a threshold applies."""
    k = max(1, min(int(topk), len(classnames)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    decided = rule.decide(probs) if rule is not None else None
    rows = []
    for n, p in enumerate(paths):
        row: dict[str, Any] = {
            "path": str(p),
            "topk": [{"class": classnames[i], "index": int(i), "score": round(float(probs[n, i]), 6)} for i in order[n]],
        }
        if len(classnames) <= ALL_PROBS_MAX:
            row["probs"] = {str(c): round(float(probs[n, i]), 6) for i, c in enumerate(classnames)}
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


def sort_rows(rows: list[dict], by: str) -> list[dict]:
    """Rows by one class's probability, highest first (e.g. rank a folder by P(rusty)); unreadable last."""
    known = next((list(r["probs"]) for r in rows if "probs" in r), None)
    if known is None:
        raise TinltError("--sort-by needs every class's probability (models with up to "
                         f"{ALL_PROBS_MAX} classes)")
    if by not in known:
        from ..errors import did_you_mean

        raise TinltError(f"--sort-by {by!r}: not a class of this model{did_you_mean(by, known)} "
                         f"(classes: {', '.join(known[:10])})")
    return sorted(rows, key=lambda r: -r["probs"][by] if "probs" in r else float("inf"))


def write_predictions(rows: list[dict], out: str | Path) -> Path:
    """``.json``: the rows as they are; ``.csv``: path, class_i/score_i, a ``p_<class>`` column
    per class, [prediction], error."""
    from ..fileio import write_text

    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise TinltError(f"--out must end in .csv or .json, got {out}")
    if out.suffix.lower() == ".json":
        return write_text(out, json.dumps(rows, indent=2))
    import io

    k = max((len(r.get("topk", [])) for r in rows), default=0)
    decided = any("prediction" in r for r in rows)
    names = next((list(r["probs"]) for r in rows if "probs" in r), [])
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    head = ["path"] + [c for i in range(1, k + 1) for c in (f"class_{i}", f"score_{i}")] + [f"p_{n}" for n in names]
    w.writerow(head + (["prediction", "threshold"] if decided else []) + ["error"])
    for r in rows:
        cells = [c for t in r.get("topk", []) for c in (t["class"], t["score"])]
        cells += [""] * (2 * k - len(cells))
        cells += [r["probs"][n] for n in names] if "probs" in r else [""] * len(names)
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
