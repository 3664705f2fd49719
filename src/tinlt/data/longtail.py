"""Long-tail subsampling: the exponential class-size profile and per-class caps.

Class ``c`` of ``C`` keeps ``floor(n_max * (1/ratio) ** (c / (C - 1)))`` samples, the profile
of CIFAR-LT (Cao et al., LDAM; they also truncate with ``int()``). We take the FIRST samples
of each class in source order, so the subset is deterministic and nested across ratios.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..errors import TinltError
from .samples import Samples

# a power that is mathematically an integer can land a hair below it in floats;
# this guard keeps such exact sizes from being floored one too low.
_FLOOR_EPS = 1e-9


def long_tail_counts(num_classes: int, n_max: int, ratio: float) -> list[int]:
    """Per-class sizes ``floor(n_max * (1/ratio)^(c/(C-1)))``, at least 1 each."""
    if num_classes < 1:
        raise TinltError("long tail: need at least one class")
    if n_max < 1:
        raise TinltError(f"long tail: lt_n_max must be >= 1, got {n_max}")
    if not ratio >= 1.0:
        raise TinltError(f"long tail: lt_ratio must be >= 1, got {ratio}")
    if num_classes == 1:
        return [int(n_max)]
    out = []
    for c in range(num_classes):
        n = math.floor(n_max * (1.0 / ratio) ** (c / (num_classes - 1)) + _FLOOR_EPS)
        out.append(max(1, n))  # a class never vanishes entirely
    return out


def first_per_class(labels: np.ndarray, caps: Sequence[int]) -> np.ndarray:
    """Indices (ascending) of the first ``caps[c]`` samples of each class ``c``."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = np.zeros(len(labels), dtype=bool)
    for c, cap in enumerate(caps):
        idx = np.flatnonzero(labels == c)
        keep[idx[: max(0, int(cap))]] = True
    return np.flatnonzero(keep)


def select_classes(samples: Samples, classes: Sequence[int], where: str = "classes") -> Samples:
    """Keep the listed source classes, relabelled ``0..K-1`` in the given order."""
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < samples.num_classes]
    if bad:
        raise TinltError(f"{where}: class {bad[0]} out of range for {samples.num_classes} classes ({samples.source})")
    if len(set(classes)) != len(classes):
        raise TinltError(f"{where}: repeated class in {classes}")
    remap = np.full(samples.num_classes, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    new_labels = remap[samples.labels]
    index = np.flatnonzero(new_labels >= 0)
    out = samples.subset(index)
    out.labels = new_labels[index]
    out.classnames = [samples.classnames[c] for c in classes]
    out.skipped = list(samples.skipped)
    return out


def subsample(
    samples: Samples,
    *,
    lt_n_max: int = 0,
    lt_ratio: float = 100.0,
    counts: Optional[Sequence[int]] = None,
    per_class_limit: int = 0,
    strict: bool = True,
) -> Samples:
    """Apply ``counts`` (explicit caps) or the ``lt_*`` profile, then ``per_class_limit``.

    With ``strict`` a requested size larger than the class has is an error (the imbalance
    ratio would silently change); ``per_class_limit`` is always just a cap.
    """
    have = samples.class_counts()
    C = samples.num_classes
    caps: Optional[list[int]] = None
    what = ""
    if counts:
        caps = [int(c) for c in counts]
        what = "counts"
        if len(caps) != C:
            raise TinltError(f"counts has {len(caps)} entries but the split has {C} classes ({samples.source})")
        if any(c < 0 for c in caps):
            raise TinltError(f"counts must be >= 0, got {caps}")
    elif lt_n_max:
        caps = long_tail_counts(C, int(lt_n_max), float(lt_ratio))
        what = "lt_n_max/lt_ratio"
    if caps is not None and strict:
        for c, (want, n) in enumerate(zip(caps, have)):
            if want > n:
                raise TinltError(
                    f"{what} asks for {want} images of class {c} ({samples.classnames[c]!r}) "
                    f"but {samples.source} has only {n}"
                )
    if per_class_limit and per_class_limit > 0:
        caps = [min(c, per_class_limit) for c in (caps if caps is not None else have.tolist())]
    if caps is None:
        return samples
    out = samples.subset(first_per_class(samples.labels, caps))
    out.skipped = list(samples.skipped)
    return out
