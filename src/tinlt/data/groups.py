"""Shot groups: which classes count as many-, medium- and few-shot, from training counts.

``absolute`` (the ImageNet-LT / Places-LT convention): many = more than ``many_threshold``
training images, few = fewer than ``few_threshold``, medium otherwise.
``relative`` (two classes, e.g. common vs rare clamps): the larger class is many, the smaller
few, medium is empty; equal counts make both many. ``auto`` = relative iff exactly 2 classes.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from ..errors import TinltError, did_you_mean

# schema.GROUP_MODES, repeated so that torch-free and config-free scoring (deploy/onnx_eval.py) can group
GROUP_MODES = ("auto", "absolute", "relative")

GROUP_NAMES = ("many", "medium", "few")


def resolve_mode(num_classes: int, mode: str = "auto") -> str:
    if mode not in GROUP_MODES:
        raise TinltError(f"config key 'data.groups' = {mode!r}; expected one of: {', '.join(GROUP_MODES)}"
                         f"{did_you_mean(str(mode), GROUP_MODES)}")
    if mode == "auto":
        return "relative" if num_classes == 2 else "absolute"
    if mode == "relative" and num_classes != 2:
        raise TinltError(f"shot-group mode 'relative' needs exactly 2 classes, got {num_classes}")
    return mode


def shot_groups(
    train_counts: Union[Sequence[int], np.ndarray],
    many_threshold: int = 100,
    few_threshold: int = 20,
    mode: str = "auto",
) -> dict[str, np.ndarray]:
    """Class indices (int64, ascending) of each group: ``{"many", "medium", "few"}``."""
    counts = np.asarray(train_counts, dtype=np.int64)
    if counts.ndim != 1 or len(counts) == 0:
        raise TinltError(f"shot groups need a non-empty 1-D list of class counts, got shape {counts.shape}")
    mode = resolve_mode(len(counts), mode)
    if mode == "absolute" and few_threshold > many_threshold + 1:
        raise TinltError(f"few_threshold ({few_threshold}) must be <= many_threshold + 1 ({many_threshold + 1})")
    if mode == "relative":
        big = counts.max()
        many = np.flatnonzero(counts == big)
        few = np.flatnonzero(counts < big)
        return {"many": many, "medium": np.zeros(0, dtype=np.int64), "few": few}
    many = counts > many_threshold
    few = counts < few_threshold
    medium = ~many & ~few
    return {"many": np.flatnonzero(many), "medium": np.flatnonzero(medium), "few": np.flatnonzero(few)}
