"""Using a trained (or zero-shot) model: rebuild it from a checkpoint, evaluate, predict.

Evaluation needs no training images: class counts and shot groups travel inside the
checkpoint, so ``tinlt eval`` on a new test set still reports many/medium/few.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from ..config import from_dict, to_yaml
from ..errors import TinltError
from . import checkpoint as ckpt_io
from .distributed import DistInfo
from .progress import echo
from .trainer import DataBundle, _summary, evaluate_samples, make_transforms, resolve_device, write_metrics


def load_model(path: str | Path, device: str | torch.device = "cpu", adjust: bool = True):
    """(model, config, checkpoint dict) from a tinlt checkpoint; no pretrained files needed.

    ``adjust``: build the run's evaluation-time adjustments into the model, as every
    deployment path (predict, export, calibrate) must score like ``tinlt eval``:
    ``train.tau_norm`` rewrites the linear head in place, ``train.posthoc_tau`` becomes a
    fixed logit offset (``TIN.set_logit_offset``).
    """
    from ..models.factory import create_model
    from ..two_stage import bake_eval_adjustments

    ckpt = ckpt_io.load_checkpoint(path)
    cfg = from_dict(ckpt["config"])
    build_cfg = OmegaConf.merge(
        cfg.model, {"pretrained": "", "pretrained_image": False, "pretrained_text": False}
    )  # the state dict below overwrites every weight anyway
    model = create_model(build_cfg, ckpt["classnames"], image_size=cfg.data.image_size)
    model.load_state_dict(ckpt["model"])
    if adjust:
        bake_eval_adjustments(model, cfg, np.asarray(ckpt["train_counts"]))
    model.to(device).eval()
    return model, cfg, ckpt


def _bundle_from_checkpoint(ckpt: dict, test) -> DataBundle:
    groups = {k: np.asarray(v, dtype=np.int64) for k, v in ckpt["groups"].items()}
    return DataBundle(
        train=None,
        evaluation=test,
        test=test,
        eval_name="test",
        classnames=list(ckpt["classnames"]),
        train_counts=np.asarray(ckpt["train_counts"]),
        groups=groups,
    )


def evaluate_checkpoint(
    path: str | Path, overrides: Sequence[str] = (), out_dir: Optional[str | Path] = None, quiet: bool = False
) -> dict:
    """Evaluate a checkpoint on its test split (or one given by ``data.test.*`` overrides)."""
    from ..data.build import build_split

    model, cfg, ckpt = load_model(path, adjust=False)  # evaluate_samples applies train.tau_norm / posthoc_tau
    if overrides:
        bad = [o for o in overrides if not o.startswith(("data.", "train."))]
        if bad:
            raise TinltError(f"eval accepts only data.* / train.* overrides, got '{bad[0]}'")
        cfg = from_dict(OmegaConf.to_container(OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))))
    device = resolve_device(cfg.train.device)
    model.to(device)
    test = build_split(cfg.data.test) or build_split(cfg.data.val)
    if test is None:
        raise TinltError("nothing to evaluate: set data.test.kind / data.test.path")
    if list(test.classnames) != list(ckpt["classnames"]):
        raise TinltError(
            f"test split has {test.num_classes} classes that differ from the checkpoint's {len(ckpt['classnames'])}"
        )
    data = _bundle_from_checkpoint(ckpt, test)
    _, eval_tf = make_transforms(model, cfg)
    from ..onnx_predict import threshold_rule

    rule = threshold_rule(ckpt.get("threshold"), ckpt.get("threshold_info"), ckpt["classnames"])
    metrics = evaluate_samples(model, test, eval_tf, cfg, DistInfo(), device, data, desc="eval", threshold_rule=rule)
    out = Path(out_dir) if out_dir else Path(path).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, metrics)
    echo(f"eval: {_summary(metrics)} | metrics: {out / 'metrics.json'}", quiet=quiet)
    if "at_threshold" in metrics:
        at = metrics["at_threshold"]
        echo(f"eval at the calibrated threshold ({at['rule']}): {_summary(at)}", quiet=quiet)
    return metrics


def zeroshot(cfg, quiet: bool = False) -> dict:
    """Frozen towers, no training: classify the test split by prompts alone."""
    from ..engine.trainer import build_data
    from ..models.factory import create_model

    cfg = OmegaConf.merge(cfg, {"model": {"freeze_image": True, "freeze_text": True, "head": "text"}})
    device = resolve_device(cfg.train.device)
    data = build_data(cfg)
    model = create_model(cfg.model, data.classnames, image_size=cfg.data.image_size).to(device).eval()
    _, eval_tf = make_transforms(model, cfg)
    test = data.test if data.test is not None else data.evaluation
    metrics = evaluate_samples(model, test, eval_tf, cfg, DistInfo(), device, data, desc="zero-shot")
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    write_metrics(out, metrics)
    echo(f"zero-shot: {_summary(metrics)} | metrics: {out / 'metrics.json'}", quiet=quiet)
    return metrics
