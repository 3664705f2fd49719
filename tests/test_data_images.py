"""Decoding awkward images to RGB, the transforms, and ImageDataset's handling of bad files."""

from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tinlt.data.dataset import ImageDataset
from tinlt.data.images import MAX_PIXELS, open_image, to_rgb
from tinlt.data.samples import Samples
from tinlt.data.transforms import build_transforms
from tinlt.errors import TinltError

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
STD = (0.26862954, 0.26130258, 0.27577711)
S = 16


def eval_tf(size=S):
    return build_transforms(size, MEAN, STD, train=False, augment="none")


def _chan(img: Image.Image, xy) -> tuple[int, int, int]:
    return img.getpixel(xy)


# ---------------------------------------------------------------- awkward files -> RGB


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (30, 20)
    r, g, b = _chan(img, (15, 10))
    assert r > 200 and g < 50 and b < 50
    assert eval_tf()(img).shape == (3, S, S)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "deep.png"
    arr = np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(p)
    with Image.open(p) as raw:
        assert raw.mode in ("I;16", "I")  # really a 16-bit file
    img = open_image(p)
    assert img.mode == "RGB"
    got = [_chan(img, (x, 0)) for x in range(4)]
    # 255/65535 scaling: 0 -> 0, 32896 -> 128, 65535 -> 255, 1000 -> 3.89 -> 4
    assert got == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (4, 4, 4)]


def test_32bit_int_and_float_modes():
    i = Image.fromarray(np.array([[0, 257 * 200, 65535]], dtype=np.int32), mode="I")
    assert [to_rgb(i).getpixel((x, 0))[0] for x in range(3)] == [0, 200, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert [to_rgb(f).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_palette_with_transparency_goes_on_white(tmp_path):
    p = tmp_path / "pal.png"
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 0 black, index 1 red
    img.putpixel((3, 1), 1)
    img.save(p, transparency=0)  # index 0 is transparent
    rgb = open_image(p)
    assert rgb.mode == "RGB"
    assert _chan(rgb, (0, 0)) == (255, 255, 255)  # transparent black -> white background
    assert _chan(rgb, (3, 1)) == (255, 0, 0)


def test_rgba_half_transparent_composites_on_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 255, 128))
    r, g, b = to_rgb(img).getpixel((0, 0))
    assert 125 <= r <= 129 and 125 <= g <= 129 and b == 255


def test_premultiplied_alpha_and_lab():
    # La: L=100 premultiplied by alpha 128/255 -> straight L = 100*255/128 = 199; on white:
    # (199*128 + 255*127) / 255 = 227
    assert to_rgb(Image.new("La", (2, 2), (100, 128))).getpixel((0, 0)) == (227, 227, 227)
    white = to_rgb(Image.new("LAB", (2, 2), (255, 128, 128))).getpixel((0, 0))  # L*=100, a*=b*=0
    black = to_rgb(Image.new("LAB", (2, 2), (0, 128, 128))).getpixel((0, 0))
    assert min(white) >= 250 and max(black) <= 5


def test_greyscale_and_bilevel(tmp_path):
    p = tmp_path / "grey.png"
    Image.new("L", (5, 7), 77).save(p)
    img = open_image(p)
    assert img.mode == "RGB" and img.size == (5, 7) and _chan(img, (2, 3)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (3, 3), 1)).getpixel((1, 1)) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "phone.jpg"
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(p, exif=exif, quality=95)
    out = open_image(p)
    assert out.size == (10, 20)  # (width, height): now portrait
    top, bottom = _chan(out, (5, 3)), _chan(out, (5, 16))
    assert top[0] > 200 and top[2] < 60  # the left (red) edge turned to the top
    assert bottom[2] > 200 and bottom[0] < 60
    assert eval_tf()(out).shape == (3, S, S)


def test_one_pixel_image(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(p)
    img = open_image(p)
    for tf in (eval_tf(), build_transforms(S, MEAN, STD, train=True, augment="paper")):
        x = tf(img)
        assert x.shape == (3, S, S) and x.dtype == torch.float32


def solid_grey_jpeg(width: int, height: int) -> bytes:
    """A valid baseline greyscale JPEG, built by hand so a huge one costs no encoding time.

    Both Huffman tables hold one 1-bit code ('0'): every 8x8 block is 'DC diff 0' + 'EOB',
    two zero bits, so the scan is all zero bytes (mid-grey image)."""

    def seg(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    dqt = seg(0xDB, b"\x00" + bytes([1] * 64))
    sof = seg(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    one_code = bytes([1] + [0] * 15) + b"\x00"
    dht = seg(0xC4, b"\x00" + one_code) + seg(0xC4, b"\x10" + one_code)
    sos = seg(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    blocks = -(-width // 8) * -(-height // 8)
    scan = bytes(-(-2 * blocks // 8))
    return b"\xff\xd8" + dqt + sof + dht + sos + scan + b"\xff\xd9"


def test_huge_jpeg_decodes_at_reduced_scale(tmp_path):
    p = tmp_path / "huge.jpg"
    p.write_bytes(solid_grey_jpeg(14000, 14000))  # 196 MP, 0.8 MB on disk
    # plain Pillow with its default bound refuses this file: the test is not vacuous
    default_bound = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 89478485
        with pytest.raises(Image.DecompressionBombError):
            Image.open(p)
    finally:
        Image.MAX_IMAGE_PIXELS = default_bound
    img = open_image(p, draft_size=1024)
    assert img.mode == "RGB" and img.size == (1750, 1750)  # 1/8 scale, still >= 1024
    r, g, b = img.getpixel((900, 900))
    assert r == g == b and 120 <= r <= 136  # DC 0 = mid grey
    ds = ImageDataset(Samples([str(p)], np.array([0]), ["grey"]), eval_tf())
    x, label, index = ds[0]
    assert x.shape == (3, S, S) and (label, index) == (0, 0) and ds.bad_items == []


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_oversized_non_jpeg_is_refused_cleanly(tmp_path):
    p = tmp_path / "giant.png"
    p.write_bytes(png_header_only(15000, 15000))  # 225 MP > 200 MP bound, no pixel data needed
    assert 15000 * 15000 > MAX_PIXELS
    with pytest.raises(ValueError, match="over the 200 MP limit"):
        open_image(p)


# ---------------------------------------------------------------- transforms


def test_eval_transform_is_clip_preprocessing():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    img = Image.fromarray(arr)
    got = eval_tf(10)(img)
    # by hand: shorter side -> 10 (bicubic), center 10x10 crop, /255, normalise
    ref = np.asarray(img.resize((20, 10), Image.BICUBIC).crop((5, 0, 15, 10)), dtype=np.float32) / 255.0
    ref = (ref - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    np.testing.assert_allclose(got.numpy(), ref.transpose(2, 0, 1), atol=1e-5)


def test_train_transforms():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(50, 60, 3), dtype=np.uint8))
    paper = build_transforms(S, MEAN, STD, train=True, augment="paper")
    torch.manual_seed(0)
    a = paper(img)
    torch.manual_seed(1)
    b = paper(img)
    torch.manual_seed(0)
    a2 = paper(img)
    assert a.shape == b.shape == (3, S, S)
    assert not torch.equal(a, b) and torch.equal(a, a2)  # random, but seedable
    none = build_transforms(S, MEAN, STD, train=True, augment="none")
    assert torch.equal(none(img), eval_tf()(img))
    x = paper(np.zeros((28, 28), dtype=np.uint8))  # Fashion-MNIST style array
    assert x.shape == (3, S, S)
    with pytest.raises(TinltError, match="data.augment"):
        build_transforms(S, MEAN, STD, train=True, augment="randaugment")


# ---------------------------------------------------------------- ImageDataset


def test_dataset_in_memory_arrays():
    arr = np.zeros((3, 28, 28), dtype=np.uint8)
    arr[1] = 255
    ds = ImageDataset(Samples(arr, np.array([2, 0, 1]), ["a", "b", "c"]), eval_tf())
    x, label, index = ds[1]
    assert x.shape == (3, S, S) and label == 0 and index == 1
    expected = (1.0 - np.array(MEAN)) / np.array(STD)  # white pixels, normalised
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, rtol=1e-4)


def test_dataset_skips_bad_files_with_one_warning(tmp_path, caplog):
    good0, good2 = tmp_path / "g0.png", tmp_path / "g2.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good0)
    Image.new("RGB", (64, 64), (0, 0, 255)).save(good2)
    full = good2.read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(full[: len(full) // 2])
    garbage = tmp_path / "text.jpg"
    garbage.write_text("this is not an image")
    samples = Samples([str(good0), str(truncated), str(good2), str(garbage)], np.array([0, 1, 2, 3]), list("abcd"))
    ds = ImageDataset(samples, eval_tf())
    with caplog.at_level(logging.WARNING, logger="tinlt.data.dataset"):
        x, label, index = ds[1]  # truncated -> next valid one stands in
        assert (label, index) == (2, 2) and x.shape == (3, S, S)
        ds[1]
        x3, label3, index3 = ds[3]  # garbage at the end wraps to the start
        assert (label3, index3) == (0, 0)
    assert [p for p, _ in ds.bad_items] == [str(truncated), str(garbage)]  # once per file
    warned = [r for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warned) == 2 and str(truncated) in warned[0].getMessage()
    missing = ImageDataset(Samples([str(tmp_path / "gone.jpg")], np.array([0]), ["a"]), eval_tf())
    with pytest.raises(TinltError, match="none of the 1 images could be decoded"):
        missing[0]
    assert "FileNotFoundError" in missing.bad_items[0][1]
