"""Softmax cross-entropy (``loss.name: ce``), optionally with label smoothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..config import register_validator
from ..errors import TinltError
from .base import BaseLoss, check_inputs
from .registry import register_loss


@dataclass
class CrossEntropyKeys:
    label_smoothing: float = 0.0  # ce only


class CrossEntropyLoss(BaseLoss):
    """Plain softmax cross-entropy, optionally with label smoothing."""

    def __init__(self, num_classes: Optional[int] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise TinltError(f"config key 'loss.label_smoothing' must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


def _smoothing_only_for_ce(cfg) -> None:
    if cfg.loss.get("label_smoothing", 0.0) and cfg.loss.name != "ce":
        raise TinltError(f"config key 'loss.label_smoothing' is only used by loss.name=ce, not {cfg.loss.name!r}")


register_validator(_smoothing_only_for_ce)


@register_loss("ce", keys=CrossEntropyKeys)
def _build(cfg, counts):
    return CrossEntropyLoss(num_classes=len(counts), label_smoothing=float(cfg.get("label_smoothing", 0.0)))
