"""Evaluation: run a model over a split and turn its predictions into long-tail metrics.

Counts, not accuracies, cross process boundaries: each rank builds a confusion matrix on
its shard (no padding, so no image is counted twice) and the matrices are summed before
any accuracy is computed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..metrics import compute_metrics, confusion_matrix
from .distributed import all_gather_arrays, all_reduce_numpy
from .progress import progress


@dataclass
class Predictions:
    confusion: np.ndarray  # (C, C), summed over ranks
    indices: np.ndarray  # dataset indices, gathered over ranks
    targets: np.ndarray
    preds: np.ndarray
    confidence: np.ndarray  # softmax probability of the predicted class
    scores: Optional[np.ndarray]  # (N, C) probabilities; kept only for small C (binary metrics)


def autocast_for(device: torch.device, amp: str):
    """bf16 autocast on CUDA by default, nothing on CPU (fp32 there is both exact and fastest)."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device,
    amp: str = "auto",
    keep_scores_up_to: int = 16,
    desc: str = "eval",
    quiet: bool = False,
    logit_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Predictions:
    """``logit_transform`` (e.g. post-hoc logit adjustment, tinlt/two_stage.py) maps each batch's
    fp32 logits before the softmax; predictions and confidences follow the transformed logits."""
    core = getattr(model, "module", model)
    was_training = core.training
    core.eval()
    text_features = core.class_text_features() if core.uses_text_head else None
    idx_l, tgt_l, pred_l, conf_l, score_l = [], [], [], [], []
    for images, targets, indices in progress(loader, desc=desc, quiet=quiet, unit="batch"):
        images = images.to(device, non_blocking=True)
        with autocast_for(device, amp):
            logits = core(images, text_features=text_features)
        logits = logits.float()
        if logit_transform is not None:
            logits = logit_transform(logits)
        probs = logits.softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        idx_l.append(np.asarray(indices))
        tgt_l.append(targets.numpy())
        pred_l.append(pred.cpu().numpy())
        conf_l.append(conf.cpu().numpy())
        if num_classes <= keep_scores_up_to:
            score_l.append(probs.cpu().numpy())
    core.train(was_training)

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
        scores=all_gather_arrays(scores) if scores is not None else None,
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
