"""A validation split held out from the training split (``data.val.kind: holdout`` or ``kfold``).

Owns :func:`hold_out`: a stratified split of the training samples, a pure function of
(labels, fraction, seed), so a run reproduces it from its config. Each class gives
``max(1, round(fraction * n_c))`` images to validation and keeps at least one for
training; a class with a single training image cannot be split and is an error naming it.
Model selection (best.pt, early stopping, post-hoc tau) then happens on these images, and
the test split is scored once, at the end.

Owns :func:`fold_of` too: a stratified K-fold assignment (``data.val.kind: kfold``, the folds
of ``tinlt fit``), a pure function of (labels, K, seed). Each class's images, shuffled, go
to the folds in turn, starting where the previous class stopped, so every image is out of
fold exactly once, fold sizes differ by at most one, and a class with fewer than K images
puts each of them in a fold of its own (at most one held out per fold: the rest still train).
"""

from __future__ import annotations

import numpy as np

from ..errors import TinltError
from .samples import Samples


def fold_of(labels, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each image, stratified by label (see the module doc)."""
    if int(folds) < 2:
        raise TinltError(f"config key 'data.val.folds' = {folds}; expected at least 2")
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF01D]))
    out = np.empty(len(labels), dtype=np.int64)
    at = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out[idx] = (at + np.arange(len(idx))) % folds
        at = (at + len(idx)) % folds
    return out


def k_fold(train: Samples, folds: int, fold: int, seed: int) -> tuple[Samples, Samples, np.ndarray]:
    """(the other folds' images, fold ``fold``'s images, their indices into ``train``)."""
    if not 0 <= int(fold) < int(folds):
        raise TinltError(f"config key 'data.val.fold' = {fold}; expected 0 .. {int(folds) - 1}")
    assigned = fold_of(train.labels, folds, seed)
    val_idx = np.flatnonzero(assigned == int(fold))
    keep = np.flatnonzero(assigned != int(fold))
    rest, held = train.subset(keep), train.subset(val_idx)
    rest.source = f"{train.source} (without fold {fold} of {folds})"
    held.source = f"{train.source} (fold {fold} of {folds}: {len(val_idx)} images)"
    return rest, held, val_idx


def hold_out(train: Samples, fraction: float, seed: int) -> tuple[Samples, Samples, np.ndarray]:
    """(remaining training split, validation split, validation indices into ``train``)."""
    if not 0.0 < fraction < 1.0:
        raise TinltError(f"config key 'data.val.fraction' = {fraction}; expected a fraction in (0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7A11]))
    labels = np.asarray(train.labels)
    val: list[int] = []
    for c in range(train.num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        if len(idx) == 1:
            raise TinltError(f"data.val.kind=holdout: class {c} ({train.classnames[c]!r}) has 1 training image; "
                             "a held-out split needs 2 (give data.val a split of its own)")
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        val.extend(rng.permutation(idx)[:k].tolist())
    val_idx = np.sort(np.asarray(val, dtype=np.int64))
    keep = np.setdiff1d(np.arange(len(labels)), val_idx)
    rest, held = train.subset(keep), train.subset(val_idx)
    rest.source = f"{train.source} (without the held-out validation images)"
    held.source = f"{train.source} (held out: {len(val_idx)} images)"
    return rest, held, val_idx
