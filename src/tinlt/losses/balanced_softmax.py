"""Balanced softmax (Ren et al. 2020): cross-entropy on ``logits + log prior``."""

from __future__ import annotations


import torch
import torch.nn.functional as F

from .base import BaseLoss, Counts, as_counts, check_inputs, log_prior
from .registry import register_loss


class BalancedSoftmaxLoss(BaseLoss):
    """Balanced softmax (Ren et al. 2020): cross-entropy on ``logits + log prior``.

    Predict with the raw logits; the prior only enters the training objective.
    """

    def __init__(self, class_counts: Counts) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(as_counts(class_counts)), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, len(self.log_prior))
        return F.cross_entropy(logits + self.log_prior, targets)


@register_loss("balanced_softmax")
def _build(cfg, counts):
    return BalancedSoftmaxLoss(counts)
