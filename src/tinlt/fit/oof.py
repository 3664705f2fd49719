"""Out-of-fold predictions and every choice made on them.

A recipe that ran on every fold has, for each training image, the logits of the one fold
model that never trained on it (:func:`pool`), at every evaluated epoch. On these pooled
predictions (never on the test split) ``tinlt fit`` chooses the epoch count and post-hoc tau
of each recipe, scores the recipes with the chosen metric, puts an interval on each one's
difference to the leader by a paired bootstrap over the training images, picks the cheapest
recipe within the noise of the leader (:data:`NOISE_RULES`), and, for a target recall, the threshold.

Metrics (``--metric``): ``per_class`` (mean per-class accuracy, the benchmark's "overall"),
``balanced_accuracy`` (scikit-learn's, the same number computed by an independent routine),
``auc`` (ROC-AUC of the rare class, or macro one-vs-rest), ``recall@P`` (two classes: the
rare class's highest recall at a precision of at least P, e.g. ``recall@0.9``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..errors import TinltError

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # post-hoc logit adjustment tried on the pooled predictions
BOOTSTRAP = 1000
# When a cheaper recipe counts as "within the noise" of the leader. ci95: its 95% interval reaches
# 0. one_se, narrower: Breiman's one-standard-error rule (ESL 7.10, glmnet's lambda.1se), its
# difference at most one bootstrap standard error. Clamp-like set, seed 1 (30 shirts): ci95 took the
# probe 5.4 OOF points behind ft_bs (interval -14.0 .. +2.0, SE 4.0), one_se took ft_bs; on test
# (scored once each, after) the probe's refit gave 81.2, ft_bs's 79.0 (its ensemble 81.0).
NOISE_RULES = ("ci95", "one_se")


@dataclass
class Pooled:
    """One recipe's out-of-fold logits: (E, N, C) at each evaluated epoch, for training images
    ``origin`` (indices into the training split) with labels ``target``."""

    origin: np.ndarray
    target: np.ndarray
    epochs: np.ndarray
    logits: np.ndarray


def pool(parts: Sequence[dict], num_images: int) -> Pooled:
    """Fold runs' val_predictions.npz contents -> one recipe's pooled predictions. Every image
    must be out of fold exactly once and every fold must have the same evaluated epochs."""
    epochs = [tuple(p["epochs"].tolist()) for p in parts]
    if len(set(epochs)) != 1:
        raise TinltError(f"fit: the folds evaluated different epochs ({sorted(set(epochs))}); rerun them")
    origin = np.concatenate([p["origin"] for p in parts])
    if len(np.unique(origin)) != len(origin):
        raise TinltError("fit: an image is out of fold twice (folds of different splits?)")
    order = np.argsort(origin, kind="stable")
    logits = np.concatenate([p["logits"] for p in parts], axis=1)[:, order]
    out = Pooled(origin[order], np.concatenate([p["target"] for p in parts])[order], np.asarray(epochs[0]), logits)
    if len(out.origin) > num_images:
        raise TinltError("fit: more out-of-fold predictions than training images")
    return out


def adjust(logits: np.ndarray, counts: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment: logits - tau * log(training prior)."""
    prior = np.log(np.maximum(counts, 1e-12) / counts.sum())
    return logits - tau * prior


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def per_class_accuracy(logits: np.ndarray, target: np.ndarray) -> float:
    """Mean over the classes present of the share of their images predicted right (%)."""
    pred = logits.argmax(-1)
    return float(100 * np.mean([(pred[target == c] == c).mean() for c in np.unique(target)]))


def _balanced_accuracy(logits, target) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(100 * balanced_accuracy_score(target, logits.argmax(-1)))


def rare_class(counts: np.ndarray) -> int:
    """The class with the fewest training images (the higher index on a tie)."""
    return int(len(counts) - 1 - np.argmin(np.asarray(counts)[::-1]))


def metric_fn(name: str, counts: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    """``f(logits, target) -> score`` (higher is better) for ``--metric NAME``."""
    if name == "per_class":
        return per_class_accuracy
    if name == "balanced_accuracy":
        return _balanced_accuracy
    if name == "auc":
        from sklearn.metrics import roc_auc_score

        def auc(logits, target):
            p = softmax(logits)
            if p.shape[1] == 2:
                r = rare_class(counts)
                return float(100 * roc_auc_score(target == r, p[:, r]))
            return float(100 * roc_auc_score(target, p, multi_class="ovr", average="macro",
                                             labels=list(range(p.shape[1]))))
        return auc
    if name.startswith("recall@"):
        try:
            floor = float(name.split("@", 1)[1])
        except ValueError:
            raise TinltError(f"--metric {name!r}: expected recall@P with P a precision, e.g. recall@0.9") from None
        if len(counts) != 2:
            raise TinltError(f"--metric {name}: the rare class's recall needs two classes")
        r = rare_class(counts)

        def recall_at(logits, target):
            from ..metrics import precision_recall_curve

            s, y = softmax(logits)[:, r], target == r
            if not y.any():
                return 0.0
            precision, recall, _ = precision_recall_curve(s, y)
            ok = recall[precision >= floor - 1e-12]
            return float(100 * ok.max()) if ok.size else 0.0
        return recall_at
    raise TinltError(f"--metric {name!r}; expected per_class, balanced_accuracy, auc or recall@P")


@dataclass
class Choice:
    """What a recipe's pooled predictions chose: the epoch (index and number), tau, the score."""

    epoch_index: int
    epoch: int
    tau: float
    score: float


def choose(p: Pooled, counts: np.ndarray, metric: Callable, taus: Sequence[float] = TAUS,
           tune_epochs: bool = True) -> Choice:
    """The (epoch, tau) with the best pooled score; ties keep the later epoch and the smaller tau."""
    best = None
    epochs = range(len(p.epochs)) if tune_epochs else [len(p.epochs) - 1]
    for e in epochs:
        for tau in taus:
            s = metric(adjust(p.logits[e], counts, tau), p.target)
            if best is None or s > best.score + 1e-9 or (abs(s - best.score) <= 1e-9 and e > best.epoch_index):
                best = Choice(e, int(p.epochs[e]), float(tau), float(s))
    return best


class Diff(NamedTuple):
    """A recipe's score minus the leader's on the pooled predictions, with the paired bootstrap's
    95% interval and standard error (points)."""
    diff: float
    lo: float
    hi: float
    se: float


def bootstrap_diff(a: np.ndarray, b: np.ndarray, target: np.ndarray, metric: Callable, n: int = BOOTSTRAP,
                   seed: int = 0) -> Diff:
    """metric(a) - metric(b), with its 95% interval and standard error over images resampled with
    replacement, the same resample for both (paired)."""
    rng = np.random.default_rng(seed)
    diffs = np.empty(n)
    for i in range(n):
        idx = rng.integers(0, len(target), len(target))
        diffs[i] = metric(a[idx], target[idx]) - metric(b[idx], target[idx])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return Diff(float(metric(a, target) - metric(b, target)), float(lo), float(hi), float(np.std(diffs, ddof=1)))


def threshold_for(p: Pooled, choice: Choice, counts: np.ndarray, target_recall: float) -> dict:
    """The rare class's threshold on P(rare) reaching ``target_recall`` on the pooled predictions
    (the highest such threshold: the best precision), as ``tinlt calibrate`` chooses it."""
    from ..deploy.calibrate import choose_threshold

    if len(counts) != 2:
        raise TinltError("--target-recall needs two classes (a threshold on the rare class)")
    r = rare_class(counts)
    probs = softmax(adjust(p.logits[choice.epoch_index], counts, choice.tau))
    out = choose_threshold(probs[:, r], p.target == r, target_recall)
    out.pop("curve")
    return {**out, "positive_class": r, "num_samples": int(len(p.target)), "num_positive": int((p.target == r).sum())}


def check_noise_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`NOISE_RULES`, else a one-line error."""
    if rule not in NOISE_RULES:
        raise TinltError(f"--noise-rule must be one of {', '.join(NOISE_RULES)}, got {rule!r}")
    return rule


def within_noise(d: Diff, rule: str = "ci95") -> bool:
    """Whether a recipe ``d`` behind the leader counts as level with it under ``rule``."""
    if check_noise_rule(rule) == "one_se":
        return d.diff >= -d.se
    return d.hi >= 0.0


def pick_cheapest(leader: str, diffs: dict[str, Diff], cost: dict[str, float],
                  rule: str = "ci95") -> tuple[str, str]:
    """The cheapest recipe within the noise of the leader (:func:`within_noise`), and why;
    ``cost`` is the fold training's steps x trainable parameters."""
    within = [r for r, d in diffs.items() if within_noise(d, rule)] + [leader]
    chosen = min(within, key=lambda r: (cost.get(r, float("inf")), r != leader))
    if chosen == leader:
        return chosen, "the best pooled out-of-fold score"
    d = diffs[chosen]
    how = (f"{d.diff:+.1f} points, within one standard error ({d.se:.1f})" if rule == "one_se" else
           f"{d.lo:+.1f} .. {d.hi:+.1f} points, 95% paired bootstrap")
    return chosen, (f"within the noise of the leader {leader} ({how}) and cheaper ({cost[chosen]:.3g} vs "
                    f"{cost[leader]:.3g} step x parameter units of fold training)")
