"""Choices made on the validation split after training: post-hoc logit adjustment's tau.

``train.posthoc_tau_grid: [0, 0.25, ...]`` picks ``train.posthoc_tau`` on the evaluation split
(the held-out validation images) with the selected weights: the tau with the best mean
per-class accuracy (the smallest on a tie). The choice goes into the run's config and
``best.pt``, so ``tinlt eval``, ``predict`` and ``export`` apply it; the test split is
scored once, afterwards. Selecting on the test split is refused.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import TinltError
from ..metrics import compute_metrics, confusion_matrix
from ..models.adjust import apply_eval_adjustments, posthoc_offset
from . import checkpoint as ckpt_io
from .distributed import all_gather_arrays


@torch.no_grad()
def split_logits(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """Raw (unadjusted by post-hoc tau) logits and targets of a loader, in eval mode."""
    from .evaluate import over_views

    was = model.training
    model.eval()
    tau_norm, offset = model.eval_adjustments()
    model.set_eval_adjustments(tau_norm=tau_norm, logit_offset=None)
    score = model.scorer()
    out, targets = [], []
    try:
        for images, y, _ in loader:
            out.append(over_views(score, images.to(device)).float().cpu())
            targets.append(y.numpy())
    finally:
        model.set_eval_adjustments(tau_norm=tau_norm, logit_offset=offset)
        model.train(was)
    # every rank scored its shard: gather, so every rank makes the same choice
    return all_gather_arrays(torch.cat(out).numpy()), all_gather_arrays(np.concatenate(targets))


def select_posthoc_tau(model, loader, data, cfg, device) -> Optional[dict]:
    """Choose ``train.posthoc_tau`` on the evaluation split (see the module doc); None without a grid."""
    grid = [float(t) for t in (cfg.train.get("posthoc_tau_grid") or [])]
    if not grid:
        return None
    if data.eval_name != "val":
        raise TinltError("config key 'train.posthoc_tau_grid' selects tau on the validation split, but the run has "
                         "none (it would select on the test split): set data.val, e.g. data.val.kind=holdout")
    logits, targets = split_logits(model, loader, device)
    scores = {}
    for tau in grid:
        shift = posthoc_offset(data.train_counts, tau)
        adjusted = logits + (shift.numpy() if shift is not None else 0.0)
        cm = confusion_matrix(targets, adjusted.argmax(1), len(data.classnames))
        scores[tau] = compute_metrics(cm, data.groups, classnames=data.classnames,
                                      train_counts=data.train_counts)["overall"]
    best = max(grid, key=lambda t: (scores[t], -t))
    cfg.train.posthoc_tau = best
    apply_eval_adjustments(model, cfg.train, data.train_counts)
    return {"posthoc_tau": best, "split": "val", "val_overall_by_tau": {str(t): s for t, s in scores.items()}}


def record_selection(run, best: Optional[dict], cfg) -> None:
    """Write the chosen settings where deployment reads them: best.pt's config and config.yaml."""
    from ..config import to_dict

    if best is not None:
        best["config"] = to_dict(cfg)
        ckpt_io.save_atomic(best, run.best)
    run.write_config(cfg)
