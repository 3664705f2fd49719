"""Focal loss (Lin et al. 2017) on the softmax (``loss.name: focal``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import TinltError
from .base import BaseLoss, check_inputs
from .registry import register_loss


@dataclass
class FocalKeys:
    gamma: float = 2.0  # focal / cb_focal focusing exponent (0 = cross-entropy)


def focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal loss -(1 - p_t)^gamma log p_t, from log-softmax."""
    log_pt = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    # -expm1 keeps 1 - p_t accurate near p_t = 1; the floor keeps d/dp (1-p)^gamma finite for gamma < 1
    one_minus = (-torch.expm1(log_pt)).clamp(min=torch.finfo(log_pt.dtype).tiny)
    return -(one_minus**gamma) * log_pt


class FocalLoss(BaseLoss):
    """Focal loss (Lin et al. 2017) on the softmax: batch mean of -(1 - p_t)^gamma log p_t.

    gamma = 0 is cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, num_classes: Optional[int] = None) -> None:
        super().__init__()
        if gamma < 0:
            raise TinltError(f"config key 'loss.gamma' must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        return focal_terms(logits, targets, self.gamma).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


@register_loss("focal", keys=FocalKeys)
def _build(cfg, counts):
    return FocalLoss(gamma=cfg.gamma, num_classes=len(counts))
