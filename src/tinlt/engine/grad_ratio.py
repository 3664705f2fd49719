"""Accumulated positive / negative gradient on each class's logit (seesaw paper, Fig. 4).

Read from the logits' own gradient, so it is exact for whatever loss is in use; the
report draws it per class. Each micro-batch's sums stay on the device (two ``.cpu()``
copies per micro-batch synchronised the host with the GPU before); :meth:`fold` moves them
into the totals once, summed over ranks when given a reduction, so under torchrun every rank
holds the whole run's ratio, not its own shard's, and rank 0's checkpoint is right for all.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch


class GradientRatio:
    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)  # where an all-reduce of nothing pending is built (NCCL: the GPU)
        self._pos = np.zeros(num_classes, dtype=np.float64)
        self._neg = np.zeros(num_classes, dtype=np.float64)
        self._pending: Optional[torch.Tensor] = None  # (2, C) on the device since the last fold

    def update(self, grad: torch.Tensor, targets: torch.Tensor) -> None:
        g = grad.detach().float().abs()
        onehot = torch.zeros_like(g).scatter_(1, targets.view(-1, 1), 1.0)
        step = torch.stack(((g * onehot).sum(0), (g * (1 - onehot)).sum(0)))
        step = step.double() if g.device.type != "mps" else step  # MPS has no float64
        self._pending = step if self._pending is None else self._pending + step

    def fold(self, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Add the device sums to the totals (one host sync). ``reduce`` (e.g. an all-reduce sum)
        is applied first; under torchrun every rank must call it together, with or without sums."""
        if reduce is not None:
            pending = self._pending if self._pending is not None else torch.zeros(2, len(self._pos), dtype=torch.float64,
                                                                                 device=self.device)
            pending = reduce(pending)
        elif self._pending is None:
            return
        else:
            pending = self._pending
        both = pending.detach().to("cpu", torch.float64).numpy()
        self._pos, self._neg, self._pending = self._pos + both[0], self._neg + both[1], None

    @property
    def pos(self) -> np.ndarray:
        self.fold()
        return self._pos

    @property
    def neg(self) -> np.ndarray:
        self.fold()
        return self._neg

    def ratio(self) -> np.ndarray:
        return self.pos / np.maximum(self.neg, 1e-12)

    def state_dict(self) -> dict:
        return {"pos": self.pos.copy(), "neg": self.neg.copy()}

    def load_state_dict(self, d: dict) -> None:
        self._pos, self._neg, self._pending = np.asarray(d["pos"]), np.asarray(d["neg"]), None
