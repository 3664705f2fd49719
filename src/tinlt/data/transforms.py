"""Image transforms: CLIP-style evaluation preprocessing and the paper's training augmentation.

Both start by making the image upright 8-bit RGB (:func:`tinlt.data.images.to_rgb`), so
greyscale, palette, CMYK, 16-bit and transparent images all work, and end with a
normalised float tensor (3, image_size, image_size).

* eval: resize the shorter side to ``image_size`` (bicubic), center crop, normalise —
  exactly CLIP's preprocessing.
* train ``paper``: rotation within +-10 degrees (filled with the mean colour, which
  normalises to ~0), random resized crop (scale 0.5-1, so the object mostly stays in view),
  horizontal flip, colour jitter 0.2 on brightness, contrast and saturation; computed on
  the output square (:mod:`tinlt.data.augment`: 3x the images/s of the full-image chain).
* train ``none``: the eval pipeline.
* eval with test-time ensembling (``data.tta``; LIFT's TTE): a (V, 3, S, S) stack of views
  per image. ``flip``: the eval crop and its mirror image. ``five_crop`` / ``ten_crop``: the
  shorter side resized to S + ``tta_expand``, then torchvision's five crops (corners and
  centre), and for ten also those of the mirrored image. Models average the views' logits.

``uint8=True`` (the trainer's choice) stops before normalising: a uint8 (3, S, S) tensor,
a quarter of the bytes to collate, pin and copy; :func:`normalize_batch` then normalises
the batch where it lands (on the GPU for a GPU run).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from ..config import AUGMENTS, TTA_MODES, check_choice
from ..errors import TinltError
from .augment import CROP_RATIO, CROP_SCALE, PaperAugment
from .images import to_rgb


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
    uint8: bool = False,
) -> T.Compose:
    """Transform from a PIL image (or uint8 array) to a normalised (3, S, S) float tensor,
    or for evaluation with test-time ensembling a (V, 3, S, S) stack (see the module doc);
    ``uint8``: an unnormalised uint8 tensor instead (single views only)."""
    check_choice("data.augment", augment, AUGMENTS)
    check_choice("data.tta", tta, TTA_MODES)
    if int(image_size) < 1:
        raise TinltError(f"config key 'data.image_size' must be >= 1, got {image_size}")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise TinltError(f"image mean/std need 3 values (RGB), got mean={mean} std={std}")
    size = int(image_size)
    normalise = [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=mean, std=std)]
    to_tensor = [T.PILToTensor()] if uint8 else [T.ToImage()] + normalise
    if train and augment == "paper":
        fill = tuple(int(round(m * 255)) for m in mean)
        return T.Compose([ToRGB(), PaperAugment(size, fill)] + ([] if uint8 else normalise))
    if uint8 and not train and tta != "none":
        raise TinltError("uint8 output is for single views; data.tta gives a stack of views")
    if train or tta == "none":
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


def draft_size(image_size: int, train: bool, augment: str = "paper") -> int:
    """The smallest side a decoded image needs for these transforms at ``image_size``: JPEGs
    twice as large are decoded at 1/2 to 1/8 scale (``Image.draft``), never below it. The
    paper's smallest crop is scale x aspect = 0.5 x 3/4 of the image's area across its short
    side, so training needs ``image_size / sqrt(0.375)`` (1.63x) for that crop to keep its pixels."""
    if train and augment == "paper":
        return int(math.ceil(image_size / math.sqrt(CROP_SCALE[0] * CROP_RATIO[0])))
    return int(image_size)


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 batch (N, 3, S, S) -> float32 (x / 255 - mean) / std, on the batch's device;
    a float batch (already normalised on the CPU) is returned as it is."""
    if images.dtype != torch.uint8:
        return images
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    # x * (1 / 255), then - mean, / std: torchvision's own ops in its order, so bit-identical to the CPU path
    return images.float().mul_(1.0 / 255).sub_(m).div_(s)
