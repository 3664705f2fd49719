"""The one path from a checkpoint (or run folder) and a split to scores and metrics.

Owns :func:`load_model` (a checkpoint -> model with the run's evaluation-time adjustments,
config overrides applied), :func:`resolve_split` (which split of a config to score),
:func:`evaluate` (a model or a scoring backend over a split -> metrics with per-image
predictions, and metrics at a decision threshold), and the two commands built from them:
``tinlt eval`` (:func:`evaluate_checkpoint`) and ``tinlt zeroshot`` (:func:`zeroshot`).
The trainer's per-epoch evaluation, calibration, export's accuracy check, prediction and
the sweep's evaluation-only cells all go through these.

Evaluation needs no training images: class counts and shot groups travel inside the
checkpoint, so ``tinlt eval`` on a new test set still reports many/medium/few.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from .. import fileio
from ..config import from_dict
from ..data.bundle import DataBundle
from ..errors import TinltError
from ..names import csv_writer
from ..metrics import ThresholdRule, add_precision_at_prevalence, confusion_matrix, scores_line, threshold_rule
from ..models.adjust import apply_eval_adjustments
from . import checkpoint as ckpt_io
from .device import resolve_device
from .distributed import DistInfo
from .evaluate import Predictions, metrics_from_predictions, predict_loader
from .loaders import eval_loader, make_transforms
from .progress import echo
from .run_folder import ZEROSHOT_DIR, RunFolder, resolve_checkpoint

OVERRIDE_PREFIXES = ("data.", "train.")  # what may change when scoring a trained model


def apply_overrides(cfg, overrides: Sequence[str], *, where: str = "overrides"):
    """``cfg`` with ``data.*`` / ``train.*`` ``key=value`` overrides (the model is fixed by the checkpoint)."""
    if not overrides:
        return cfg
    bad = [o for o in overrides if not o.startswith(OVERRIDE_PREFIXES) or "=" not in o]
    if bad:
        raise TinltError(f"{where}: only data.* / train.* key=value overrides apply to a trained model, got '{bad[0]}'")
    return from_dict(OmegaConf.to_container(OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))))


def load_model(path: str | Path, device: str | torch.device = "cpu", overrides: Sequence[str] = ()):
    """(model, config, checkpoint dict) from a tinlt checkpoint file; no pretrained files needed.

    The model is in eval mode with the run's evaluation-time adjustments set
    (``train.tau_norm``, ``train.posthoc_tau``; models/adjust.py), after ``overrides``.
    """
    from ..models.factory import create_model
    from ..models.heads import head_class

    ckpt = ckpt_io.load_checkpoint(path)
    cfg = apply_overrides(from_dict(ckpt["config"]), overrides)
    # the state dict below overwrites every weight, unless it holds only the tuned ones
    build = {} if ckpt.get("trainable_only") else {"pretrained": "", "pretrained_image": False, "pretrained_text": False}
    if head_class(cfg.model.head).has_weights:  # its weights come from the checkpoint
        build["classifier_init"] = "random"
    model_cfg = OmegaConf.merge(cfg.model, build)

    def member(entries: dict, where: str):
        m = create_model(model_cfg, ckpt["classnames"], image_size=cfg.data.image_size)
        ckpt_io.load_model_state(m, entries, where=where)
        return m

    if ckpt.get("members"):  # tinlt fit --ensemble: the fold models, logits averaged
        from ..models.ensemble import LogitEnsemble

        model = LogitEnsemble([member(e, f"{path} (member {i})") for i, e in enumerate(ckpt["members"])])
    else:
        model = member(ckpt, str(path))
    apply_eval_adjustments(model, cfg.train, np.asarray(ckpt["train_counts"]))
    model.to(device).eval()
    return model, cfg, ckpt


def rule_of(ckpt: dict) -> Optional[ThresholdRule]:
    """The calibrated decision rule stored in a checkpoint, or None (argmax)."""
    return threshold_rule(ckpt.get("threshold"), ckpt.get("threshold_info"), ckpt["classnames"])


def resolve_split(cfg, split: Optional[str] = None, *, classnames: Optional[Sequence[str]] = None):
    """(samples, name) of ``data.<split>``, or with ``split=None`` the test split, else val.

    TinltError when the config has no such split, or (``classnames`` given) when its classes
    differ from the model's.
    """
    from ..data.build import build_split

    names = (split,) if split else ("test", "val")
    for name in names:
        node = getattr(cfg.data, name)
        kind = str(node.kind or "")
        if not kind:
            continue
        if kind in ("holdout", "kfold"):  # rebuilt from data.train with the run's fraction / fold and seed
            from ..data.holdout import hold_out, k_fold

            seed = node.seed if node.seed >= 0 else cfg.train.seed
            train = build_split(cfg.data.train, where="data.train")
            samples = (hold_out(train, float(node.fraction), int(seed)) if kind == "holdout"
                       else k_fold(train, int(node.folds), int(node.fold), int(seed)))[1]
        else:
            samples = build_split(node, where=f"data.{name}")
        if classnames is not None and list(samples.classnames) != list(classnames):
            raise TinltError(
                f"data.{name}: classes {list(samples.classnames)[:5]} differ from the model's {list(classnames)[:5]}"
            )
        return samples, name
    keys = " / ".join(f"data.{n}" for n in names)
    raise TinltError(f"no {keys} split in the config; give one (data.{names[0]}.kind=... data.{names[0]}.path=...)")


def predict_split(model: Any, samples, cfg, num_classes: int, *, device: torch.device = torch.device("cpu"),
                  dist_info: DistInfo = DistInfo(), desc: str = "eval", features=None, transform=None,
                  loader=None, quiet: bool = False, keep_scores_up_to: int = 16) -> Predictions:
    """``Predictions`` (confusion, per-image predictions and, for few classes, probabilities) of
    ``model`` (a TIN, or a backend with ``logits(images)``) on ``samples``. ``transform``
    defaults to the model's eval transform; a ready ``loader`` replaces ``samples``."""
    if loader is None:
        transform = transform if transform is not None else make_transforms(model, cfg)[1]
        loader = eval_loader(samples, transform, cfg, dist_info, device, features=features)
    return predict_loader(model, loader, num_classes=num_classes, device=device, amp=cfg.train.amp, desc=desc,
                          quiet=quiet, keep_scores_up_to=keep_scores_up_to)


CSV_CLASS_COLUMNS = 100  # predictions.csv: a probability column per class up to this many classes, else top 5


def write_predictions_csv(path: Path, samples, pred: Predictions, classnames: Sequence[str],
                          decided: Optional[np.ndarray] = None) -> Path:
    """``predictions.csv``: one row per image (its file, or ``<source>#<index>`` for in-memory
    data), true and predicted class, ``correct`` (1/0), and a probability column per class
    (``p_<class>``; with more than CSV_CLASS_COLUMNS classes the top 5 instead). With a
    decision threshold, ``decided`` is the class at it and ``correct`` refers to it."""
    import io

    from .. import fileio

    names = list(classnames)
    per_class = pred.scores is not None and len(names) <= CSV_CLASS_COLUMNS
    head = ["index", "path", "true", "predicted"] + (["decided"] if decided is not None else []) + ["correct"]
    head += [f"p_{n}" for n in names] if per_class else ["confidence"]
    buf = io.StringIO(newline="")
    w = csv_writer(buf)
    w.writerow(head)
    final = decided if decided is not None else pred.preds
    for k, i in enumerate(pred.indices):
        item = f"{samples.source}#{int(i)}" if samples.in_memory else str(samples.items[int(i)])
        row = [int(i), item, names[int(pred.targets[k])], names[int(pred.preds[k])]]
        row += [names[int(decided[k])]] if decided is not None else []
        row += [int(final[k] == pred.targets[k])]
        row += [f"{v:.6f}" for v in pred.scores[k]] if per_class else [f"{float(pred.confidence[k]):.6f}"]
        w.writerow(row)
    return fileio.write_text(path, buf.getvalue())


def evaluate(model: Any, samples, cfg, data: DataBundle, *, rule: Optional[ThresholdRule] = None,
             per_image: bool = True, csv: Optional[Path] = None, **kwargs) -> dict:
    """Metrics of ``model`` on ``samples`` (``predict_split``'s arguments in ``kwargs``), with
    per-image predictions (``per_image``; ``csv``: also written there, see
    :func:`write_predictions_csv`); with a two-class ``rule`` also ``at_threshold``: the same
    metrics for the thresholded decisions."""
    if csv is not None:
        kwargs.setdefault("keep_scores_up_to", CSV_CLASS_COLUMNS)
    pred = predict_split(model, samples, cfg, len(data.classnames), **kwargs)
    m = metrics_from_predictions(pred, groups=data.groups, classnames=data.classnames, train_counts=data.train_counts)
    if not per_image:
        return m
    m["predictions"] = {
        "index": pred.indices.tolist(),
        "target": pred.targets.tolist(),
        "pred": pred.preds.tolist(),
        "confidence": [round(float(c), 5) for c in pred.confidence],
    }
    if pred.scores is not None and len(data.classnames) <= 16:  # metrics.json keeps few-class scores (PR/ROC)
        m["predictions"]["scores"] = np.round(pred.scores, 6).tolist()
    decided = None
    if rule is not None and pred.scores is not None:
        decided = rule.decide(pred.scores)
        confusion = confusion_matrix(pred.targets, decided, len(data.classnames))
        at = metrics_from_predictions(dataclasses.replace(pred, confusion=confusion, preds=decided),
                                      groups=data.groups, classnames=data.classnames, train_counts=data.train_counts)
        m["at_threshold"] = {"threshold": rule.value, "rule": rule.describe(), **at}
    if csv is not None and samples is not None:
        write_predictions_csv(csv, samples, pred, data.classnames, decided)
    return m


def banner(cfg, data, device, world_size: int, global_batch: int, lr: float, steps: int, run) -> str:
    """The line a training run starts with: what trains on what, how, and where it goes."""
    return (f"tinlt: {cfg.name} | {len(data.classnames)} classes, {len(data.train)} train images | model "
            f"{cfg.model.name} | loss {cfg.loss.name} | device {device} x{world_size} | batch "
            f"{cfg.optim.batch_size}/device, global {global_batch} | lr {lr:.3g} ({cfg.optim.lr_scaling} "
            f"scaling) | {steps} steps | out {run.path}")


def epoch_line(record: dict, split: str, epochs: int) -> str:
    """A training epoch's console line: loss, lr, time and the evaluation split's scores."""
    line = (f"epoch {record['epoch']}/{epochs} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"{record['time_s']:.0f}s")
    return line + (f" | {split}: " + scores_line(record[split]) if split in record else "")


def operating_line(binary: dict, label: str, prevalence: Optional[float] = None) -> str:
    """One console line: the rare class's precision and recall (with its 95% interval) at a
    decision rule, and the precision to expect at the training (or a given) prevalence."""
    from ..metrics import precision_at_prevalence

    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    ci = binary.get("recall_ci95")
    line = (f"{label}: rare class '{binary['positive_name']}' precision {f(binary['precision'])}, recall "
            f"{f(binary['recall'])}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {binary['positives']} positives)" if ci else ""))
    line += (f"; expected precision at the training prevalence {100 * binary['train_prevalence']:.2g}%: "
             f"{f(binary['precision_at_train_prevalence'])}")
    if prevalence is not None:
        line += f", at {100 * prevalence:.3g}%: {f(precision_at_prevalence(binary['recall'], binary['fpr'], prevalence))}"
    return line


GROUP_KEYS = ("data.many_threshold", "data.few_threshold", "data.groups")
TRAINING_ONLY = ("data.augment", "data.sampler")  # read by training alone: an eval override of them changes nothing


def eval_groups(ckpt: dict, cfg, overrides: Sequence[str]) -> dict:
    """The checkpoint's shot groups, or new ones from its training counts when ``overrides`` set
    the group thresholds (they were ignored before: the checkpoint's groups always won). An
    override that scoring does not read is said on stderr, not silently dropped."""
    import sys

    from ..data.groups import shot_groups

    keys = {o.split("=", 1)[0] for o in overrides}
    for k in sorted(keys & set(TRAINING_ONLY)):
        print(f"tinlt: note: {k} applies to training only; scoring a trained model does not read it", file=sys.stderr)
    if not keys & set(GROUP_KEYS):
        return ckpt["groups"]
    groups = shot_groups(ckpt["train_counts"], many_threshold=cfg.data.many_threshold,
                         few_threshold=cfg.data.few_threshold, mode=cfg.data.groups)
    echo(f"shot groups from the training counts at many > {cfg.data.many_threshold}, few < {cfg.data.few_threshold} "
         f"({cfg.data.groups}): many {len(groups['many'])}, medium {len(groups['medium'])}, few {len(groups['few'])}")
    return groups


def evaluate_checkpoint(
    path: str | Path, overrides: Sequence[str] = (), out_dir: Optional[str | Path] = None, quiet: bool = False,
    prevalence: Optional[float] = None,
) -> dict:
    """``tinlt eval``: a checkpoint (or run folder) on its test split, or one given by
    ``data.test.*`` overrides; writes ``metrics.json`` and ``predictions.csv`` into ``out_dir``
    (default ``<run>/eval``). Two-class runs also get their operating point: the rare class's
    precision and recall at argmax and at a calibrated threshold, and the precision to expect
    at the training prevalence or ``prevalence``."""

    if prevalence is not None and not 0 < prevalence < 1:
        raise TinltError(f"--prevalence must be a share in (0, 1), got {prevalence}")
    path = resolve_checkpoint(path, log=lambda msg: echo(msg, quiet=quiet))
    model, cfg, ckpt = load_model(path, overrides=overrides)
    device = resolve_device(cfg.train.device)
    model.to(device)
    test, _ = resolve_split(cfg, classnames=ckpt["classnames"])
    data = DataBundle.from_counts(test, ckpt["classnames"], ckpt["train_counts"], eval_groups(ckpt, cfg, overrides))
    out = owned_output(out_dir, RunFolder.of_checkpoint(path).eval_dir, what="eval")
    out.path.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, test, cfg, data, device=device, desc="eval", rule=rule_of(ckpt), quiet=quiet,
                       csv=out.predictions_path)
    metrics["checkpoint"] = {"path": str(Path(path).resolve()), "sha256": fileio.sha256(path)}
    add_precision_at_prevalence(metrics, prevalence)
    out.write_metrics(metrics)
    echo(f"eval: {scores_line(metrics)} | metrics: {out.metrics_path}, {out.predictions_path}", quiet=quiet)
    if "at_threshold" in metrics:
        at = metrics["at_threshold"]
        echo(f"eval at the calibrated threshold ({at['rule']}): {scores_line(at)}", quiet=quiet)
    if "binary" in metrics:
        echo(operating_line(metrics["binary"], "operating point, argmax", prevalence), quiet=quiet)
        if "at_threshold" in metrics:
            echo(operating_line(metrics["at_threshold"]["binary"],
                                f"operating point, threshold {metrics['at_threshold']['threshold']:.4g}", prevalence),
                 quiet=quiet)
    return metrics


def owned_output(out_dir, default: Path, *, what: str) -> RunFolder:
    """Where a scoring command writes: ``out_dir`` or its default, never a training run's folder."""
    out = RunFolder(out_dir if out_dir else default)
    if out.is_training_run():
        raise TinltError(f"{what}: {out.path} holds a training run ({', '.join(out.holds_results())}); "
                         f"{what} writes beside it, not over it: give --out another folder")
    return out


def zeroshot(cfg, quiet: bool = False, out_dir: Optional[str | Path] = None) -> dict:
    """Frozen towers, no training: classify the test split by prompts alone; results in
    ``out_dir`` (default ``<train.output_dir>/zeroshot``), never over a trained run's files."""
    from ..data.bundle import build_data
    from ..models.factory import create_model

    out = owned_output(out_dir, Path(cfg.train.output_dir) / ZEROSHOT_DIR, what="zeroshot")
    cfg = OmegaConf.merge(cfg, {"model": {"freeze_image": True, "freeze_text": True, "head": "text"},
                                "train": {"output_dir": str(out.path)}})
    device = resolve_device(cfg.train.device)
    data = build_data(cfg)
    model = create_model(cfg.model, data.classnames, image_size=cfg.data.image_size).to(device).eval()
    out.path.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(model, data.final, cfg, data, device=device, desc="zero-shot", quiet=quiet,
                       csv=out.predictions_path)
    out.write_config(cfg)
    out.write_metrics(metrics)
    echo(f"zero-shot: {scores_line(metrics)} | metrics: {out.metrics_path}", quiet=quiet)
    return metrics
