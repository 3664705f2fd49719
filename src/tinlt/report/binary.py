"""A two-class run's operating points: the calibrated evaluation now in force, the
threshold, and the precision-recall / ROC figure (the PR curve drawn as ``tinlt calibrate``
draws it, :func:`tinlt.plots.draw_pr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import fileio
from ..engine.run_folder import EVAL_DIR, METRICS
from ..errors import TinltError
from ..plots import draw_pr, figure as _figure, short as _short, style as _style
from .view import RunView


def operating_point(rf: RunView) -> Optional[dict]:
    """The evaluation at a calibrated threshold that belongs to this run now: an eval folder's
    metrics with ``at_threshold``, whose checkpoint still has the bytes it was evaluated with
    (so a re-calibrated or retrained run never shows a stale point). None otherwise."""
    folders = [rf.path] if "at_threshold" in rf.metrics else []
    folders.append(rf.path / EVAL_DIR)
    for folder in folders:
        m = rf.metrics if folder == rf.path else _read_json_or_none(folder / METRICS)
        if not isinstance(m, dict) or "at_threshold" not in m:
            continue
        ck = m.get("checkpoint") or {}
        try:
            fresh = Path(ck["path"]).is_file() and fileio.sha256(ck["path"]) == ck["sha256"]
        except (KeyError, OSError, TypeError):
            fresh = False
        if fresh:
            return m
    return None


def _read_json_or_none(path: Path) -> Any:
    return fileio.read_json(path)


def _threshold(rf: RunView) -> Optional[float]:
    """The decision threshold to mark on the PR figure: the current calibrated operating point's."""
    op = operating_point(rf)
    return float(op["at_threshold"]["threshold"]) if op else None


def fig_pr_roc(rf: RunView, notes: list):
    from ..metrics import precision_recall_curve, roc_curve

    b = rf.metrics.get("binary")
    if len(rf.per_class) != 2 or not isinstance(b, dict):
        return None
    pred = rf.metrics.get("predictions") or {}
    scores, targets = pred.get("scores"), pred.get("target")
    if scores is None or targets is None:
        notes.append("precision-recall / ROC: metrics.json has no prediction scores")
        return None
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or scores.shape != (len(targets), 2):
        notes.append("precision-recall / ROC: prediction scores are malformed")
        return None
    pos = int(b.get("positive_class", 1))
    s, y = scores[:, pos], targets == pos
    try:
        prec, rec, _ = precision_recall_curve(s, y)
        fpr, tpr, _ = roc_curve(s, y)
    except TinltError as e:
        notes.append(f"precision-recall / ROC: {e}")
        return None
    auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    name = _short(b.get("positive_name", rf.classnames[pos]), 24)
    points = []  # (label, precision, recall, fpr, style)
    if b.get("precision") is not None and b.get("recall") is not None:
        neg_n = int(b["fp"]) + int(b["tn"])
        points.append(("argmax prediction", b["precision"], b["recall"], b["fp"] / neg_n if neg_n else 0.0,
                       dict(marker="o", color="black")))
    t = _threshold(rf)
    if t is not None:
        hit = s >= t
        tp, fp = int((hit & y).sum()), int((hit & ~y).sum())
        p_t = tp / (tp + fp) if tp + fp else 1.0
        points.append((f"threshold {t:.3g}", p_t, tp / max(int(y.sum()), 1), fp / max(int((~y).sum()), 1),
                       dict(marker="*", color="#d62728", markersize=14)))
    with _style():
        fig = _figure(10.0, 4.6)
        a1, a2 = fig.subplots(1, 2)
        draw_pr(a1, prec, rec, name, prevalence=float(y.mean()), points=[(lb, p, r, st) for lb, p, r, _, st in points])
        a1.set_title(f"Precision-recall: rare class '{name}'")
        a2.plot(fpr, tpr, color="#1f77b4", linewidth=2, label=f"ROC (AUC {auc:.3f})")
        a2.plot([0, 1], [0, 1], color="#888", linestyle=":", label="chance")
        for label, p, r, f, st in points:
            a2.plot([f], [r], label=label, **dict(st, linestyle="none", markersize=st.get("markersize", 8)))
        a2.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC curve")
        a2.set_xlim(-0.02, 1.02)
        a2.set_ylim(-0.02, 1.05)
        for a in (a1, a2):
            a.set_aspect("equal")
            a.legend(loc="lower left" if a is a1 else "lower right")
    return fig
