"""Epoch orders that make training reproducible and exactly resumable.

Each epoch's sample order is a pure function of (seed, epoch, rank), and every sample
carries its own augmentation seed. So the same images get the same crops whatever the
number of workers, and a run resumed mid-epoch continues from the next batch as if it had
never stopped.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

_SEED_STRIDE = 1_000_003  # keeps per-sample seeds of different epochs apart


class EpochOrder(Sampler):
    """Yields ``(index, sample_seed)`` for one rank's share of an epoch, from ``start`` on.

    ``base`` is either None (uniform shuffle of all samples) or a sampler whose
    ``epoch_indices()`` gives the epoch's global order (the class-balanced sampler).
    ``whole``: the global order is cut to a multiple of it (a compiled model's batches).

    Under N processes the global order is padded to a multiple of N with stand-ins (the
    order's first samples again) so ranks stay in step; the trainer leaves them out of the
    loss (:meth:`real_mask`) and weighs each rank's share by its real samples, so N
    processes train on exactly the samples one process does, whatever the data size.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int,
        base: Optional[Sampler] = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        whole: int = 0,
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.base = base
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.whole = whole
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def global_order(self) -> np.ndarray:
        """The epoch's order over all ranks, before padding: the same for any world size."""
        if self.base is not None:
            if hasattr(self.base, "epoch_indices"):
                perm = np.asarray(self.base.epoch_indices(), dtype=np.int64)
            else:  # a sampler that shards by itself: its order is already this rank's
                return np.fromiter(iter(self.base), dtype=np.int64)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g).numpy()
        else:
            perm = np.arange(self.num_samples)
        if self.whole > 0 and len(perm) >= self.whole:
            perm = perm[: len(perm) - len(perm) % self.whole]
        return perm

    @property
    def real_count(self) -> int:
        """Samples in the epoch's global order (stand-ins excluded), without drawing it."""
        if self.base is not None and not hasattr(self.base, "epoch_indices"):
            return len(self.global_order()) * self.world_size
        n = int(getattr(self.base, "total", self.num_samples)) if self.base is not None else self.num_samples
        return n - n % self.whole if self.whole > 0 and n >= self.whole else n

    def order(self) -> np.ndarray:
        perm = self.global_order()
        if self.base is not None and not hasattr(self.base, "epoch_indices"):
            return perm
        pad = -len(perm) % self.world_size
        if pad and len(perm):
            perm = np.resize(perm, len(perm) + pad)  # wraps: stand-ins from the order's start
        return perm[self.rank :: self.world_size]

    def real_mask(self, start: int, length: int) -> Optional[torch.Tensor]:
        """Which of this rank's positions ``start .. start+length-1`` hold real samples (not
        stand-ins); None when the global batch they belong to is full (every rank's share real)."""
        if self.world_size == 1 or (start + length) * self.world_size <= self.real_count:
            return None
        global_pos = (torch.arange(start, start + length) * self.world_size + self.rank)
        mask = global_pos < self.real_count
        return mask

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        base_seed = (self.seed * _SEED_STRIDE + self.epoch) * 7919
        for pos in range(self.start, len(order)):
            # seeded by the position in the global (all-rank) order, so N processes draw the
            # same augmentations as one process with the same global batch
            global_pos = pos * self.world_size + self.rank
            yield int(order[pos]), int((base_seed * 1_000_033 + global_pos) % (2**63 - 1))

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.start)


class Shard(Sampler):
    """Evaluation order for one rank: a contiguous-free strided shard without padding,
    so that no test image is counted twice or dropped when ranks' counts are summed."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(torch.utils.data.Dataset):
    """Runs the wrapped dataset's ``__getitem__`` under a per-sample torch seed.

    Random augmentations (torchvision draws from torch's global generator) then depend on
    the sample's seed only, not on which worker or in which order it was loaded.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            # the CPU generator alone: torch.manual_seed also visits CUDA/MPS/XPU and costs ~1 ms
            gen = torch.default_generator
            saved = gen.get_state()
            gen.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                gen.set_state(saved)
        return self.dataset[key]
