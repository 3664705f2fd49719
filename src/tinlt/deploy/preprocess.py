"""A model's evaluation transform in PIL + numpy (stored in exported models' metadata).

``Preprocess`` mirrors ``tinlt.data.transforms`` eval mode step by step: upright 8-bit
RGB, shorter side resized to ``image_size`` with PIL bicubic (what torchvision itself
calls for PIL input), centre crop with torchvision's rounding, then
``(x / 255 - mean) / std`` in float32. With test-time ensembling (``tta``) it gives the same
stack of views as the torch transform (flip; or torchvision's five / ten crops of the image
resized to ``image_size + tta_expand``), and backends average the views' logits. Imports
only numpy and PIL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import TinltError


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
