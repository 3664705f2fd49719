"""A linear or cosine head's first rows from the training images (``model.classifier_init``).

* ``class_mean``: each class's mean L2-normalised image embedding, renormalised;
* ``probe``: the weights of a class-balanced multinomial logistic regression on those
  embeddings (scikit-learn's ``LogisticRegression(class_weight="balanced")``, as LIFT fits
  it), each row normalised.
* ``logistic``: the linear probe as practitioners build it, solved, not started: the
  embeddings standardised, a multinomial logistic regression solved to convergence (lbfgs),
  its L2 strength (``model.probe_c``, else chosen on inner stratified folds of the training
  split by the logit-adjusted mean per-class accuracy of their pooled predictions), the
  standardisation folded into the linear head's weight and bias. With ``optim.epochs: 0``
  that is the whole training; post-hoc logit adjustment then applies as to any head.

Embeddings come from the model as it stands before the first step (pretrained towers; a
zero-initialised tuning method changes nothing yet), through the evaluation transform.
``text`` rows need no images and are set when the model is built (models/heads.py).
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TinltError
from .loaders import eval_loader

DATA_INITS = ("class_mean", "probe", "logistic")
PROBE_CS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)  # inverse L2 strengths tried on inner folds


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
    if init == "logistic":
        weight, bias, c, how = solve_probe(feats.numpy(), labels, C, float(cfg.model.get("probe_c", 0.0) or 0.0),
                                           seed=int(cfg.train.seed))
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(weight).to(model.head.weight))
            model.head.bias.copy_(torch.from_numpy(bias).to(model.head.bias))
        log(f"model.classifier_init: logistic probe solved on {len(labels)} training images, C = {c:g} ({how})")
        return init
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


def _fit(z: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(z, y)


def _fit_path(z: np.ndarray, y: np.ndarray, cs, z_val: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Validation logits for each C in ascending ``cs``, each fit starting from the previous optimum
    (the objective is strictly convex, so the optimum is the same; the solver starts near it)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=5000, tol=1e-8, warm_start=True)
    out = []
    for c in cs:
        clf.set_params(C=c)
        out.append(_full_logits(clf.fit(z, y), z_val, num_classes))
    return out



def _full_logits(clf, z: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits over every class; a class absent from the fit gets a logit that never wins."""
    out = np.full((len(z), num_classes), -1e4)
    scores = clf.decision_function(z)
    if scores.ndim == 1:  # two classes seen: one margin for the second
        scores = np.stack([-scores / 2, scores / 2], axis=1)
    out[:, clf.classes_] = scores
    return out


def _la_balanced_accuracy(logits: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> float:
    prior = np.log(np.maximum(counts, 1) / counts.sum())
    pred = (logits - prior).argmax(1)
    present = [c for c in np.unique(labels)]
    return float(np.mean([(pred[labels == c] == c).mean() for c in present]))


def solve_probe(feats: np.ndarray, labels: np.ndarray, num_classes: int, c: float = 0.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(weight (C, D), bias (C,), C used, how it was chosen) of the standardised logistic probe
    (see the module doc), as a linear layer on the raw embeddings."""
    from sklearn.model_selection import StratifiedKFold

    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    counts = np.bincount(labels, minlength=num_classes)
    how = "model.probe_c"
    if c <= 0:
        k = int(min(5, max(2, counts[counts > 0].min())))
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        best = None
        with warnings.catch_warnings():  # a class smaller than the inner folds is expected: each image in one
            warnings.filterwarnings("ignore", message="The least populated class")
            splits = list(folds.split(z, labels))
        pooled = np.zeros((len(PROBE_CS), len(z), num_classes))
        for tr, va in splits:
            pooled[:, va] = _fit_path(z[tr], labels[tr], PROBE_CS, z[va], num_classes)
        for cand, logits in zip(PROBE_CS, pooled):
            score = _la_balanced_accuracy(logits, labels, counts)
            if best is None or score > best[0] + 1e-12:  # a tie keeps the smaller C (stronger penalty)
                best = (score, cand)
        c, how = best[1], f"chosen on {k} inner folds, logit-adjusted mean per-class accuracy {100 * best[0]:.1f}"
    clf = _fit(z, labels, c)
    w = np.zeros((num_classes, z.shape[1]))
    b = np.full(num_classes, -1e4)
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes seen: sklearn keeps one row for the second
        coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-icpt / 2, icpt / 2])
    w[clf.classes_], b[clf.classes_] = coef, icpt
    weight = w / sd
    return weight.astype(np.float32), (b - weight @ mu).astype(np.float32), float(c), how
