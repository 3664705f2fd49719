"""Metrics on hand-made confusion matrices with hand-computed results; AUC against brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinlt.errors import TinltError
from tinlt.metrics import (
    compute_metrics,
    confusion_matrix,
    format_table,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    top_confusions,
)

NAMES = ["cat", "dog", "eel", "fox"]
# rows = true class. per-class acc: cat 8/10, dog 3/5, eel 1/4, fox has no test samples
CM = np.array(
    [
        [8, 2, 0, 0],
        [1, 3, 1, 0],
        [2, 0, 1, 1],
        [0, 0, 0, 0],
    ]
)
TRAIN = [500, 50, 5, 3]
GROUPS = {"many": np.array([0]), "medium": np.array([1]), "few": np.array([2, 3])}


def brute_force_auc(scores, is_pos):
    pos = [s for s, p in zip(scores, is_pos) if p]
    neg = [s for s, p in zip(scores, is_pos) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_confusion_matrix_by_hand():
    targets = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 0, 2, 2]
    cm = confusion_matrix(targets, preds, 3)
    assert cm.dtype == np.int64
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(TinltError, match=r"predictions must lie in \[0, 3\)"):
        confusion_matrix([0, 1], [0, 3], 3)
    with pytest.raises(TinltError, match="2 targets but 1 predictions"):
        confusion_matrix([0, 1], [0], 3)


def test_confusion_matrices_sum_like_one_pass():
    # distributed evaluation sums per-rank matrices: must equal one matrix over all samples
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
    summed = confusion_matrix(t[:15], p[:15], 5) + confusion_matrix(t[15:], p[15:], 5)
    assert (summed == confusion_matrix(t, p, 5)).all()


def test_compute_metrics_by_hand():
    m = compute_metrics(CM, GROUPS, classnames=NAMES, train_counts=TRAIN)
    assert m["overall"] == pytest.approx((80 + 60 + 25) / 3)  # fox has no test samples: left out
    assert m["instance_acc"] == pytest.approx(100 * 12 / 19)
    assert m["many"] == pytest.approx(80.0)
    assert m["medium"] == pytest.approx(60.0)
    assert m["few"] == pytest.approx(25.0)  # eel only; fox has no test samples
    assert m["num_samples"] == 19
    assert m["group_sizes"] == {"many": 1, "medium": 1, "few": 2}
    assert m["confusion"] == CM.tolist()
    assert m["per_class"][1] == {
        "class": 1, "name": "dog", "train_count": 50, "test_count": 5, "accuracy": pytest.approx(60.0),
        "group": "medium",
    }
    assert m["per_class"][3]["accuracy"] is None and m["per_class"][3]["test_count"] == 0
    assert "binary" not in m
    json.dumps(m)  # JSON-serialisable as is


def test_empty_group_and_group_without_test_samples_are_none():
    groups = {"many": np.array([0, 1, 2]), "medium": np.array([], dtype=np.int64), "few": np.array([3])}
    m = compute_metrics(CM, groups, classnames=NAMES, train_counts=TRAIN)
    assert m["medium"] is None  # empty group
    assert m["few"] is None  # fox has no test samples
    assert m["many"] == pytest.approx((80 + 60 + 25) / 3)
    assert m["group_sizes"] == {"many": 3, "medium": 0, "few": 1}
    m = compute_metrics(CM, {"many": [0, 1, 2, 3]}, classnames=NAMES, train_counts=TRAIN)
    assert m["medium"] is None and m["few"] is None


def test_no_samples_at_all():
    m = compute_metrics(np.zeros((2, 2), int), {"many": [0], "few": [1]}, classnames=["a", "b"], train_counts=[9, 1])
    assert m["overall"] is None and m["instance_acc"] is None and m["num_samples"] == 0
    assert m["binary"]["precision"] is None and m["binary"]["recall"] is None and m["binary"]["f1"] is None
    json.dumps(m)


def test_compute_metrics_bad_shapes():
    with pytest.raises(TinltError, match="confusion matrix is"):
        compute_metrics(CM[:3, :3], GROUPS, classnames=NAMES, train_counts=TRAIN)
    with pytest.raises(TinltError, match="train counts"):
        compute_metrics(CM, GROUPS, classnames=NAMES, train_counts=TRAIN[:3])
    with pytest.raises(TinltError, match="group 'few'"):
        compute_metrics(CM, {"few": [7]}, classnames=NAMES, train_counts=TRAIN)


BIN_TARGETS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1])
# probability of class 1 (the rare class); ties across classes at 0.6 and 0.3
P1 = np.array([0.1, 0.3, 0.6, 0.2, 0.4, 0.9, 0.6, 0.3, 0.6, 0.8])


def test_binary_metrics_by_hand():
    preds = (P1 >= 0.5).astype(int)
    cm = confusion_matrix(BIN_TARGETS, preds, 2)
    # rare (positive) class is 1: TP = 3 (0.9, 0.6, 0.8), FN = 1 (0.3), FP = 2 (0.6, 0.6), TN = 4
    scores = np.stack([1 - P1, P1], axis=1)
    m = compute_metrics(cm, {"many": [0], "few": [1]}, classnames=["ok", "defect"], train_counts=[90, 10],
                        scores=scores, targets=BIN_TARGETS)
    b = m["binary"]
    assert (b["positive_class"], b["positive_name"]) == (1, "defect")
    assert (b["tp"], b["fp"], b["fn"], b["tn"]) == (3, 2, 1, 4)
    assert b["precision"] == pytest.approx(3 / 5)
    assert b["recall"] == pytest.approx(3 / 4)
    assert b["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert b["auc"] == pytest.approx(brute_force_auc(P1, BIN_TARGETS == 1))
    json.dumps(m)

    # logits give the same AUC as their softmax probabilities, even with a per-sample shift
    # (softmax ignores it, so the positive column alone would rank wrongly)
    # (logit differences are multiples of 1/8 and shifts integers, so float ties stay exact)
    z = np.round(np.log(P1 / (1 - P1)) * 8) / 8
    shift = np.array([5.0, -3.0, 0.0, 8.0, -1.0, -6.0, 2.0, 4.0, -2.0, 1.0])
    logits = np.stack([np.zeros(10), z], axis=1) + shift[:, None]
    m2 = compute_metrics(cm, {}, classnames=["ok", "defect"], train_counts=[90, 10], scores=logits,
                         targets=BIN_TARGETS)
    assert m2["binary"]["auc"] == pytest.approx(b["auc"])


def test_binary_positive_is_the_rare_class_even_at_index_0():
    cm = np.array([[3, 1], [2, 6]])  # class 0 is rare here
    scores = np.stack([P1, 1 - P1], axis=1)
    m = compute_metrics(cm, {}, classnames=["defect", "ok"], train_counts=[4, 40], scores=scores,
                        targets=1 - BIN_TARGETS)
    b = m["binary"]
    assert b["positive_class"] == 0
    assert (b["tp"], b["fn"], b["fp"], b["tn"]) == (3, 1, 2, 6)
    assert b["precision"] == pytest.approx(3 / 5) and b["recall"] == pytest.approx(3 / 4)
    assert b["auc"] == pytest.approx(brute_force_auc(P1, BIN_TARGETS == 1))


def test_binary_auc_none_without_scores_or_with_one_class():
    cm = np.array([[5, 0], [0, 0]])
    m = compute_metrics(cm, {}, classnames=["a", "b"], train_counts=[9, 1])
    assert m["binary"]["auc"] is None
    m = compute_metrics(cm, {}, classnames=["a", "b"], train_counts=[9, 1],
                        scores=np.full((5, 2), 0.5), targets=np.zeros(5, int))
    assert m["binary"]["auc"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, 60) / 4.0  # few distinct values: many ties
    is_pos = rng.random(60) < 0.3
    assert roc_auc(scores, is_pos) == pytest.approx(brute_force_auc(scores, is_pos))
    fpr, tpr, _ = roc_curve(scores, is_pos)
    trapezoid = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
    assert trapezoid == pytest.approx(brute_force_auc(scores, is_pos))


def test_curves_by_hand():
    scores = [0.9, 0.8, 0.8, 0.3, 0.1]
    is_pos = [1, 0, 1, 0, 1]
    precision, recall, thr = precision_recall_curve(scores, is_pos)
    assert thr.tolist() == [0.9, 0.8, 0.3, 0.1]
    # predicted positive at >= t: {0.9}: 1/1; {0.9,0.8,0.8}: 2/3; +0.3: 2/4; all: 3/5
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.5, 0.6])
    assert recall.tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    fpr, tpr, thr = roc_curve(scores, is_pos)
    assert thr[0] == np.inf and thr[1:].tolist() == [0.9, 0.8, 0.3, 0.1]
    assert fpr.tolist() == pytest.approx([0, 0, 0.5, 1.0, 1.0])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1.0])
    with pytest.raises(TinltError, match="both positive and negative"):
        roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(TinltError, match="at least one positive"):
        precision_recall_curve([0.1, 0.2], [0, 0])


def test_top_confusions():
    got = top_confusions(CM, NAMES, k=3)
    # off-diagonal cells: cat->dog 2, eel->cat 2, dog->cat 1, dog->eel 1, eel->fox 1; ties by true index
    assert got == [("cat", "dog", 2), ("eel", "cat", 2), ("dog", "cat", 1)]
    assert len(top_confusions(CM, NAMES, k=100)) == 5  # zero cells are never listed


def test_format_table():
    m = compute_metrics(CM, {"many": [0], "medium": [], "few": [2, 3]}, classnames=NAMES, train_counts=TRAIN)
    lines = format_table(m).splitlines()
    assert len(lines) == 2
    assert lines[0].split() == ["overall", "many", "medium", "few", "instance"]
    assert lines[1].split() == [f"{(80 + 60 + 25) / 3:.2f}", "80.00", "-", "25.00", f"{100 * 12 / 19:.2f}"]
    assert len(lines[0]) == len(lines[1])  # fixed width: columns line up
