"""Classification losses for long-tailed training: seesaw (TIN's default) and the usual comparisons.

Every loss maps ``(logits (B, C), targets (B,) long) -> scalar mean loss``, works in log
space (finite for logits of +-1e4 in fp32; inputs are upcast to fp32 first) and has a
``set_epoch(epoch)`` hook, a no-op except for LDAM's deferred re-weighting.

Class counts always come from the training split. Priors and per-class constants are
non-persistent buffers (rebuilt from the data at start-up); the one piece of learned
state, seesaw's online ``cum_samples``, is persisted in the state dict.

``ContrastiveLoss`` is TIN's image-text objective (its eq. 2) computed from the same
logits; ``loss.contrastive_weight`` adds it to any of the losses (``WithContrastive``).

``build_loss(cfg.loss, class_counts)`` maps the ``loss.name`` config value to a module.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import LOSSES, check_choice
from .errors import TinltError

Counts = Union[Sequence[int], np.ndarray, torch.Tensor]

__all__ = [
    "BaseLoss",
    "SeesawLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "ClassBalancedLoss",
    "BalancedSoftmaxLoss",
    "LogitAdjustedLoss",
    "LDAMLoss",
    "ContrastiveLoss",
    "WithContrastive",
    "class_balanced_weights",
    "logit_adjust",
    "build_loss",
    "LOSS_NAMES",
]


def _as_counts(class_counts: Counts) -> torch.Tensor:
    """Validate training-split class counts and return them as an int64 tensor."""
    if isinstance(class_counts, torch.Tensor):
        arr = class_counts.detach().cpu().numpy()
    else:
        arr = np.asarray(class_counts)
    if arr.ndim != 1 or arr.size < 1:
        raise TinltError(f"loss: class_counts must be a 1-D list of per-class counts, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise TinltError("loss: class_counts must be non-negative integers (training-split samples per class)")
    return torch.as_tensor(arr.astype(np.int64))


def _log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log(n_c / sum n); empty classes count as 1 so the log stays finite."""
    n = counts.clamp(min=1).to(torch.float64)
    return (n / n.sum()).log().to(torch.float32)


def class_balanced_weights(class_counts: Counts, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C (fp32 tensor).

    beta = 0 gives all ones; beta -> 1 approaches inverse frequency. Empty classes count as 1.
    """
    counts = _as_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise TinltError(f"config key 'loss.beta' must be in [0, 1), got {beta}")
    n = counts.clamp(min=1).to(torch.float64)  # float64: beta=0.9999 and n~1e4 need the precision
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(w)).to(torch.float32)


def logit_adjust(logits: torch.Tensor, class_counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): ``logits - tau * log prior``, for inference."""
    log_prior = _log_prior(_as_counts(class_counts)).to(logits.device)
    return logits - tau * log_prior.to(logits.dtype)


def _check_inputs(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise TinltError(
            f"loss: expected logits (B, C) and targets (B,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if logits.shape[1] != num_classes:
        raise TinltError(
            f"loss: logits have {logits.shape[1]} classes but the training-split class counts have {num_classes}"
        )
    # fp32 for the loss even under bf16/fp16 autocast: log-sum-exp and pow need the range
    return logits.float(), targets.long()


class BaseLoss(nn.Module):
    """Common base: a per-epoch hook the train loop calls at the start of every epoch."""

    def set_epoch(self, epoch: int) -> None:  # noqa: B027 - intentionally a no-op by default
        """Called with the 0-based epoch index before each epoch; most losses ignore it."""


class CrossEntropyLoss(BaseLoss):
    """Plain softmax cross-entropy, optionally with label smoothing."""

    def __init__(self, num_classes: Optional[int] = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise TinltError(f"config key 'loss.label_smoothing' must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)


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
        counts = _as_counts(class_counts)
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
        logits, targets = _check_inputs(logits, targets, self.num_classes)
        if self.online and self.training:
            # scatter_add avoids bincount's host sync on CUDA
            batch = torch.zeros(self.num_classes, dtype=torch.int64, device=targets.device)
            batch.scatter_add_(0, targets, torch.ones_like(targets))
            self.cum_samples += self._reduce_counts(batch).to(self.cum_samples.device)
        return F.cross_entropy(logits + self.seesaw_log_weights(logits, targets), targets)

    def extra_repr(self) -> str:
        return f"p={self.p}, q={self.q}, online={self.online}, eps={self.eps}, num_classes={self.num_classes}"


def _focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
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
        logits, targets = _check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        return _focal_terms(logits, targets, self.gamma).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


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
        logits, targets = _check_inputs(logits, targets, len(self.weight))
        if self.base == "ce":
            per_sample = F.cross_entropy(logits, targets, reduction="none")
        else:
            per_sample = _focal_terms(logits, targets, self.gamma)
        return (per_sample * self.weight[targets]).mean()

    def extra_repr(self) -> str:
        return f"beta={self.beta}, base={self.base!r}" + (f", gamma={self.gamma}" if self.base == "focal" else "")


class BalancedSoftmaxLoss(BaseLoss):
    """Balanced softmax (Ren et al. 2020): cross-entropy on ``logits + log prior``.

    Predict with the raw logits; the prior only enters the training objective.
    """

    def __init__(self, class_counts: Counts) -> None:
        super().__init__()
        self.register_buffer("log_prior", _log_prior(_as_counts(class_counts)), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_inputs(logits, targets, len(self.log_prior))
        return F.cross_entropy(logits + self.log_prior, targets)


class LogitAdjustedLoss(BaseLoss):
    """Logit-adjusted loss (Menon et al. 2021): cross-entropy on ``logits + tau * log prior``.

    tau = 1 is balanced softmax. Predict with the raw logits (or use :func:`logit_adjust`
    post hoc on a model trained with plain CE).
    """

    def __init__(self, class_counts: Counts, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("log_prior", _log_prior(_as_counts(class_counts)), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_inputs(logits, targets, len(self.log_prior))
        return F.cross_entropy(logits + self.tau * self.log_prior, targets)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


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
        counts = _as_counts(class_counts)
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
        logits, targets = _check_inputs(logits, targets, len(self.margins))
        shifted = logits.scatter_add(1, targets[:, None], -self.margins[targets][:, None])
        weight = self.drw_weight if self.reweight else None
        return F.cross_entropy(self.s * shifted, targets, weight=weight)

    def extra_repr(self) -> str:
        return f"max_margin={self.max_margin}, s={self.s}, drw_epoch={self.drw_epoch}, drw_beta={self.drw_beta}"


class ContrastiveLoss(BaseLoss):
    """Symmetric image-text InfoNCE over the batch, class prompts as the texts (TIN eq. 2).

    CLIP's objective (Radford et al. 2021) with each image paired to its class prompt. It
    is computed from the TIN logits ``z (B, C) = scale * cos(image_b, prompt_c)``, restricted
    to the set P of classes present in the batch (the batch's "captions"):

    * image -> text: cross-entropy of each image over the present prompts,
      ``-log(e^{z_{b,y_b}} / sum_{c in P} e^{z_{b,c}})``, averaged over images;
    * text -> image: for each present class c a softmax over the batch's images,
      ``log p_c(b) = z_{b,c} - log sum_{b'} e^{z_{b',c}}``. All images of class c are
      positives; the class's loss is minus the *mean* of their log-probabilities (the
      "L_out" form of supervised contrastive learning, Khosla et al. 2020, which trained
      better there than minus the log of their summed probability); averaged over P.

    loss = (image->text + text->image) / 2. With one image per class in the batch this is
    exactly CLIP's loss. Under DDP the batch is each rank's own (no gather).
    """

    def __init__(self, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _check_inputs(logits, targets, self.num_classes or logits.shape[-1])
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[targets] = True
        image_to_text = F.cross_entropy(logits.masked_fill(~present[None, :], float("-inf")), targets)
        classes = present.nonzero().squeeze(1)
        log_p = logits[:, classes].log_softmax(dim=0)  # (B, P): softmax over images, per prompt
        positive = (targets[:, None] == classes[None, :]).to(log_p.dtype)
        text_to_image = (-(log_p * positive).sum(0) / positive.sum(0)).mean()
        return 0.5 * (image_to_text + text_to_image)


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


LOSS_NAMES = LOSSES  # declared with the config schema


def build_loss(loss_cfg: Any, class_counts: Counts) -> BaseLoss:
    """Build the loss named by ``loss_cfg.name`` (a ``LossConfig`` or its OmegaConf node).

    ``class_counts``: training-split samples per class (their length fixes C).
    A non-zero ``loss_cfg.contrastive_weight`` adds the contrastive term (:class:`WithContrastive`).
    """
    loss = _build_base_loss(loss_cfg, class_counts)
    weight = float(getattr(loss_cfg, "contrastive_weight", 0.0) or 0.0)
    if weight and loss_cfg.name == "contrastive":
        raise TinltError("config key 'loss.contrastive_weight' must stay 0 with loss.name=contrastive")
    return WithContrastive(loss, weight) if weight else loss


def _build_base_loss(loss_cfg: Any, class_counts: Counts) -> BaseLoss:
    name = loss_cfg.name
    counts = _as_counts(class_counts)
    check_choice("loss.name", name, LOSS_NAMES)
    smoothing = float(getattr(loss_cfg, "label_smoothing", 0.0))
    if smoothing and name != "ce":
        raise TinltError(f"config key 'loss.label_smoothing' is only used by loss.name=ce, not {name!r}")
    if name == "seesaw":
        return SeesawLoss(counts, p=loss_cfg.p, q=loss_cfg.q, online=loss_cfg.online, eps=loss_cfg.eps)
    if name == "ce":
        return CrossEntropyLoss(num_classes=len(counts), label_smoothing=smoothing)
    if name == "focal":
        return FocalLoss(gamma=loss_cfg.gamma, num_classes=len(counts))
    if name in ("cb_ce", "cb_focal"):
        return ClassBalancedLoss(counts, beta=loss_cfg.beta, base=name[3:], gamma=loss_cfg.gamma)
    if name == "balanced_softmax":
        return BalancedSoftmaxLoss(counts)
    if name == "logit_adjust":
        return LogitAdjustedLoss(counts, tau=loss_cfg.tau)
    if name == "contrastive":
        return ContrastiveLoss(num_classes=len(counts))
    return LDAMLoss(
        counts,
        max_margin=loss_cfg.max_margin,
        s=loss_cfg.s,
        drw_epoch=loss_cfg.drw_epoch,
        drw_beta=loss_cfg.drw_beta,
    )
