"""Fashion-MNIST from its IDX files, with class selection and a long-tailed subset.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files to
``/usr/share/datasets/fashion-mnist``; any folder holding them (raw or ``.gz``, also
torchvision's ``FashionMNIST/raw/`` layout) works. Images stay in memory as uint8 (N,28,28).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import TinltError
from .longtail import select_classes, subsample
from .samples import Samples

DEFAULT_FOLDER = "/usr/share/datasets/fashion-mnist"
CLASSNAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBFOLDERS = ("", "raw", "FashionMNIST/raw", "fashion-mnist", "fashion_mnist")
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

PathLike = Union[str, os.PathLike]


def _how_to_get() -> str:
    names = ", ".join(f"{n}[.gz]" for pair in _FILES.values() for n in pair)
    return (
        f"get it with `sudo apt-get install dataset-fashion-mnist` (installs {DEFAULT_FOLDER}) "
        f"or point data.train.path to a folder with the four IDX files ({names})"
    )


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array of its declared dtype and dims."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TinltError(f"IDX file not found: {p}") from None
    except OSError as e:
        raise TinltError(f"cannot read IDX file {p}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise TinltError(f"{p}: broken gzip data ({e}); re-download the file") from None
    if len(data) < 4:
        raise TinltError(f"{p}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise TinltError(f"{p}: not an IDX file (magic number 0x{data[:4].hex()} must start with 0x0000)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise TinltError(f"{p}: unknown IDX data type 0x{code:02x} (expected one of 08 09 0b 0c 0d 0e)")
    if ndim < 1:
        raise TinltError(f"{p}: IDX file declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TinltError(f"{p}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise TinltError(f"{p}: truncated IDX file: dims {dims} need {need} data bytes, found {have}")
    if have > need:
        raise TinltError(f"{p}: IDX file has {have - need} bytes beyond dims {dims}; wrong or corrupt file")
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def find_idx_files(folder: PathLike, split: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of ``split`` in ``folder`` or its usual sub-folders."""
    top = Path(folder).expanduser()
    if split not in _FILES:
        raise TinltError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    if not top.is_dir():
        raise TinltError(f"Fashion-MNIST folder not found: {top}; {_how_to_get()}")
    found = []
    for stem in _FILES[split]:
        alternatives = [stem, stem.replace("-idx", ".idx")]  # the original site used both spellings
        hit = None
        for sub in _SUBFOLDERS:
            for name in alternatives:
                for ext in ("", ".gz"):
                    cand = top / sub / f"{name}{ext}"
                    if cand.is_file():
                        hit = cand
                        break
                if hit:
                    break
            if hit:
                break
        if hit is None:
            raise TinltError(f"Fashion-MNIST file {stem}[.gz] not found in {top}; {_how_to_get()}")
        found.append(hit)
    return found[0], found[1]


def load_fashion_mnist(
    folder: PathLike = DEFAULT_FOLDER,
    split: str = "train",
    classes: Optional[Sequence[int]] = None,
    lt_n_max: int = 0,
    lt_ratio: float = 100.0,
    counts: Optional[Sequence[int]] = None,
    per_class_limit: int = 0,
) -> Samples:
    """Fashion-MNIST ``split`` as in-memory uint8 images (N,28,28).

    ``classes=[0, 6]`` keeps T-shirt/top and Shirt relabelled 0 and 1. Then, over the kept
    classes ``c = 0..C-1``: ``counts`` caps each class explicitly (e.g. ``[1230, 30]``,
    41:1), else ``lt_n_max > 0`` keeps the first ``floor(lt_n_max * (1/lt_ratio)^(c/(C-1)))``
    images of class ``c`` in file order; ``per_class_limit`` caps every class last.
    """
    images_path, labels_path = find_idx_files(folder or DEFAULT_FOLDER, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise TinltError(f"{images_path}: expected uint8 images (N,H,W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise TinltError(f"{labels_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise TinltError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) == 0:
        raise TinltError(f"{labels_path}: no samples (empty split)")
    if labels.max() >= len(CLASSNAMES):
        i = int(np.argmax(labels >= len(CLASSNAMES)))
        raise TinltError(f"{labels_path}: label {labels[i]} at index {i} out of range 0..{len(CLASSNAMES) - 1}")
    samples = Samples(images, labels.astype(np.int64), list(CLASSNAMES), source=f"Fashion-MNIST {split} ({images_path.parent})")
    if classes:
        samples = select_classes(samples, classes, where="classes")
    return subsample(samples, lt_n_max=lt_n_max, lt_ratio=lt_ratio, counts=counts, per_class_limit=per_class_limit)
