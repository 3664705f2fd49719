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

    ``base`` is either None (uniform shuffle of all samples) or a sampler with
    ``set_epoch`` that already shards by rank (e.g. the class-balanced sampler).
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
    ) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.base = base
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def order(self) -> np.ndarray:
        if self.base is not None:
            return np.fromiter(iter(self.base), dtype=np.int64)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + self.epoch)
            perm = torch.randperm(self.num_samples, generator=g).numpy()
        else:
            perm = np.arange(self.num_samples)
        # equal shares keep DDP ranks in lock-step; < world_size samples rest this epoch
        usable = len(perm) - len(perm) % self.world_size
        return perm[:usable][self.rank :: self.world_size]

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
