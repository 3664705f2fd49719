"""A linear or cosine head's first rows from the training images (``model.classifier_init``).

* ``class_mean``: each class's mean L2-normalised image embedding, renormalised;
* ``probe``: the weights of a class-balanced multinomial logistic regression on those
  embeddings (scikit-learn's ``LogisticRegression(class_weight="balanced")``, as LIFT fits
  it), each row normalised.

Embeddings come from the model as it stands before the first step (pretrained towers; a
zero-initialised tuning method changes nothing yet), through the evaluation transform.
``text`` rows need no images and are set when the model is built (models/heads.py).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TinltError
from .loaders import eval_loader

DATA_INITS = ("class_mean", "probe")


@torch.no_grad()
def training_embeddings(model, samples, transform, cfg, device) -> tuple[torch.Tensor, np.ndarray]:
    """(N, D) L2-normalised image embeddings of ``samples`` and their labels, in eval mode."""
    was = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, targets, _ in eval_loader(samples, transform, cfg, device=device):
            feats.append(model.encode_image(images.to(device)).float().cpu())
            labels.append(targets.numpy())
    finally:
        model.train(was)
    return torch.cat(feats), np.concatenate(labels)


def init_classifier(model, samples, transform, cfg, device, log=print) -> Optional[str]:
    """Set the head's rows per ``model.classifier_init`` when it needs the training images."""
    init = cfg.model.get("classifier_init", "") or ""
    if init not in DATA_INITS:
        return None
    feats, labels = training_embeddings(model, samples, transform, cfg, device)
    C = len(model.classnames)
    if init == "class_mean":
        rows = torch.stack([feats[torch.from_numpy(labels == c)].mean(0) if (labels == c).any()
                            else torch.zeros(feats.shape[1]) for c in range(C)])
    else:
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(labels)) < C:
            raise TinltError("model.classifier_init = 'probe' needs images of every class in the training split")
        clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(feats.numpy(), labels)
        coef = torch.from_numpy(clf.coef_).float()
        rows = torch.cat([-coef, coef]) if C == 2 else coef  # binary: one row, w for class 1 and -w for class 0
    model.set_classifier_rows(F.normalize(rows, dim=-1))
    log(f"model.classifier_init: {init} rows from {len(labels)} training images")
    return init
