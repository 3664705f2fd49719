"""Evaluation-time classifier adjustments: post-hoc logit adjustment and tau-normalisation.

Owns the two re-balancing steps that change how a trained classifier scores, not how it
trains (driven by ``train.posthoc_tau`` and ``train.tau_norm``), and the one way they are
applied: :func:`apply_eval_adjustments` sets them on the model, and ``TIN`` applies them
whenever it is in eval mode. Training steps (train mode) see the raw classifier; every
evaluation, prediction and export (eval mode) sees the adjusted one, so no caller has to
remember them. Checkpoints keep the raw weights; the settings travel in the config.

* ``train.posthoc_tau: tau`` (Menon et al. 2021): logits - tau * log(prior), the prior
  being the training split's class frequencies (checkpoints carry the counts).
* ``train.tau_norm: tau`` (Kang et al. 2020): linear-head rows ``w_c / ||w_c||^tau``, bias
  dropped (as the authors evaluate). The text head needs none: its rows are L2-normalised
  text features, so tau-norm would be the identity; the config check refuses it.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ..errors import TinltError


def tau_normalize_weight(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Rows ``w_c / ||w_c||_2^tau`` of a (C, D) classifier weight; tau=0 leaves it, tau=1 unit rows."""
    if weight.ndim != 2:
        raise TinltError(f"tau-norm: expected a (classes, features) weight, got shape {tuple(weight.shape)}")
    norms = weight.norm(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny)  # zero rows stay zero
    return weight / norms.pow(tau)


def posthoc_offset(class_counts: Any, tau: float) -> Optional[torch.Tensor]:
    """The (C,) offset ``-tau * log prior`` that post-hoc adjustment adds to every logit; None when tau is 0."""
    if not tau:
        return None
    from ..losses import logit_adjust

    counts = np.asarray(class_counts)
    return logit_adjust(torch.zeros(1, len(counts)), counts, tau=float(tau))[0]


def adjustment_settings(train_cfg: Any) -> tuple[Optional[float], float]:
    """(tau_norm or None, posthoc tau) from the ``train`` config section."""
    tau_norm = train_cfg.get("tau_norm", None)
    return (None if tau_norm is None else float(tau_norm)), float(train_cfg.get("posthoc_tau", 0.0) or 0.0)


def apply_eval_adjustments(model, train_cfg: Any, class_counts: Any) -> None:
    """Set the run's evaluation-time adjustments on ``model`` (a TIN); replaces earlier ones."""
    tau_norm, tau = adjustment_settings(train_cfg)
    model.set_eval_adjustments(tau_norm=tau_norm, logit_offset=posthoc_offset(class_counts, tau))
