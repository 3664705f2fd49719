"""The paper's augmentation computed on the output square (tinlt.data.augment) against the
reference: torchvision's own chain on the full image (rotate -> random resized crop -> flip ->
jitter), the pipeline tinlt shipped before. Expected values come from torchvision, scipy's
two-sample tests and hand computations, never from tinlt's code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from tinlt.data.augment import GREY, PaperAugment, jitter_affine, source_map, warp
from tinlt.data.transforms import build_transforms, draft_size, normalize_batch

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
FILL = tuple(int(round(m * 255)) for m in MEAN)


def photo(width=500, height=375, seed=0) -> Image.Image:
    """Smooth random colours: an image whose every pixel differs, like a photo, not like noise."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


def reference(img, angle, box, flip, size):
    out = F.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=list(FILL))
    out = F.resized_crop(out, *box, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return F.horizontal_flip(out) if flip else out


@pytest.mark.parametrize("angle,box,flip,size", [
    (0.0, (0, 0, 375, 500), False, 224),      # the whole image, squeezed
    (7.0, (40, 60, 250, 300), False, 224),    # counter-clockwise, a crop off-centre
    (-9.0, (10, 100, 300, 250), True, 224),   # clockwise and mirrored
    (3.0, (20, 30, 200, 250), False, 400),    # enlarged
])
def test_warp_matches_the_full_image_chain(angle, box, flip, size):
    img = photo()
    got = warp(img, source_map(500, 375, angle, box, size, flip), size, FILL) + torch.tensor(FILL).view(3, 1, 1)
    got = got.round().clamp(0, 255).permute(1, 2, 0).numpy()
    ref = np.asarray(reference(img, angle, box, flip, size), dtype=np.float64)
    diff = np.abs(got - ref)
    # measured 0.2-0.5 grey levels; a mirrored, mis-rotated or shifted warp is tens of levels off
    assert diff.mean() < 1.5, diff.mean()
    assert np.median(diff) <= 1.0


def test_the_mirror_and_the_turn_point_the_right_way():
    """A red left band: turned 10 degrees, the middle of the left side stays red and the
    corners, turned out of the frame, get the fill colour; mirrored, the red goes right."""
    arr = np.full((200, 200, 3), 255, dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    img = Image.fromarray(arr)
    out = (warp(img, source_map(200, 200, 10.0, (0, 0, 200, 200), 100, False), 100, FILL)
           + torch.tensor(FILL).view(3, 1, 1)).round().byte()
    assert out[0, 50, 2].item() > 200 and out[1, 50, 2].item() < 60 and out[2, 50, 2].item() < 60
    assert tuple(out[:, 0, 0].tolist()) == FILL  # the corner rotated out of the frame
    mirrored = warp(img, source_map(200, 200, 0.0, (0, 0, 200, 200), 100, True), 100, FILL) + torch.tensor(FILL).view(3, 1, 1)
    assert mirrored[1, 50, 97].item() < 30 and mirrored[1, 50, 2].item() > 225


def coordinate_image(width=240, height=180) -> Image.Image:
    """R = the pixel's column, G = its row, B = 255: every output pixel tells where it came from."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 255)], axis=-1).astype(np.uint8))


def geometry(out: np.ndarray, size: int) -> dict:
    """Fit source = J (u, v) + c over interior pixels (B = 255): the crop's area, aspect,
    rotation, mirror and centre, read off the output alone."""
    inside = out[..., 2] == 255
    inside[:2] = inside[-2:] = False
    inside[:, :2] = inside[:, -2:] = False
    v, u = np.nonzero(inside)
    X = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64)
    (A, B, C), *_ = np.linalg.lstsq(X, out[v, u, 0].astype(np.float64), rcond=None)
    (D, E, Fc), *_ = np.linalg.lstsq(X, out[v, u, 1].astype(np.float64), rcond=None)
    det = A * E - B * D
    h = size / 2
    return {"area": abs(det) * size * size, "log_aspect": math.log(math.hypot(A, D) / math.hypot(B, E)),
            "angle": math.degrees(math.atan2(B, E)), "flip": det < 0, "centre_x": A * h + B * h + C,
            "centre_y": D * h + E * h + Fc}


def test_crop_scale_aspect_rotation_and_flip_are_drawn_as_the_reference_draws_them():
    size, n = 64, 300
    img = coordinate_image()
    ref_chain = T.Compose([
        T.RandomRotation(10.0, interpolation=InterpolationMode.BILINEAR, fill=(0, 0, 0)),
        T.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True),
        T.RandomHorizontalFlip(),
    ])
    ours = PaperAugment(size, (0, 0, 0), jitter=0.0)
    torch.manual_seed(0)
    ref = [geometry(np.asarray(ref_chain(img)), size) for _ in range(n)]
    torch.manual_seed(1)
    new = [geometry(ours(img).permute(1, 2, 0).numpy(), size) for _ in range(n)]
    for key in ("area", "log_aspect", "angle", "centre_x", "centre_y"):
        a, b = [r[key] for r in ref], [r[key] for r in new]
        assert stats.ks_2samp(a, b).pvalue > 0.01, (key, np.mean(a), np.mean(b))
    area = np.array([r["area"] for r in new]) / (240 * 180)
    assert 0.48 < area.min() and area.max() < 1.02  # scale 0.5-1 of the image (rounding aside)
    assert max(abs(r["angle"]) for r in new) < 10.3
    flips = [sum(r["flip"] for r in ref), sum(r["flip"] for r in new)]
    assert stats.fisher_exact([[flips[0], n - flips[0]], [flips[1], n - flips[1]]]).pvalue > 0.01


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
def test_fused_jitter_equals_torchvisions_three_adjustments(order):
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.uniform(0.35, 0.65, (3, 20, 30)), dtype=torch.float32)  # no clamping mid-way
    b, c, s = 1.17, 0.84, 1.12
    ref = x
    for op in order:
        ref = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation][op](ref, [b, c, s][op])
    M, o = jitter_affine(order, b, c, s, (x * 255).mean(dim=(1, 2)).tolist())
    got = (torch.tensor(M) @ (x * 255).view(3, -1) + torch.tensor(o).unsqueeze(1)).view(3, 20, 30) / 255
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
    # the luma weights are torchvision's (ITU-R 601)
    assert GREY == (0.2989, 0.587, 0.114)


def test_uint8_output_normalised_on_the_device_equals_the_float_pipeline():
    img = photo(90, 70)
    for train, augment in ((True, "paper"), (True, "none"), (False, "none")):
        f32 = build_transforms(32, MEAN, STD, train=train, augment=augment)
        u8 = build_transforms(32, MEAN, STD, train=train, augment=augment, uint8=True)
        torch.manual_seed(5)
        a = f32(img)
        torch.manual_seed(5)
        b = u8(img)
        assert b.dtype == torch.uint8 and b.shape == (3, 32, 32)
        by_hand = (b.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(3, 1, 1)) / torch.tensor(
            STD, dtype=torch.float64).view(3, 1, 1)
        torch.testing.assert_close(normalize_batch(b.unsqueeze(0), MEAN, STD)[0].double(), by_hand, atol=1e-5, rtol=0)
        assert torch.equal(normalize_batch(b.unsqueeze(0), MEAN, STD)[0], a)  # bit for bit: runs must not drift
    floats = torch.zeros(1, 3, 4, 4)
    assert normalize_batch(floats, MEAN, STD) is floats  # already normalised: untouched


def test_draft_size_keeps_the_smallest_crop_at_full_resolution(tmp_path):
    from omegaconf import OmegaConf

    from tinlt.data.samples import Samples
    from tinlt.engine.loaders import train_dataset

    # by hand: the smallest crop is sqrt(0.5 * 3/4) = 0.612 of the short side; 224 / 0.612 = 365.8
    assert draft_size(224, train=True) == 366
    assert draft_size(224, train=False) == 224 and draft_size(224, train=True, augment="none") == 224
    path = tmp_path / "big.jpg"
    photo(1600, 1200).save(path, quality=90)
    cfg = OmegaConf.create({"data": {"image_size": 224, "augment": "paper"}})
    ds = train_dataset(Samples(items=[str(path)], labels=np.array([0]), classnames=["a"]), None, cfg)
    # 1/2 scale keeps 600 >= 366; 1/4 would give 300 < 366
    assert ds.dataset._decode(0).size == (800, 600)
