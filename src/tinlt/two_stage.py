"""Classifier re-balancing after (or instead of) representation learning.

Owns the decoupling baselines of Kang et al. 2020 ("Decoupling representation and
classifier for long-tailed recognition", ICLR) and post-hoc logit adjustment (Menon et al.
2021), as functions and as the config keys that drive them:

* ``train.tau_norm: tau`` - tau-normalisation of a trained linear head, rows
  ``w_c / ||w_c||^tau``, bias dropped (the authors' evaluation drops it too). Applied in
  every evaluation of the run (and by ``tinlt eval`` on its checkpoints); the checkpoints
  keep the stage-1 weights. The text head needs none: its classifier rows are
  L2-normalised text features, so ``||w_c|| = 1`` and tau-norm is the identity - the
  config check refuses it rather than silently doing nothing.
* ``train.posthoc_tau: tau`` - subtract ``tau * log(prior)`` (training-split class
  frequencies, which checkpoints carry) from the logits at evaluation.
* cRT (classifier re-training): ``model.init_from: stage-1 checkpoint``,
  ``model.freeze_features: true`` (image tower *and* attention fixed; only the classifier
  trains), ``model.reinit_head: true``, ``data.sampler: class_balanced``.
  :func:`prepare_model` does the model part before the optimizer is built.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .errors import TinltError

LogitTransform = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "tau_normalize_weight",
    "tau_normalize_",
    "tau_normalized",
    "posthoc_transform",
    "eval_adjustments",
    "bake_eval_adjustments",
    "load_weights",
    "freeze_features",
    "prepare_model",
]


# ----------------------------------------------------------------------------- tau-normalisation


def tau_normalize_weight(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Rows ``w_c / ||w_c||_2^tau`` of a (C, D) classifier weight; tau=0 leaves it, tau=1 unit rows."""
    if weight.ndim != 2:
        raise TinltError(f"tau-norm: expected a (classes, features) weight, got shape {tuple(weight.shape)}")
    norms = weight.norm(dim=1, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny)  # zero rows stay zero
    return weight / norms.pow(tau)


def _linear_head(model: nn.Module) -> nn.Linear:
    core = getattr(model, "module", model)
    head = getattr(core, "head", None)
    if getattr(core, "head_type", "linear") != "linear" or not isinstance(head, nn.Linear):
        raise TinltError(
            "tau-norm needs model.head=linear: the text head's classifier rows are L2-normalised text "
            "features already, so tau-normalisation would be the identity"
        )
    return head


@torch.no_grad()
def tau_normalize_(model: nn.Module, tau: float) -> None:
    """Tau-normalise ``model.head`` in place and zero its bias."""
    head = _linear_head(model)
    head.weight.copy_(tau_normalize_weight(head.weight.float(), tau).to(head.weight.dtype))
    if head.bias is not None:
        head.bias.zero_()


@contextlib.contextmanager
def tau_normalized(model: nn.Module, tau: Optional[float]) -> Iterator[nn.Module]:
    """Within the block the linear head is tau-normalised; its exact weights come back after."""
    if tau is None:
        yield model
        return
    head = _linear_head(model)
    saved = [p.detach().clone() for p in head.parameters()]
    tau_normalize_(model, tau)
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(head.parameters(), saved):
                p.copy_(s)


# ----------------------------------------------------------------------------- post-hoc logit adjustment


def posthoc_transform(class_counts, tau: float) -> Optional[LogitTransform]:
    """``logits -> logits - tau * log prior`` (None when tau is 0), prior from training counts."""
    if not tau:
        return None
    from .losses import logit_adjust

    counts = np.asarray(class_counts)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        return logit_adjust(logits.float(), counts, tau=tau)

    return transform


def _adjustment_settings(cfg) -> tuple[Optional[float], float]:
    tc = cfg.train
    tau_norm = tc.get("tau_norm", None)
    return (None if tau_norm is None else float(tau_norm)), float(tc.get("posthoc_tau", 0.0) or 0.0)


@contextlib.contextmanager
def eval_adjustments(model: nn.Module, cfg, class_counts) -> Iterator[Optional[LogitTransform]]:
    """What ``train.tau_norm`` / ``train.posthoc_tau`` ask of one evaluation: tau-normalises the
    head for the block and yields the logit transform to hand to ``predict_loader``."""
    tau_norm, tau = _adjustment_settings(cfg)
    with tau_normalized(model, tau_norm):
        yield posthoc_transform(class_counts, tau)


def bake_eval_adjustments(model: nn.Module, cfg, class_counts) -> None:
    """``eval_adjustments`` made permanent, for a model loaded to deploy: the head is
    tau-normalised in place and the post-hoc shift becomes the model's fixed logit offset."""
    tau_norm, tau = _adjustment_settings(cfg)
    if tau_norm is not None:
        tau_normalize_(model, tau_norm)
    shift = posthoc_transform(class_counts, tau)
    if shift is not None:
        model.set_logit_offset(shift(torch.zeros(1, len(class_counts)))[0])


# ----------------------------------------------------------------------------- cRT: stage-2 set-up


def _checkpoint_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():  # a run folder: its selected weights, else its latest
        p = p / "best.pt" if (p / "best.pt").is_file() else p / "last.pt"
    if not p.is_file():
        raise TinltError(f"config key 'model.init_from': checkpoint not found: {path}")
    return p


def load_weights(model: nn.Module, path: str | Path, *, skip_head: bool = False, classnames=None) -> dict:
    """Load a tinlt checkpoint's weights non-strictly: tensors whose name and shape match.

    ``skip_head`` leaves the linear head alone (cRT re-initialises it). Keeping a stage-1
    linear head requires the same classes in the same order. Returns counts of what
    was loaded, for the log.
    """
    from .engine.checkpoint import load_checkpoint

    ckpt_path = _checkpoint_path(path)
    ckpt = load_checkpoint(ckpt_path)
    source = ckpt["model"]
    own = model.state_dict()
    keep_head = not skip_head and getattr(model, "head_type", None) == "linear"
    if keep_head and classnames is not None and list(ckpt.get("classnames", classnames)) != list(classnames):
        raise TinltError(
            f"config key 'model.init_from': {ckpt_path} was trained on other classes; "
            f"set model.reinit_head=true to train a new linear head"
        )
    take, mismatched = {}, []
    for name, tensor in source.items():
        if skip_head and name.startswith("head."):
            continue
        if name in own:
            if own[name].shape == tensor.shape:
                take[name] = tensor
            else:
                mismatched.append(name)
    if not take:
        raise TinltError(f"config key 'model.init_from': no weights in {ckpt_path} fit this model")
    model.load_state_dict(take, strict=False)
    return {"path": str(ckpt_path), "loaded": len(take), "shape_mismatch": mismatched,
            "not_in_checkpoint": sorted(set(own) - set(take))}


def freeze_features(model: nn.Module) -> None:
    """Fix the whole image path - tower (incl. its new projection) and attention - in eval mode.

    Only the classifier trains afterwards: the linear head, or with the text head the
    text tower (unless frozen too) and the logit scale.
    """
    # a frozen tower also stays in eval mode (fixed BatchNorm statistics); the attention
    # block has no norm or dropout layers, so fixing its parameters fixes its output
    model.freeze(image=True, text=getattr(model, "_frozen", {}).get("text", False))
    parts = [model.image_tower] + ([model.attention] if model.attention is not None else [])
    for part in parts:
        for p in part.parameters():
            p.requires_grad = False


def prepare_model(model: nn.Module, model_cfg, *, classnames=None, resuming: bool = False,
                  log: Callable[[str], None] = print) -> None:
    """Apply ``model.init_from``, ``model.reinit_head`` and ``model.freeze_features`` before training.

    When resuming, the run's own checkpoint supplies every weight, so nothing is loaded.
    """
    init_from = model_cfg.get("init_from", "") or ""
    reinit = bool(model_cfg.get("reinit_head", False))
    if init_from and not resuming:
        info = load_weights(model, init_from, skip_head=reinit, classnames=classnames)
        log(
            f"model.init_from: {info['loaded']} tensors from {info['path']}"
            + (f"; {len(info['shape_mismatch'])} skipped for shape" if info["shape_mismatch"] else "")
        )
    if reinit and not resuming:
        head = _linear_head(model)
        head.reset_parameters()
    if model_cfg.get("freeze_features", False):
        freeze_features(model)
