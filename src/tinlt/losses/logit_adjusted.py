"""Logit-adjusted loss (Menon et al. 2021): cross-entropy on ``logits + tau * log prior``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import BaseLoss, Counts, as_counts, check_inputs, log_prior
from .registry import register_loss


@dataclass
class LogitAdjustKeys:
    tau: float = 1.0  # logit_adjust: weight of log prior added to the logits


class LogitAdjustedLoss(BaseLoss):
    """Logit-adjusted loss (Menon et al. 2021): cross-entropy on ``logits + tau * log prior``.

    tau = 1 is balanced softmax. Predict with the raw logits (or use :func:`logit_adjust`
    post hoc on a model trained with plain CE).
    """

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("log_prior", log_prior(as_counts(class_counts)), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, len(self.log_prior))
        return F.cross_entropy(logits + self.tau * self.log_prior, targets)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


@register_loss("logit_adjust", keys=LogitAdjustKeys)
def _build(cfg, counts):
    return LogitAdjustedLoss(counts, tau=cfg.tau)
