"""Classification losses for long-tailed training: seesaw (TIN's default) and the usual comparisons.

Every loss maps ``(logits (B, C), targets (B,) long) -> scalar mean loss``, works in log
space (finite for logits of +-1e4 in fp32; inputs are upcast to fp32 first) and has a
``set_epoch(epoch)`` hook, a no-op except for LDAM's deferred re-weighting.

Class counts always come from the training split. Priors and per-class constants are
non-persistent buffers (rebuilt from the data at start-up); the one piece of learned
state, seesaw's online ``cum_samples``, is persisted in the state dict.

``ContrastiveLoss`` is TIN's image-text objective (its eq. 2) computed from the same
logits; ``loss.contrastive_weight`` adds it to any of the losses (``WithContrastive``).

``build_loss(cfg.loss, class_counts)`` maps the ``loss.name`` config value to a module
through the registry (:mod:`.registry`): each loss is one module of this package with its
own config keys, and a new one is one new module.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import check_choice, check_section, choices, load_extensions
from ..errors import TinltError
from .base import BaseLoss, Counts, as_counts, class_balanced_weights, logit_adjust
from .registry import BUILDERS, register_loss
from .seesaw import SeesawLoss  # the imports below register, in the order messages list them
from .cross_entropy import CrossEntropyLoss  # noqa: I001
from .focal import FocalLoss
from .class_balanced import ClassBalancedLoss
from .balanced_softmax import BalancedSoftmaxLoss
from .logit_adjusted import LogitAdjustedLoss
from .ldam import LDAMLoss
from .contrastive import ContrastiveLoss

__all__ = [
    "BaseLoss", "SeesawLoss", "CrossEntropyLoss", "FocalLoss", "ClassBalancedLoss", "BalancedSoftmaxLoss",
    "LogitAdjustedLoss", "LDAMLoss", "ContrastiveLoss", "WithContrastive", "class_balanced_weights",
    "logit_adjust", "build_loss", "loss_names", "register_loss",
]


class WithContrastive(BaseLoss):
    """``base(logits, targets) + weight * ContrastiveLoss(logits, targets)`` (``loss.contrastive_weight``)."""

    def __init__(self, base: BaseLoss, weight: float) -> None:
        super().__init__()
        if not weight >= 0:
            raise TinltError(f"config key 'loss.contrastive_weight' must be >= 0, got {weight}")
        self.base = base
        self.contrastive = ContrastiveLoss(num_classes=getattr(base, "num_classes", None))
        self.weight = float(weight)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.base(logits, targets) + self.weight * self.contrastive(logits, targets)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def loss_names() -> tuple[str, ...]:
    return choices("loss.name")


def build_loss(loss_cfg: Any, class_counts: Counts) -> BaseLoss:
    """Build the loss named by ``loss_cfg.name`` (the ``loss`` config node, or a dict).

    ``class_counts``: training-split samples per class (their length fixes C).
    A non-zero ``loss_cfg.contrastive_weight`` adds the contrastive term (:class:`WithContrastive`).
    """
    load_extensions()
    name = loss_cfg.name if not isinstance(loss_cfg, dict) else loss_cfg["name"]
    check_choice("loss.name", name)
    cfg = _with_defaults(loss_cfg)
    check_section("loss", cfg)
    loss = BUILDERS[name](cfg, as_counts(class_counts))
    weight = float(cfg.get("contrastive_weight", 0.0) or 0.0)
    if weight and name == "contrastive":
        raise TinltError("config key 'loss.contrastive_weight' must stay 0 with loss.name=contrastive")
    return WithContrastive(loss, weight) if weight else loss


def _with_defaults(loss_cfg: Any):
    """The loss node with every registered key (a partial node or dict gets the defaults)."""
    from omegaconf import OmegaConf

    from ..config import schema

    given = loss_cfg if isinstance(loss_cfg, dict) else OmegaConf.to_container(loss_cfg) \
        if OmegaConf.is_config(loss_cfg) else {k: getattr(loss_cfg, k) for k in vars(loss_cfg)}
    return OmegaConf.merge(schema().loss, given)
