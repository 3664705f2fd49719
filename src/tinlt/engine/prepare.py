"""Model preparation before training: the two-stage (cRT) set-up.

Owns ``model.init_from`` (weights from an earlier run, loaded non-strictly),
``model.reinit_head`` and ``model.freeze_features``: classifier re-training (cRT, Kang et
al. 2020, "Decoupling representation and classifier for long-tailed recognition") is
``init_from: <stage-1 run>``, ``freeze_features: true``, ``reinit_head: true`` and
``data.sampler: class_balanced``. The evaluation-time re-balancing (post-hoc logit
adjustment, tau-norm) lives with the model, in ``models/adjust.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from ..errors import TinltError
from . import checkpoint as ckpt_io
from .run_folder import resolve_checkpoint


def own_head(model: nn.Module, key: str = "model.reinit_head") -> nn.Module:
    """The linear or cosine head (weights of its own; the text head has none)."""
    core = getattr(model, "module", model)
    head = getattr(core, "head", None)
    if head is None or not getattr(head, "has_weights", True):
        raise TinltError(f"config key '{key}' needs model.head=linear or cosine (the text head has no weights of its own)")
    return head


def load_weights(model: nn.Module, path: str | Path, *, skip_head: bool = False, classnames=None,
                 log: Callable[[str], None] = print) -> dict:
    """Load a tinlt checkpoint's weights non-strictly: tensors whose name and shape match.

    ``path`` is a checkpoint or a run folder (its best.pt, else last.pt). ``skip_head``
    leaves the linear head alone (cRT re-initialises it). Keeping a stage-1 linear head
    requires the same classes in the same order. Returns counts of what was loaded.
    """
    ckpt_path = resolve_checkpoint(path, key="model.init_from", log=log)
    ckpt = ckpt_io.load_checkpoint(ckpt_path)
    if ckpt.get("members"):
        sources = (ckpt.get("ensemble") or {}).get("sources") or []
        raise TinltError(f"config key 'model.init_from': {ckpt_path} is an ensemble of {len(ckpt['members'])} models "
                         f"(tinlt fit --ensemble); start from one of them" + (f", e.g. {sources[0]}" if sources else ""))
    own = model.state_dict()
    keep_head = not skip_head and getattr(getattr(model, "head", None), "has_weights", False)
    if keep_head and classnames is not None and list(ckpt.get("classnames", classnames)) != list(classnames):
        raise TinltError(
            f"config key 'model.init_from': {ckpt_path} was trained on other classes; "
            f"set model.reinit_head=true to train a new head"
        )
    # a tuned model keeps a parametrized weight (LoRA, SSF) under '<module>.parametrizations.<name>.original'
    plain = {k.replace(".parametrizations.", ".").replace(".original", ""): k for k in own if k.endswith(".original")}
    take, mismatched = {}, []
    for name, tensor in ckpt["model"].items():
        if skip_head and name.startswith("head."):
            continue
        name = name if name in own else plain.get(name, name)
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
        info = load_weights(model, init_from, skip_head=reinit, classnames=classnames, log=log)
        log(
            f"model.init_from: {info['loaded']} tensors from {info['path']}"
            + (f"; {len(info['shape_mismatch'])} skipped for shape" if info["shape_mismatch"] else "")
        )
    if reinit and not resuming:
        own_head(model).reset_parameters()
    if model_cfg.get("freeze_features", False):
        freeze_features(model)
