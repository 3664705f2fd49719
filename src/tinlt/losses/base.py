"""What every loss shares: the contract (``(logits (B, C), targets (B,)) -> scalar mean``,
a ``set_epoch`` hook), input checks, class counts and the priors built from them.

Losses work in log space (finite for logits of +-1e4 in fp32; inputs are upcast to fp32
first). Class counts always come from the training split; priors and per-class constants
are non-persistent buffers rebuilt from the data at start-up.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import TinltError

Counts = Union[Sequence[int], np.ndarray, torch.Tensor]


def as_counts(class_counts: Counts) -> torch.Tensor:
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


def log_prior(counts: torch.Tensor) -> torch.Tensor:
    """log(n_c / sum n); empty classes count as 1 so the log stays finite."""
    n = counts.clamp(min=1).to(torch.float64)
    return (n / n.sum()).log().to(torch.float32)


def class_balanced_weights(class_counts: Counts, beta: float) -> torch.Tensor:
    """Cui et al. 2019: w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to C (fp32 tensor).

    beta = 0 gives all ones; beta -> 1 approaches inverse frequency. Empty classes count as 1.
    """
    counts = as_counts(class_counts)
    if not 0.0 <= beta < 1.0:
        raise TinltError(f"config key 'loss.beta' must be in [0, 1), got {beta}")
    n = counts.clamp(min=1).to(torch.float64)  # float64: beta=0.9999 and n~1e4 need the precision
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(w)).to(torch.float32)


def logit_adjust(logits: torch.Tensor, class_counts: Counts, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): ``logits - tau * log prior``, for inference."""
    prior = log_prior(as_counts(class_counts)).to(logits.device)
    return logits - tau * prior.to(logits.dtype)


def check_inputs(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
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
