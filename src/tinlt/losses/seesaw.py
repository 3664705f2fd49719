"""Seesaw loss (Wang et al., CVPR 2021): TIN's loss (``loss.name: seesaw``, its eq. 8-10)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import TinltError
from .base import BaseLoss, Counts, as_counts, check_inputs
from .registry import register_loss


@dataclass
class SeesawKeys:
    p: float = 0.7  # seesaw mitigation exponent: (N_j/N_i)^p for rarer negatives
    q: float = 0.0  # seesaw compensation exponent (0 = off)
    online: bool = False  # seesaw: accumulate class counts from training batches instead of the split prior
    eps: float = 1e-2  # seesaw: floor on the target probability in the compensation ratio


class SeesawLoss(BaseLoss):
    """Seesaw loss (Wang et al., CVPR 2021; TIN eq. 8-10) for single-label classification.

    For a sample of class i, the softmax term of each negative class j is scaled by
    S_ij = M_ij * C_ij, implemented as ``z_j += log S_ij`` (never on the target logit):

    * mitigation  M_ij = (N_j / N_i)^p  if N_i > N_j else 1 - a head-class sample pushes
      rare negatives down less;
    * compensation C_ij = (sigma_j / sigma_i)^q  if sigma_j > sigma_i else 1, with sigma the
      detached softmax and sigma_i clamped to ``eps`` as in mmdetection; only when q > 0.

    ``online=False`` uses ``class_counts`` (the training-split prior). ``online=True`` uses
    counts accumulated from the targets of every training-mode batch (``cum_samples``, a
    persistent buffer, starts at zero; zero counts are read as 1); ``class_counts`` then only
    fixes the number of classes.

    Distributed training: with ``online=True`` each rank sees its own shard, so the batch
    counts pass through :meth:`_reduce_counts`, which all-reduces (SUM) them when
    torch.distributed is initialised with more than one process. Every rank then holds the
    same global counts. The collective runs in every training-mode forward, so all ranks must
    call the loss equally often (true for DDP with a distributed sampler). Override
    ``_reduce_counts`` to change this (e.g. a sub-group, or no reduction).
    """

    def __init__(
        self,
        class_counts: Counts,
        p: float = 0.7,
        q: float = 0.0,
        online: bool = False,
        eps: float = 1e-2,
    ) -> None:
        super().__init__()
        counts = as_counts(class_counts)
        if p < 0:
            raise TinltError(f"config key 'loss.p' must be >= 0, got {p}")
        if q < 0:
            raise TinltError(f"config key 'loss.q' must be >= 0, got {q}")
        if not eps > 0:
            raise TinltError(f"config key 'loss.eps' must be > 0, got {eps}")
        self.p, self.q, self.online, self.eps = float(p), float(q), bool(online), float(eps)
        self.num_classes = len(counts)
        self.register_buffer("class_counts", counts, persistent=False)
        # int64: exact, and untouched by module.half()/.to(bfloat16)
        self.register_buffer("cum_samples", torch.zeros(self.num_classes, dtype=torch.int64), persistent=True)

    def _reduce_counts(self, batch_counts: torch.Tensor) -> torch.Tensor:
        """Sum this batch's per-class counts over ranks (identity outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            buf = batch_counts.to(torch.float64)  # gloo lacks int64 SUM on some builds; exact to 2^53
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            return buf.round().to(batch_counts.dtype)
        return batch_counts

    def counts(self) -> torch.Tensor:
        """The counts the loss currently uses (online accumulation or the prior)."""
        return self.cum_samples if self.online else self.class_counts

    def seesaw_log_weights(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log S_ij for every sample and class, zero on the target column. (B, C), no grad."""
        with torch.no_grad():
            log_s = torch.zeros_like(logits)
            if self.p > 0:
                log_n = self.counts().clamp(min=1).to(logits.device, torch.float32).log()
                # log M_ij = p * min(log N_j - log N_i, 0)
                log_s += self.p * (log_n[None, :] - log_n[targets][:, None]).clamp(max=0.0)
            if self.q > 0:
                log_sigma = F.log_softmax(logits, dim=1)
                log_self = log_sigma.gather(1, targets[:, None]).clamp(min=math.log(self.eps))
                # log C_ij = q * max(log sigma_j - log sigma_i, 0)
                log_s += self.q * (log_sigma - log_self).clamp(min=0.0)
            return log_s.scatter(1, targets[:, None], 0.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_inputs(logits, targets, self.num_classes)
        if self.online and self.training:
            # scatter_add avoids bincount's host sync on CUDA
            batch = torch.zeros(self.num_classes, dtype=torch.int64, device=targets.device)
            batch.scatter_add_(0, targets, torch.ones_like(targets))
            self.cum_samples += self._reduce_counts(batch).to(self.cum_samples.device)
        return F.cross_entropy(logits + self.seesaw_log_weights(logits, targets), targets)

    def extra_repr(self) -> str:
        return f"p={self.p}, q={self.q}, online={self.online}, eps={self.eps}, num_classes={self.num_classes}"


@register_loss("seesaw", keys=SeesawKeys)
def _build(cfg, counts):
    return SeesawLoss(counts, p=cfg.p, q=cfg.q, online=cfg.online, eps=cfg.eps)
