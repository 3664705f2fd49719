"""Evaluation: run a model over a split and turn its predictions into long-tail metrics.

Counts, not accuracies, cross process boundaries: each rank builds a confusion matrix on
its shard (no padding, so no image is counted twice) and the matrices are summed before
any accuracy is computed.

The model is a TIN (its class text features are computed once per pass) or any scoring
backend with ``logits(images) -> (B, C) tensor`` (e.g. an exported ONNX graph,
``tinlt.deploy.onnx_predict``), so every path from images to metrics is this loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..metrics import compute_metrics, confusion_matrix
from .device import autocast_for
from .distributed import all_gather_arrays, all_gather_optional, all_reduce_numpy
from .progress import progress


@dataclass
class Predictions:
    confusion: np.ndarray  # (C, C), summed over ranks
    indices: np.ndarray  # dataset indices, gathered over ranks
    targets: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray  # softmax probability of the predicted class
    scores: Optional[np.ndarray]  # (N, C) probabilities; kept only for small C (binary metrics)


def over_views(score: Callable[[torch.Tensor], torch.Tensor], images) -> torch.Tensor:
    """Logits of a batch; a (B, V, 3, H, W) batch of test-time views gives their mean logits."""
    if isinstance(images, torch.Tensor) and images.ndim == 5:
        b, v = images.shape[:2]
        return score(images.flatten(0, 1)).float().reshape(b, v, -1).mean(dim=1)
    return score(images)


def _scorer(model: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[], None]]:
    """(images -> logits, restore) for a TIN (eval mode, text features once) or a backend."""
    if hasattr(model, "logits") and not isinstance(model, torch.nn.Module):
        return model.logits, lambda: None
    core = getattr(model, "module", model)
    was_training = core.training
    core.eval()  # eval mode: dropout, BatchNorm statistics and the evaluation-time adjustments
    score = core.scorer() if hasattr(core, "scorer") else core  # a TIN shares its class rows over the batches
    return score, (lambda: core.train(was_training))


@torch.no_grad()
def predict_loader(
    model: Any,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device,
    amp: str = "auto",
    keep_scores_up_to: int = 16,
    desc: str = "eval",
    quiet: bool = False,
) -> Predictions:
    """Predictions of ``model`` (a TIN or a backend, see the module doc) over ``loader``."""
    score, restore = _scorer(model)
    idx_l, tgt_l, pred_l, conf_l, score_l = [], [], [], [], []
    for images, targets, indices in progress(loader, desc=desc, quiet=quiet, unit="batch"):
        images = images.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = over_views(score, images)
        probs = logits.float().softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        idx_l.append(np.asarray(indices))
        tgt_l.append(targets.numpy())
        pred_l.append(pred.cpu().numpy())
        conf_l.append(conf.cpu().numpy())
        if num_classes <= keep_scores_up_to:
            score_l.append(probs.cpu().numpy())
    restore()

    def cat(parts, dtype, shape=(0,)):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    targets = cat(tgt_l, np.int64)
    preds = cat(pred_l, np.int64)
    confusion = all_reduce_numpy(confusion_matrix(targets, preds, num_classes))
    scores = cat(score_l, np.float32, (0, num_classes)) if num_classes <= keep_scores_up_to else None
    return Predictions(
        confusion=confusion,
        indices=all_gather_arrays(cat(idx_l, np.int64)),
        targets=all_gather_arrays(targets),
        preds=all_gather_arrays(preds),
        confidence=all_gather_arrays(cat(conf_l, np.float32)),
        scores=all_gather_optional(scores),
    )



def metrics_from_predictions(pred: Predictions, *, groups, classnames, train_counts) -> dict:
    return compute_metrics(
        pred.confusion,
        groups,
        classnames=list(classnames),
        train_counts=np.asarray(train_counts),
        scores=pred.scores,
        targets=pred.targets if pred.scores is not None else None,
    )
