"""Training samplers: instance-balanced (plain shuffle) and class-balanced / square-root sampling.

Class-aware sampling draws a class first — with probability proportional to 1
(``balanced``) or to ``sqrt(n_c)`` (``sqrt``) over classes that have samples — then an
instance of that class uniformly. An epoch's whole index list is a pure function of
``seed + epoch`` of ``num_samples`` draws whatever the world size; in distributed training
every rank builds the same list and takes ``rank::world_size`` (the trainer's EpochOrder
pads it with stand-ins it leaves out of the loss), so the shards together equal the
single-process epoch.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import DistributedSampler, Sampler

from ..config import SAMPLERS, check_choice
from ..errors import TinltError


class ClassBalancedSampler(Sampler):
    def __init__(
        self,
        labels: Sequence[int],
        num_samples: Optional[int] = None,
        mode: str = "balanced",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if mode not in ("balanced", "sqrt"):
            raise TinltError(f"class-aware sampler mode {mode!r}; expected 'balanced' or 'sqrt'")
        if not 0 <= rank < world_size:
            raise TinltError(f"sampler rank {rank} not in [0, world_size={world_size})")
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise TinltError("class-aware sampler needs a non-empty list of labels")
        if self.labels.min() < 0:
            raise TinltError("class-aware sampler: labels must be >= 0")
        self.mode = mode
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.total = int(num_samples) if num_samples is not None else len(self.labels)
        if self.total < 1:
            raise TinltError(f"class-aware sampler: num_samples must be >= 1, got {self.total}")
        # equal shards when iterated alone: the epoch wraps round to a multiple of world_size
        self.per_rank = -(-self.total // world_size)

        counts = np.bincount(self.labels)
        self.order = np.argsort(self.labels, kind="stable")  # indices grouped by class
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        weights = np.where(counts > 0, 1.0 if mode == "balanced" else np.sqrt(counts), 0.0)
        self.class_probs = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """All ranks' indices for the current epoch (``num_samples`` of them, for any world size)."""
        rng = np.random.Generator(np.random.PCG64(self.seed + self.epoch))
        n = self.total
        classes = rng.choice(len(self.counts), size=n, p=self.class_probs)
        offsets = np.floor(rng.random(n) * self.counts[classes]).astype(np.int64)
        return self.order[self.starts[classes] + offsets]

    def __iter__(self) -> Iterator[int]:
        indices = np.resize(self.epoch_indices(), self.per_rank * self.world_size)
        return iter(indices[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


def build_sampler(
    name: str,
    labels: Sequence[int],
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_samples: Optional[int] = None,
) -> Optional[Sampler]:
    """``instance`` -> None (the loader shuffles), or a seeded DistributedSampler when
    ``world_size > 1``; ``class_balanced`` / ``sqrt`` -> :class:`ClassBalancedSampler`."""
    check_choice("data.sampler", name, SAMPLERS)
    if name == "instance":
        if world_size <= 1:
            return None
        # drop_last: equal shards without repeating samples; the few left over differ each epoch
        return DistributedSampler(
            range(len(labels)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    mode = "balanced" if name == "class_balanced" else "sqrt"
    return ClassBalancedSampler(labels, num_samples, mode=mode, seed=seed, rank=rank, world_size=world_size)
