"""Class-balanced re-weighting by effective number (Cui et al. 2019): ``cb_ce`` and ``cb_focal``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import TinltError
from .base import BaseLoss, Counts, check_inputs, class_balanced_weights
from .focal import focal_terms
from .registry import register_loss


@dataclass
class ClassBalancedKeys:
    beta: float = 0.9999  # cb_ce / cb_focal effective-number beta in [0, 1)
    gamma: float = 2.0  # focal / cb_focal focusing exponent (0 = cross-entropy)


class ClassBalancedLoss(BaseLoss):
    """Class-balanced re-weighting by effective number (Cui et al. 2019) on CE or focal loss.

    Loss = mean over the batch of w_{y} * L(sample), with w from :func:`class_balanced_weights`
    (sums to C), as in the authors' code (a plain batch mean, not divided by the weight sum).
    """

    def __init__(self, class_counts: Counts, beta: float = 0.9999, base: str = "ce", gamma: float = 2.0) -> None:
        super().__init__()
        if base not in ("ce", "focal"):
            raise TinltError(f"ClassBalancedLoss base must be 'ce' or 'focal', got {base!r}")
        if gamma < 0:
            raise TinltError(f"config key 'loss.gamma' must be >= 0, got {gamma}")
        self.beta, self.base, self.gamma = float(beta), base, float(gamma)
        self.register_buffer("weight", class_balanced_weights(class_counts, beta), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, len(self.weight))
        if self.base == "ce":
            per_sample = F.cross_entropy(logits, targets, reduction="none")
        else:
            per_sample = focal_terms(logits, targets, self.gamma)
        return (per_sample * self.weight[targets]).mean()

    def extra_repr(self) -> str:
        return f"beta={self.beta}, base={self.base!r}" + (f", gamma={self.gamma}" if self.base == "focal" else "")


@register_loss("cb_ce", keys=ClassBalancedKeys)
def _build_ce(cfg, counts):
    return ClassBalancedLoss(counts, beta=cfg.beta, base="ce", gamma=cfg.gamma)


@register_loss("cb_focal", keys=ClassBalancedKeys)
def _build_focal(cfg, counts):
    return ClassBalancedLoss(counts, beta=cfg.beta, base="focal", gamma=cfg.gamma)
