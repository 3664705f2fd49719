"""LDAM loss with deferred re-weighting (Cao et al. 2019; ``loss.name: ldam``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import TinltError
from .base import BaseLoss, Counts, as_counts, check_inputs, class_balanced_weights
from .registry import register_loss


@dataclass
class LdamKeys:
    max_margin: float = 0.5  # ldam: margin of the rarest class (margins ~ n^-1/4)
    s: float = 30.0  # ldam: scale on the margined logits (30 assumes cosine logits)
    drw_epoch: Optional[int] = None  # ldam: 0-based epoch from which class-balanced weights apply; null = never
    drw_beta: float = 0.9999  # ldam: beta of the deferred re-weighting


class LDAMLoss(BaseLoss):
    """LDAM with optional deferred re-weighting (Cao et al. 2019).

    Margin m_c proportional to n_c^(-1/4), scaled so the largest is ``max_margin``; the target
    logit loses its margin and everything is multiplied by ``s`` before cross-entropy:
    ``CE(s * (z - m_y * onehot(y)), y, weight)``. The paper (and ``s = 30``) assumes cosine
    logits in [-1, 1]; logits that already carry a temperature want ``s = 1`` and a margin
    in logit units.

    DRW: from epoch ``drw_epoch`` on (0-based, via :meth:`set_epoch`) the cross-entropy is
    weighted by class-balanced weights with ``drw_beta``; weighting follows
    ``F.cross_entropy(weight=...)`` (mean divided by the batch's weight sum), as in the
    authors' code. ``drw_epoch=None`` never re-weights.
    """

    def __init__(
        self,
        class_counts: Counts,
        max_margin: float = 0.5,
        s: float = 30.0,
        drw_epoch: Optional[int] = None,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        if not max_margin > 0:
            raise TinltError(f"config key 'loss.max_margin' must be > 0, got {max_margin}")
        if not s > 0:
            raise TinltError(f"config key 'loss.s' must be > 0, got {s}")
        if drw_epoch is not None and drw_epoch < 0:
            raise TinltError(f"config key 'loss.drw_epoch' must be >= 0 or null, got {drw_epoch}")
        if not 0.0 <= drw_beta < 1.0:
            raise TinltError(f"config key 'loss.drw_beta' must be in [0, 1), got {drw_beta}")
        self.max_margin, self.s = float(max_margin), float(s)
        self.drw_epoch, self.drw_beta = drw_epoch, float(drw_beta)
        m = counts.clamp(min=1).to(torch.float64) ** -0.25
        self.register_buffer("margins", (m * (max_margin / m.max())).to(torch.float32), persistent=False)
        self.register_buffer("drw_weight", class_balanced_weights(counts, drw_beta), persistent=False)
        self.reweight = False

    def set_epoch(self, epoch: int) -> None:
        self.reweight = self.drw_epoch is not None and epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, len(self.margins))
        shifted = logits.scatter_add(1, targets[:, None], -self.margins[targets][:, None])
        weight = self.drw_weight if self.reweight else None
        return F.cross_entropy(self.s * shifted, targets, weight=weight)

    def extra_repr(self) -> str:
        return f"max_margin={self.max_margin}, s={self.s}, drw_epoch={self.drw_epoch}, drw_beta={self.drw_beta}"


@register_loss("ldam", keys=LdamKeys)
def _build(cfg, counts):
    return LDAMLoss(counts, max_margin=cfg.max_margin, s=cfg.s, drw_epoch=cfg.drw_epoch, drw_beta=cfg.drw_beta)
