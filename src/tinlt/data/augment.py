"""The paper's training augmentation, computed on the small output image instead of the full-size one.

The paper's recipe (and tinlt's first pipeline) was torchvision's chain on the decoded image:
rotate the whole image (+-10 degrees, bilinear, corners filled with the mean colour), random
resized crop of the rotated image (scale 0.5-1, aspect 3/4-4/3, bicubic), horizontal flip,
colour jitter. On 500x375 JPEGs at 224 px that ran at 94 images/s on one core against 338 for
a bare crop + flip: the rotation touched every pixel of the full image and most were cropped
away.

:class:`PaperAugment` draws the same parameters from the same distributions (the crop is
sampled on the image's own size, as it was on the same-size rotated frame) and maps them to
one affine transform from the output square back to the source: output -> crop box ->
un-rotate. It then

1. crops the source to that map's footprint (the crop box's pre-image, a rotated rectangle,
   plus the margin its rotation needs),
2. shrinks that region with torch's antialiased uint8 resize until the crop box spans about
   ``size`` pixels (never enlarges: small images keep every pixel),
3. warps it to ``size`` x ``size`` in one ``grid_sample`` pass (flip folded in; bilinear, or
   bicubic where it enlarges, as the reference crop's resize was), filling what falls outside
   the source with the mean colour, and
4. applies the colour jitter as one fused colour map (:func:`jitter_affine`).

The warp in step 3 shrinks by at most the crop's aspect (4/3), so it does not alias. Pixels
differ from the reference chain by ~0.5 grey levels on average (tests/test_augment.py), and
tests/test_augment.py checks the crop's scale, aspect, position, rotation and flip
distributions against torchvision's chain. Output: a uint8 tensor (3, S, S); normalisation is
the caller's (on the device, :func:`tinlt.data.transforms.normalize_batch`), or
``build_transforms(..., uint8=False)`` adds it on the CPU.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
ROTATION_DEGREES = 10.0
JITTER = 0.2


def crop_box(width: int, height: int, scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop, drawn as torchvision's
    ``RandomResizedCrop`` draws it (10 tries, then a central crop), from torch's generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def source_map(width: int, height: int, angle: float, box, size: int, flip: bool) -> list[float]:
    """Affine (a, b, c, d, e, f): output point (u, v) of the ``size`` square -> source point
    (a u + b v + c, d u + e v + f), continuous coordinates (a pixel's centre at +0.5), for
    "rotate the source by ``angle`` degrees counter-clockwise about its centre (as PIL's
    ``rotate`` does), crop ``box`` = (top, left, h, w), resize to ``size``, mirror if ``flip``"."""
    top, left, h, w = box
    rad = -math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    cx, cy = width / 2, height / 2
    sx, sy = w / size, h / size
    # rotated frame (xr, yr) -> source: PIL's rotate matrix
    # x = cos (xr - cx) + sin (yr - cy) + cx,  y = -sin (xr - cx) + cos (yr - cy) + cy
    # output -> rotated frame: xr = left + sx u (or left + sx (size - u) mirrored), yr = top + sy v
    xu, x0 = (-sx, left + sx * size) if flip else (sx, float(left))
    a, b = cos * xu, sin * sy
    d, e = -sin * xu, cos * sy
    c = cos * (x0 - cx) + sin * (top - cy) + cx
    f = -sin * (x0 - cx) + cos * (top - cy) + cy
    return [a, b, c, d, e, f]


@functools.lru_cache(maxsize=8)
def _centres(size: int) -> np.ndarray:
    """Output pixel centres along one side, in grid_sample's [-1, 1] units (align_corners=False)."""
    return (np.arange(size, dtype=np.float32) * 2 + 1) / size - 1


def warp(img: Image.Image, coeffs, size: int, fill) -> torch.Tensor:
    """``img`` sampled through ``coeffs`` (see :func:`source_map`) into a float (3, size, size)
    tensor on the 0-255 scale **minus** ``fill`` (the caller adds it back with its colour map):
    crop to the footprint, antialiased shrink, one affine pass (bilinear when shrinking or
    level, bicubic when enlarging, as the reference resize did)."""
    a, b, c, d, e, f = coeffs
    W, H = img.size
    corners = [(a * u + b * v + c, d * u + e * v + f) for u in (0, size) for v in (0, size)]
    pad = 3  # the interpolation kernel's reach, in source pixels, after any shrink
    x0 = max(0, math.floor(min(p[0] for p in corners)) - pad)
    y0 = max(0, math.floor(min(p[1] for p in corners)) - pad)
    x1 = min(W, math.ceil(max(p[0] for p in corners)) + pad)
    y1 = min(H, math.ceil(max(p[1] for p in corners)) + pad)
    fill_t = torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1)
    if x1 <= x0 or y1 <= y0:  # the crop lies wholly outside the source (cannot happen for |angle| < 45)
        return torch.zeros(3, size, size)
    region = torch.from_numpy(np.array(img.crop((x0, y0, x1, y1)))).permute(2, 0, 1).unsqueeze(0)  # channels-last
    # source pixels per output pixel along the crop's two sides; shrink until the smaller is ~1.
    # torch's uint8 antialiased resize: 0.18 ms where PIL's bicubic took 1.15 ms (250x210, one core)
    shrink = min(math.hypot(a, d), math.hypot(b, e))
    fx = fy = 1.0
    if shrink > 1.0:
        rw, rh = max(1, round((x1 - x0) / shrink)), max(1, round((y1 - y0) / shrink))
        fx, fy = rw / (x1 - x0), rh / (y1 - y0)
        region = Fn.interpolate(region, size=(rh, rw), mode="bicubic", antialias=True)
    rh, rw = region.shape[-2:]
    # region pixel coordinates -> grid_sample's [-1, 1] (align_corners=False: pixel edges)
    la, lb, lc = a * fx, b * fx, (c - x0) * fx
    ld, le, lf = d * fy, e * fy, (f - y0) * fy
    # grid_sample's grid as outer sums in numpy (x along rows, y down columns): torch's
    # affine_grid took 0.49 ms of a 2.2 ms transform at 224 px, a (S*S, 3) @ (3, 2) product 0.32
    ax, bx, cx = la * size / rw, lb * size / rw, (2 * lc + (la + lb) * size) / rw - 1
    ay, by, cy = ld * size / rh, le * size / rh, (2 * lf + (ld + le) * size) / rh - 1
    t = _centres(size)
    grid = np.empty((1, size, size, 2), dtype=np.float32)
    np.add.outer(t * bx + cx, t * ax, out=grid[0, :, :, 0])
    np.add.outer(t * by + cy, t * ay, out=grid[0, :, :, 1])
    # contiguous before the float copy: subtracting on the channels-last layout took 0.22 ms, 0.09 this way
    src = torch.sub(region.contiguous(), fill_t)  # zero padding then means the fill colour
    mode = "bicubic" if shrink < 1.0 else "bilinear"
    return Fn.grid_sample(src, torch.from_numpy(grid), mode=mode, padding_mode="zeros", align_corners=False)[0]


GREY = (0.2989, 0.587, 0.114)  # torchvision's (ITU-R 601) luma weights, as its jitter uses


def jitter_affine(order, brightness: float, contrast: float, saturation: float, channel_means):
    """(M, o): torchvision's brightness, contrast and saturation adjustments, applied in
    ``order`` (0, 1, 2 = brightness, contrast, saturation), as one colour map x -> M x + o
    (M as 3 rows of 3, o as 3 values; plain floats: 9 numbers cost less than tensor calls).

    Each is linear in the pixel: brightness b x; saturation s x + (1 - s) grey(x); contrast
    c x + (1 - c) mean(grey(x)), whose mean follows from the channel means through the maps
    before it. torchvision clamps to the valid range after each step; here it is done once,
    at the end (a difference only for pixels pushed past white or black mid-way)."""
    M = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    o = [0.0, 0.0, 0.0]
    mu = [float(m) for m in channel_means]
    for op in order:
        if op == 0:
            k, mix, off = brightness, 0.0, 0.0
        elif op == 1:
            now = [sum(M[r][j] * mu[j] for j in range(3)) + o[r] for r in range(3)]
            k, mix, off = contrast, 0.0, (1 - contrast) * sum(g * v for g, v in zip(GREY, now))
        else:
            k, mix, off = saturation, 1 - saturation, 0.0
        # step = k I + mix * (rows all equal to GREY); new M = step M, new o = step o + off
        grey_M = [sum(GREY[j] * M[j][col] for j in range(3)) for col in range(3)]
        grey_o = sum(GREY[j] * o[j] for j in range(3))
        M = [[k * M[r][col] + mix * grey_M[col] for col in range(3)] for r in range(3)]
        o = [k * o[r] + mix * grey_o + off for r in range(3)]
    return M, o


class PaperAugment:
    """PIL RGB image -> uint8 tensor (3, S, S): rotation, random resized crop, flip and colour
    jitter as the paper specifies, computed on the output square (see the module doc)."""

    def __init__(self, size: int, fill, degrees: float = ROTATION_DEGREES, scale=CROP_SCALE,
                 ratio=CROP_RATIO, jitter: float = JITTER) -> None:
        self.size, self.fill = int(size), tuple(int(v) for v in fill)
        self.degrees, self.scale, self.ratio, self.jitter = float(degrees), tuple(scale), tuple(ratio), float(jitter)

    def params(self, width: int, height: int):
        """(angle, crop box, flip, jitter): drawn in the reference chain's order (rotation, crop,
        flip, jitter); jitter = (order of the three adjustments, brightness, contrast, saturation)."""
        angle = torch.empty(1).uniform_(-self.degrees, self.degrees).item()
        box = crop_box(width, height, self.scale, self.ratio)
        flip = bool(torch.rand(1).item() < 0.5)
        lo, hi = max(0.0, 1 - self.jitter), 1 + self.jitter
        order = torch.randperm(3).tolist()
        factors = [torch.empty(1).uniform_(lo, hi).item() for _ in range(3)]
        return angle, box, flip, (order, *factors)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        angle, box, flip, (order, b, c, s) = self.params(*img.size)
        out = warp(img, source_map(*img.size, angle, box, self.size, flip), self.size, self.fill)
        flat = out.view(3, -1)  # the source's colours minus the fill colour
        if self.jitter:  # one fused colour map: torchvision's three adjustments took 0.29 ms of 1.6
            mu = (flat.mean(dim=1) + torch.tensor(self.fill, dtype=torch.float32)).tolist()
            M, o = jitter_affine(order, b, c, s, mu)
        else:
            M, o = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], [0.0, 0.0, 0.0]
        # x = flat + fill, so M x + o = M flat + (M fill + o); +0.5 makes the uint8 cast round
        shift = [sum(M[r][j] * self.fill[j] for j in range(3)) + o[r] + 0.5 for r in range(3)]
        flat = torch.addmm(torch.tensor(shift).unsqueeze(1), torch.tensor(M), flat)
        return flat.clamp_(0, 255.49).to(torch.uint8).view(3, self.size, self.size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, degrees={self.degrees}, scale={self.scale}, "
                f"ratio={tuple(round(r, 4) for r in self.ratio)}, jitter={self.jitter}, fill={self.fill})")
