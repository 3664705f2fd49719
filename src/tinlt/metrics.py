"""Long-tail evaluation metrics, all computed from a confusion matrix (rows = true class).

Counts sum across ranks, accuracies do not: distributed evaluation sums the per-rank
confusion matrices first and calls :func:`compute_metrics` once. Also owns the binary
(two-class) metrics - precision, recall, F1, ROC-AUC - and the PR / ROC curves used by
reports and threshold calibration, and the decision rule of a calibrated two-class model
(``ThresholdRule``). Pure numpy, so the torch-free ONNX predictor shares it.

Units: accuracies are percent (0-100); binary precision / recall / F1 / AUC are fractions (0-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import TinltError

GROUP_NAMES = ("many", "medium", "few")


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, possibly on an accelerator
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(targets: Any, preds: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; entry [t, p] = samples of true class t predicted as p."""
    t = _np(targets).astype(np.int64).ravel()
    p = _np(preds).astype(np.int64).ravel()
    if t.shape != p.shape:
        raise TinltError(f"confusion_matrix: {t.size} targets but {p.size} predictions")
    for what, a in (("targets", t), ("predictions", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise TinltError(f"confusion_matrix: {what} must lie in [0, {num_classes}), got {a.min()}..{a.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _mean_or_none(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def _rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(scores_pos: Any, is_pos: Any) -> Optional[float]:
    """ROC-AUC by the Mann-Whitney rank formula (ties count 1/2); None if a class is absent."""
    s = _np(scores_pos).astype(np.float64).ravel()
    y = _np(is_pos).astype(bool).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _rankdata(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _cumulative_counts(scores_pos: Any, is_pos: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """TP and FP when predicting positive for score >= each distinct threshold (descending)."""
    s = _np(scores_pos).astype(np.float64).ravel()
    y = _np(is_pos).astype(bool).ravel()
    if s.shape != y.shape:
        raise TinltError(f"curve: {s.size} scores but {y.size} labels")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, bool)
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    return tp, fp, s[last_of_run], n_pos, n_neg


def precision_recall_curve(scores_pos: Any, is_pos: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score used as threshold (positive iff score >= t).

    Returns ``(precision, recall, thresholds)``, equal lengths, thresholds descending (so recall
    rises). No end points are added.
    """
    tp, fp, thresholds, n_pos, _ = _cumulative_counts(scores_pos, is_pos)
    if n_pos == 0:
        raise TinltError("precision_recall_curve: needs at least one positive sample")
    precision = tp / (tp + fp)  # tp + fp >= 1 at every threshold
    return precision, tp / n_pos, thresholds


def roc_curve(scores_pos: Any, is_pos: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at each distinct threshold (positive iff score >= t).

    Returns ``(fpr, tpr, thresholds)`` starting at (0, 0) with threshold +inf, thresholds
    descending; ``np.trapezoid(tpr, fpr)`` equals :func:`roc_auc`.
    """
    tp, fp, thresholds, n_pos, n_neg = _cumulative_counts(scores_pos, is_pos)
    if n_pos == 0 or n_neg == 0:
        raise TinltError("roc_curve: needs both positive and negative samples")
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, thresholds]


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> Optional[tuple[float, float]]:
    """The Wilson score interval (95% by default) of a proportion; None for no trials."""
    if trials <= 0:
        return None
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def precision_at_prevalence(recall: Optional[float], fpr: Optional[float], prevalence: float) -> Optional[float]:
    """The precision the same recall and false-positive rate give where a share ``prevalence``
    of the images are positive (a balanced test set overstates precision for a rare class)."""
    if recall is None or fpr is None or not 0 < prevalence < 1:
        return None
    hits, false_alarms = recall * prevalence, fpr * (1 - prevalence)
    return hits / (hits + false_alarms) if hits + false_alarms else None



def add_precision_at_prevalence(metrics: dict, prevalence: Optional[float]) -> None:
    """With ``prevalence``, each binary operating point in ``metrics`` (argmax and ``at_threshold``)
    gains the precision to expect where the rare class has that share (``tinlt eval --prevalence``)."""
    if prevalence is None:
        return
    for m in (metrics, metrics.get("at_threshold") or {}):
        if "binary" in m:
            b = m["binary"]
            b["precision_at_prevalence"] = {"prevalence": prevalence,
                                            "precision": precision_at_prevalence(b["recall"], b["fpr"], prevalence)}


def scores_line(m: dict) -> str:
    """overall / many / medium / few / instance, as the console prints them."""
    def f(v):
        return "  -  " if v is None else f"{v:5.1f}"

    return (f"overall {f(m['overall'])} | many {f(m['many'])} | medium {f(m['medium'])} | "
            f"few {f(m['few'])} | instance {f(m['instance_acc'])}")

def _binary(
    confusion: np.ndarray,
    train_counts: np.ndarray,
    classnames: Sequence[str],
    scores: Any,
    targets: Any,
) -> dict:
    # rare class = smallest training count; on a tie, the higher index (class 1, the usual positive)
    pos = int(len(train_counts) - 1 - np.argmin(train_counts[::-1]))
    neg = 1 - pos
    tp, fn = int(confusion[pos, pos]), int(confusion[pos, neg])
    fp = int(confusion[neg, pos])
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auc = None
    if scores is not None and targets is not None:
        sc = _np(scores).astype(np.float64)
        tg = _np(targets).astype(np.int64).ravel()
        if sc.ndim != 2 or sc.shape[1] != 2 or sc.shape[0] != tg.shape[0]:
            raise TinltError(f"compute_metrics: scores must be (N, 2) for {tg.shape[0]} targets, got {sc.shape}")
        # difference of the two columns ranks like the softmax probability, for probabilities and logits alike
        auc = roc_auc(sc[:, pos] - sc[:, neg], tg == pos)
    tn = int(confusion[neg, neg])
    fpr = fp / (fp + tn) if fp + tn else None
    prior = float(train_counts[pos]) / float(train_counts.sum()) if train_counts.sum() else 0.0
    ci = wilson_interval(tp, tp + fn)
    return {
        "positive_class": pos,
        "positive_name": str(classnames[pos]),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "recall_ci95": list(ci) if ci else None,
        "positives": tp + fn,
        "fpr": fpr,
        "f1": f1,
        "auc": auc,
        "train_prevalence": prior,
        "precision_at_train_prevalence": precision_at_prevalence(recall, fpr, prior),
    }


def compute_metrics(
    confusion: Any,
    groups: Mapping[str, Any],
    *,
    classnames: Sequence[str],
    train_counts: Any,
    scores: Any = None,
    targets: Any = None,
) -> dict:
    """Everything ``metrics.json`` holds, as plain Python types (JSON-serialisable).

    ``groups``: group name -> class indices (many / medium / few from the data package).
    ``overall`` is the mean per-class accuracy over classes with at least one test sample;
    a group's value is None when the group is empty or none of its classes has test samples.
    Two classes add ``binary`` (rare class positive); ``scores`` (N, 2) probabilities or
    logits with ``targets`` (N,) give its AUC.
    """
    cm = _np(confusion).astype(np.int64)
    num_classes = len(classnames)
    if cm.shape != (num_classes, num_classes):
        raise TinltError(f"compute_metrics: confusion matrix is {cm.shape}, expected ({num_classes}, {num_classes})")
    counts = _np(train_counts).astype(np.int64).ravel()
    if counts.shape != (num_classes,):
        raise TinltError(f"compute_metrics: {counts.size} train counts for {num_classes} classes")

    test_counts = cm.sum(axis=1)
    correct = np.diag(cm)
    acc: list[Optional[float]] = [
        100.0 * float(correct[c]) / float(test_counts[c]) if test_counts[c] else None for c in range(num_classes)
    ]
    group_of: dict[int, str] = {}
    group_idx: dict[str, np.ndarray] = {}
    for name, idx in groups.items():
        idx = _np(idx).astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
            raise TinltError(f"compute_metrics: group '{name}' has class indices outside [0, {num_classes})")
        group_idx[str(name)] = idx
        for c in idx:
            group_of.setdefault(int(c), str(name))

    total = int(cm.sum())
    out: dict[str, Any] = {
        "overall": _mean_or_none([a for a in acc if a is not None]),
        "instance_acc": 100.0 * float(correct.sum()) / total if total else None,
    }
    for name in dict.fromkeys((*GROUP_NAMES, *group_idx)):
        idx = group_idx.get(name, np.zeros(0, np.int64))
        out[name] = _mean_or_none([acc[c] for c in idx if acc[c] is not None])
    out["per_class"] = [
        {
            "class": c,
            "name": str(classnames[c]),
            "train_count": int(counts[c]),
            "test_count": int(test_counts[c]),
            "accuracy": acc[c],
            "group": group_of.get(c),
        }
        for c in range(num_classes)
    ]
    out["confusion"] = cm.tolist()
    out["num_samples"] = total
    out["group_sizes"] = {name: int(len(group_idx.get(name, ()))) for name in dict.fromkeys((*GROUP_NAMES, *group_idx))}
    if num_classes == 2:
        out["binary"] = _binary(cm, counts, classnames, scores, targets)
    return out


def top_confusions(confusion: Any, classnames: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells as (true name, predicted name, count), count > 0, descending."""
    cm = _np(confusion).astype(np.int64).copy()
    np.fill_diagonal(cm, 0)
    true_idx, pred_idx = np.nonzero(cm)
    counts = cm[true_idx, pred_idx]
    order = np.lexsort((pred_idx, true_idx, -counts))[:k]  # ties: by true then predicted index
    return [(str(classnames[true_idx[i]]), str(classnames[pred_idx[i]]), int(counts[i])) for i in order]


def format_table(metrics: Mapping[str, Any]) -> str:
    """Two-line fixed-width table of overall / many / medium / few / instance accuracy (percent)."""
    cols = [("overall", "overall"), ("many", "many"), ("medium", "medium"), ("few", "few"),
            ("instance", "instance_acc")]

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    header = " ".join(f"{title:>9}" for title, _ in cols)
    values = " ".join(f"{cell(metrics.get(key)):>9}" for _, key in cols)
    return f"{header}\n{values}"


# ----------------------------------------------------------------------------- decision rule


@dataclass(frozen=True)
class ThresholdRule:
    """Two classes: predict ``positive`` when its probability >= ``value``, else the other class.

    The deployed operating point of a calibrated two-class model (``tinlt calibrate``);
    evaluation reports metrics at it and every prediction path decides by it.
    """

    value: float
    positive: int
    positive_name: str
    info: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = ""
        if "target_recall" in self.info:
            extra = f" (calibrated for recall >= {self.info['target_recall']:g} on the {self.info.get('split', '?')} split)"
        return f"predicts '{self.positive_name}' when P({self.positive_name}) >= {self.value:.6g}{extra}"

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(N, 2) probabilities -> (N,) class indices."""
        pos = np.asarray(probs)[:, self.positive] >= self.value
        return np.where(pos, self.positive, 1 - self.positive)


def threshold_rule(threshold: Any, info: Optional[dict], classnames: Sequence[str]) -> Optional[ThresholdRule]:
    """The rule stored with a calibrated checkpoint/model, or None (argmax)."""
    if threshold is None:
        return None
    if len(classnames) != 2:
        raise TinltError(f"a decision threshold needs 2 classes, the model has {len(classnames)}")
    info = dict(info or {})
    pos = int(info.get("positive_class", 1))
    if pos not in (0, 1):
        raise TinltError(f"threshold info: positive_class must be 0 or 1, got {pos}")
    value = float(threshold)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise TinltError(f"threshold must be a probability in [0, 1], got {threshold}")
    return ThresholdRule(value=value, positive=pos, positive_name=str(classnames[pos]), info=info)
