"""Image decoding: any file Pillow reads becomes an upright 8-bit RGB image, within a size bound.

* EXIF orientation is applied (phone photos are stored sideways).
* Greyscale, palette, CMYK, 16-bit ('I;16', 'I') and float ('F') images are mapped to RGB;
  16-bit values are scaled by 255/65535, not clipped. Transparent pixels (RGBA, LA, PA and
  palette images with a transparency entry) are composited on white.
* Decompression bombs: Pillow refuses images over ~179 MP by default. We raise the bound
  to :data:`MAX_PIXELS` (200 MP, the size of a large panorama) and decode big JPEGs at
  1/2, 1/4 or 1/8 scale via ``Image.draft``, so a 14000x14000 JPEG costs a few MB, not
  600 MB. A non-JPEG over the bound is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import BinaryIO, Optional, Union

import numpy as np
from PIL import Image, ImageOps

MAX_PIXELS = 200_000_000
# JPEGs at least twice this on both sides decode at 1/2..1/8 scale, never below it: the one rule
# for evaluation, predict and serve, so all three see the same pixels (training: transforms.draft_size)
DEFAULT_DRAFT_SIZE = 1024
# Pillow raises DecompressionBombError above 2x this, and warns above it; we check the
# (possibly draft-reduced) size ourselves against MAX_PIXELS in open_image.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255)


_CHUNK_ROWS_PIXELS = 1 << 20  # float64 work in slices of ~1 MP: a 40 MP 16-bit image once took ~1 GB here


def decoded_bytes(img: Image.Image) -> int:
    """Bytes of ``img``'s pixels once decoded at its mode (width x height x bands x bytes per sample),
    known from the header alone."""
    from PIL import ImageMode

    try:
        per_sample = int(ImageMode.getmode(img.mode).typestr[-1])
    except (KeyError, ValueError):
        per_sample = 4
    return img.width * img.height * len(img.getbands()) * per_sample


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16/32-bit integer or float pixel values into 0..255 (NaN as 0, infinities clipped),
    working on slices so the float64 copies stay small."""
    if mode.startswith("I;16"):  # round(a / 257) in integers: 257 is odd, so no value sits on a half
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    finite = np.isfinite(arr) if arr.dtype.kind == "f" else None
    if finite is not None and not finite.all():
        arr = np.where(finite, arr, 0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    out = np.empty(arr.shape, dtype=np.uint8)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for start in range(0, flat_in.size, _CHUNK_ROWS_PIXELS):
        a = flat_in[start:start + _CHUNK_ROWS_PIXELS].astype(np.float64)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = a
        elif lo >= 0.0 and hi <= 65535.0:  # 16-bit data opened as 32-bit 'I' (e.g. older Pillow PNGs)
            scaled = a / 257.0
        else:  # arbitrary range: stretch
            scaled = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        flat_out[start:start + _CHUNK_ROWS_PIXELS] = np.clip(np.round(scaled), 0, 255)
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB version of ``img`` (see module docstring for the rules)."""
    img.load()
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # malformed EXIF must not cost us the pixels: keep them as stored
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        grey = _to_uint8(np.asarray(img), mode)
        if grey.ndim == 3:  # multi-channel 16-bit read by newer Pillow
            grey = grey[..., :3] if grey.shape[-1] >= 3 else grey[..., 0]
        img = Image.fromarray(grey)
        return img if img.mode == "RGB" else img.convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # Pillow has no La -> RGBA
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "LAB":  # CIELAB (some TIFFs): a colour-managed conversion, not a channel copy
        from PIL import ImageCms

        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(img, lab_to_srgb)
    try:
        return img.convert("RGB")
    except ValueError:  # any other mode Pillow cannot convert directly: take the channels as they are
        arr = np.asarray(img)
        arr = arr[..., :3] if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
        return Image.fromarray(_to_uint8(arr, "RGB") if arr.dtype != np.uint8 else arr, "RGB")


def open_image(path: Union[str, os.PathLike, BinaryIO], draft_size: Optional[int] = None,
               max_pixels: Optional[int] = None, max_bytes: Optional[int] = None) -> Image.Image:
    """Decode ``path`` (or an open binary file, e.g. an upload's bytes) to an upright RGB image.

    ``draft_size``: a JPEG at least twice this size on both sides is decoded at a reduced
    scale that keeps both sides >= ``draft_size`` (libjpeg DCT scaling: fast and small).
    Raises ``ValueError`` for an image over ``max_pixels`` (default :data:`MAX_PIXELS`) after
    that reduction or over ``max_bytes`` decoded (:func:`decoded_bytes`), before any pixel is
    decoded (decompression bombs), and whatever Pillow
    raises for unreadable files (``OSError``, ``SyntaxError``, ...).
    """
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    with contextlib.ExitStack() as stack:
        f = path if hasattr(path, "read") else stack.enter_context(open(path, "rb"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size below
            img = Image.open(f)
            if draft_size and img.format == "JPEG":
                img.draft(None, (int(draft_size), int(draft_size)))
            w, h = img.size
            if w * h > limit:
                raise ValueError(f"image is {w}x{h} = {w * h / 1e6:.3g} MP, over the {limit / 1e6:.3g} MP limit")
            if max_bytes is not None and decoded_bytes(img) > max_bytes:
                raise ValueError(f"image is {w}x{h} in mode {img.mode}: {decoded_bytes(img) / 2**20:.4g} MiB "
                                 f"decoded, over the {max_bytes / 2**20:.4g} MiB limit")
            img.load()
    return to_rgb(img)
