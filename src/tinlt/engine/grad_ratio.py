"""Accumulated positive / negative gradient on each class's logit (seesaw paper, Fig. 4).

Read from the logits' own gradient, so it is exact for whatever loss is in use; the
report draws it per class.
"""

from __future__ import annotations

import numpy as np
import torch


class GradientRatio:
    def __init__(self, num_classes: int) -> None:
        self.pos = np.zeros(num_classes, dtype=np.float64)
        self.neg = np.zeros(num_classes, dtype=np.float64)

    def update(self, grad: torch.Tensor, targets: torch.Tensor) -> None:
        g = grad.detach().float().abs()
        onehot = torch.zeros_like(g).scatter_(1, targets.view(-1, 1), 1.0)
        self.pos += (g * onehot).sum(0).cpu().numpy()
        self.neg += (g * (1 - onehot)).sum(0).cpu().numpy()

    def ratio(self) -> np.ndarray:
        return self.pos / np.maximum(self.neg, 1e-12)

    def state_dict(self) -> dict:
        return {"pos": self.pos.copy(), "neg": self.neg.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.pos, self.neg = np.asarray(d["pos"]), np.asarray(d["neg"])
