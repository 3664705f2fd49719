"""Image transforms: CLIP-style evaluation preprocessing and the paper's training augmentation.

Both start by making the image upright 8-bit RGB (:func:`tinlt.data.images.to_rgb`), so
greyscale, palette, CMYK, 16-bit and transparent images all work, and end with a
normalised float tensor (3, image_size, image_size).

* eval: resize the shorter side to ``image_size`` (bicubic), center crop, normalise —
  exactly CLIP's preprocessing.
* train ``paper``: random resized crop (scale 0.5-1, so the object mostly stays in view),
  horizontal flip, rotation within +-10 degrees (filled with the mean colour, which
  normalises to ~0), colour jitter 0.2 on brightness, contrast and saturation.
* train ``none``: the eval pipeline.
* eval with test-time ensembling (``data.tta``; LIFT's TTE): a (V, 3, S, S) stack of views
  per image. ``flip``: the eval crop and its mirror image. ``five_crop`` / ``ten_crop``: the
  shorter side resized to S + ``tta_expand``, then torchvision's five crops (corners and
  centre), and for ten also those of the mirrored image. Models average the views' logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..config import AUGMENTS, TTA_MODES, check_choice
from ..errors import TinltError
from .images import to_rgb

CROP_SCALE = (0.5, 1.0)
ROTATION_DEGREES = 10.0
JITTER = 0.2


class ToRGB:
    """Array or PIL image -> upright 8-bit RGB PIL image (picklable for DataLoader workers)."""

    def __call__(self, img):
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        return to_rgb(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Views:
    """PIL image -> (V, 3, S, S): ``views`` (a torchvision multi-view transform) then ``each`` per view."""

    def __init__(self, views, each) -> None:
        self.views, self.each = views, each

    def __call__(self, img):
        return torch.stack([self.each(v) for v in self.views(img)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(views={self.views!r}, each={self.each!r})"


class FlipPair:
    """An image and its mirror image (torchvision has no two-view flip)."""

    def __call__(self, img):
        return img, T.functional.horizontal_flip(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    augment: str = "paper",
    tta: str = "none",
    tta_expand: int = 24,
) -> T.Compose:
    """Transform from a PIL image (or uint8 array) to a normalised (3, S, S) float tensor,
    or for evaluation with test-time ensembling a (V, 3, S, S) stack (see the module doc)."""
    check_choice("data.augment", augment, AUGMENTS)
    check_choice("data.tta", tta, TTA_MODES)
    if int(image_size) < 1:
        raise TinltError(f"config key 'data.image_size' must be >= 1, got {image_size}")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise TinltError(f"image mean/std need 3 values (RGB), got mean={mean} std={std}")
    size = int(image_size)
    to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]
    if train and augment == "paper":
        fill = tuple(int(round(m * 255)) for m in mean)
        steps = [
            ToRGB(),
            T.RandomRotation(ROTATION_DEGREES, interpolation=InterpolationMode.BILINEAR, fill=fill),
            T.RandomResizedCrop(size, scale=CROP_SCALE, interpolation=InterpolationMode.BICUBIC, antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
        ]
    elif train or tta == "none":
        steps = [
            ToRGB(),
            T.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(size),
        ]
    else:
        crop = tta != "flip"
        resize = T.Resize(size + (int(tta_expand) if crop else 0), interpolation=InterpolationMode.BICUBIC,
                          antialias=True)
        views = {"flip": T.Compose([T.CenterCrop(size), FlipPair()]), "five_crop": T.FiveCrop(size),
                 "ten_crop": T.TenCrop(size)}[tta]
        return T.Compose([ToRGB(), resize, Views(views, T.Compose(to_tensor))])
    return T.Compose(steps + to_tensor)
