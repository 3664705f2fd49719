"""Decision threshold of a two-class model for a target recall of the rare class.

Owns ``tinlt calibrate``: scores a split with the checkpoint, picks the threshold on the
rare class's probability, and writes, into the run's ``eval/`` folder (or ``--out``), never
over the training run's files: ``calibrated.pt`` (the checkpoint's weights with the
threshold, keys ``threshold`` and ``threshold_info``: what ``tinlt predict``, ``export``,
``eval`` and ``serve`` deploy), ``calibration.json`` and the PR-curve plot
``calibration_pr.png``.

The rule: among thresholds whose recall on the split is >= the target, take the highest
(fewest false positives, so the best precision at that recall). Every threshold between
that score and the next lower score gives the same predictions on the split; we store
the midpoint of that interval rather than its upper end, so that an image scored exactly
on the boundary does not flip class under tiny numeric differences (ONNX, int8, another
BLAS). The rare ("positive") class is the one with fewer training images, class 1 on a
tie, as in :func:`tinlt.metrics.compute_metrics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import TinltError
from ..fileio import sha256
from ..metrics import precision_recall_curve

MAX_CURVE_POINTS = 2000  # stored in calibration.json; thinned beyond this


def positive_class(train_counts: Sequence[int]) -> int:
    """The rare class: fewest training images; on a tie the higher index."""
    counts = np.asarray(train_counts, dtype=np.int64).ravel()
    if counts.size != 2:
        raise TinltError(f"a decision threshold needs 2 classes, got {counts.size}")
    return int(len(counts) - 1 - np.argmin(counts[::-1]))


def choose_threshold(scores_pos: Any, is_pos: Any, target_recall: float) -> dict:
    """Threshold on ``scores_pos`` (positive iff score >= threshold) reaching ``target_recall``.

    Returns threshold, score_at_point (the highest score that reaches the target), next_score
    (the next lower distinct score, None if none), and the recall / precision / tp / fp there.
    """
    if not 0.0 < float(target_recall) <= 1.0:
        raise TinltError(f"--target-recall must lie in (0, 1], got {target_recall}")
    s = np.asarray(scores_pos, dtype=np.float64).ravel()
    y = np.asarray(is_pos, dtype=bool).ravel()
    if s.size == 0:
        raise TinltError("calibration split is empty")
    if not np.isfinite(s).all():
        raise TinltError("calibration scores contain NaN or infinity")
    if not y.any():
        raise TinltError("calibration split has no sample of the rare class: recall is undefined")
    precision, recall, thresholds = precision_recall_curve(s, y)
    # recall rises as the threshold falls; the first index at or above target is the highest threshold
    k = int(np.flatnonzero(recall >= float(target_recall) - 1e-12)[0])
    score = float(thresholds[k])
    nxt = float(thresholds[k + 1]) if k + 1 < len(thresholds) else None
    value = score
    if nxt is not None:
        mid = (score + nxt) / 2.0
        if nxt < mid <= score:  # false only when the two scores are adjacent floats
            value = mid
    chosen = s >= value
    return {
        "threshold": value,
        "score_at_point": score,
        "next_score": nxt,
        "recall": float(recall[k]),
        "precision": float(precision[k]),
        "tp": int((chosen & y).sum()),
        "fp": int((chosen & ~y).sum()),
        "curve": (precision, recall, thresholds),
    }


def _thin(n: int, max_points: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(np.int64)) if n else np.zeros(0, int)


def plot_pr(curve, choice: dict, argmax_point: tuple[float, float], target: float, positive_name: str, out: Path) -> Path:
    from ..plots import draw_pr, figure, save_figure, style

    precision, recall, _ = curve
    points = [(f"threshold {choice['threshold']:.4g}: R {choice['recall']:.3f}, P {choice['precision']:.3f}",
               choice["precision"], choice["recall"], dict(marker="*", color="#d62728", markersize=14)),
              (f"argmax: R {argmax_point[0]:.3f}, P {argmax_point[1]:.3f}", argmax_point[1], argmax_point[0],
               dict(marker="o", color="black"))]
    with style():
        fig = figure(5.4, 4.6)
        ax = fig.add_subplot()
        draw_pr(ax, np.asarray(precision), np.asarray(recall), positive_name, points=points)
        ax.axvline(target, color="#888", linestyle="--", linewidth=1, label=f"target recall {target:g}")
        ax.legend(loc="lower left", fontsize=7)
        ax.set_title("Decision threshold calibration")
    return save_figure(fig, out)


def _argmax_point(probs_pos: np.ndarray, is_pos: np.ndarray, probs_neg: np.ndarray) -> tuple[float, float]:
    pred = probs_pos > probs_neg  # argmax; a tie goes to class 0 like torch/numpy argmax
    tp = int((pred & is_pos).sum())
    recall = tp / max(int(is_pos.sum()), 1)
    precision = tp / int(pred.sum()) if pred.any() else 0.0
    return recall, precision


def calibrate_checkpoint(
    checkpoint: str | Path,
    target_recall: float = 0.95,
    split: str = "val",
    overrides: Sequence[str] = (),
    quiet: bool = False,
    out_dir: str | Path | None = None,
) -> dict:
    """Score ``split`` with the checkpoint (or run folder), choose the threshold, write the
    calibrated checkpoint; returns calibration.json's dict. The caller refreshes the run's
    report (the CLI does)."""
    from ..engine.checkpoint import save_atomic
    from ..engine.device import resolve_device
    from ..engine.inference import load_model, owned_output, predict_split, resolve_split
    from ..engine.progress import echo
    from ..engine.run_folder import CALIBRATED, CALIBRATION, CALIBRATION_PLOT, DEPLOY_KEYS, RunFolder, resolve_checkpoint

    if split not in ("val", "test"):
        raise TinltError(f"--split {split!r}; expected 'val' or 'test'")
    if not 0.0 < float(target_recall) <= 1.0:
        raise TinltError(f"--target-recall must lie in (0, 1], got {target_recall}")
    path = resolve_checkpoint(checkpoint, log=lambda msg: echo(msg, quiet=quiet))
    run = owned_output(out_dir, RunFolder.of_checkpoint(path).eval_dir, what="calibrate")
    model, cfg, ckpt = load_model(path, overrides=overrides)
    classnames = list(ckpt["classnames"])
    if len(classnames) != 2:
        raise TinltError(f"{path}: calibrate needs a two-class model; this one has {len(classnames)} classes")
    if not str(getattr(cfg.data, split).kind or ""):
        raise TinltError(
            f"{path}: the run's config has no data.{split} split; give one (data.{split}.kind=... "
            f"data.{split}.path=...) or use --split {'test' if split == 'val' else 'val'}"
        )
    samples, _ = resolve_split(cfg, split, classnames=classnames)
    device = resolve_device(cfg.train.device)
    model.to(device)
    pred = predict_split(model, samples, cfg, 2, device=device, desc="calibrate", quiet=quiet)
    pos = positive_class(ckpt["train_counts"])
    is_pos = pred.targets == pos
    choice = choose_threshold(pred.scores[:, pos], is_pos, target_recall)
    argmax_r, argmax_p = _argmax_point(pred.scores[:, pos], is_pos, pred.scores[:, 1 - pos])

    info = {
        "target_recall": float(target_recall),
        "recall": choice["recall"],
        "precision": choice["precision"],
        "split": split,
        "positive_class": pos,
        "positive_name": classnames[pos],
        "num_samples": int(len(is_pos)),
        "num_positive": int(is_pos.sum()),
        "score_at_point": choice["score_at_point"],
        "next_score": choice["next_score"],
        "rule": f"predict '{classnames[pos]}' when P({classnames[pos]}) >= threshold",
    }
    deployable = {k: ckpt[k] for k in DEPLOY_KEYS if k in ckpt}
    deployable.update(threshold=float(choice["threshold"]), threshold_info=info,
                      source_checkpoint={"path": str(path.resolve()), "sha256": sha256(path)})
    run.path.mkdir(parents=True, exist_ok=True)
    calibrated = save_atomic(deployable, run / CALIBRATED)
    png = plot_pr(choice["curve"], choice, (argmax_r, argmax_p), float(target_recall), classnames[pos],
                  run / CALIBRATION_PLOT)
    precision, recall, thresholds = choice["curve"]
    keep = _thin(len(thresholds), MAX_CURVE_POINTS)
    report = {
        "checkpoint": str(path.resolve()),
        "calibrated_checkpoint": str(calibrated.resolve()),
        "threshold": float(choice["threshold"]),
        **info,
        "argmax": {"recall": argmax_r, "precision": argmax_p},
        "plot": png.name,
        "curve": {
            "precision": np.round(precision[keep], 6).tolist(),
            "recall": np.round(recall[keep], 6).tolist(),
            "thresholds": [float(t) for t in thresholds[keep]],
        },
    }
    run.write_json(CALIBRATION, report)
    echo(
        f"calibrate: threshold {choice['threshold']:.6g} on P({classnames[pos]}) -> recall {choice['recall']:.4f}, "
        f"precision {choice['precision']:.4f} on {len(is_pos)} {split} images (target recall {target_recall:g}; "
        f"argmax: recall {argmax_r:.4f}, precision {argmax_p:.4f}) | deploy {calibrated} "
        f"(predict/export/eval --checkpoint it); {run / CALIBRATION}",
        quiet=quiet,
    )
    return report

