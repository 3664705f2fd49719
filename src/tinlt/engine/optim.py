"""Optimisation: the learning rate after batch-size scaling, optimizer parameter groups,
the warm-up + cosine schedule, and the fp16 loss-scale back-off."""

from __future__ import annotations

import math
from typing import Optional

import torch
from omegaconf import DictConfig

from ..errors import TinltError


def effective_lr(optim_cfg, global_batch: int) -> float:
    """The base lr after the explicit batch-size scaling rule (``optim.lr_scaling``)."""
    ratio = global_batch / optim_cfg.lr_base_batch
    if optim_cfg.lr_scaling == "linear":
        return optim_cfg.lr * ratio
    if optim_cfg.lr_scaling == "sqrt":
        return optim_cfg.lr * math.sqrt(ratio)
    return optim_cfg.lr


def build_optimizer(model, cfg: DictConfig, global_batch: Optional[int] = None) -> torch.optim.Optimizer:
    """SGD or AdamW over the model's trainable parameter groups ("image", "text", "new"),
    each with its lr multiplier; norms, biases, gates and the logit scale get no weight decay."""
    o = cfg.optim
    base_lr = effective_lr(o, global_batch or o.batch_size * o.accum_steps)
    mult = {"image": 1.0, "text": o.lr_text_mult, "new": o.lr_new_mult}
    groups = []
    for name, params in model.param_groups().items():
        params = [p for p in params if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        for ps, wd in ((decay, o.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": base_lr * mult[name], "weight_decay": wd, "name": name})
    if not groups:
        raise TinltError("nothing to train: both towers are frozen and the model has no new parameters")
    # fused kernels on CUDA: one launch for all parameters instead of one per tensor. Not on
    # CPU, where torch's fused AdamW rounds differently from the for-each path earlier runs used
    fused = {"fused": True} if fused_available(groups) else {}
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=o.momentum, **fused)
    return torch.optim.AdamW(groups, lr=base_lr, betas=tuple(o.betas), **fused)


def fused_available(groups) -> bool:
    """Every trainable tensor on a CUDA device (torch's fused SGD / AdamW need that)."""
    devices = {p.device.type for g in groups for p in g["params"]}
    return devices == {"cuda"}


def drops_last(cfg: DictConfig, samples_per_epoch: int) -> bool:
    """With ``train.compile`` the epoch's last, short batch is dropped (when a full one exists):
    a compiled model otherwise recompiles for its shape every epoch."""
    return bool(cfg.train.get("compile", False)) and samples_per_epoch >= cfg.optim.batch_size


def warmup_cosine(total_steps: int, warmup_steps: int, schedule: str):
    """The lr factor at each optimizer step: linear warm-up, then cosine decay (or constant)."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return factor


def step_counts(cfg: DictConfig, samples_per_epoch: int) -> tuple[int, int, int]:
    """(batches per epoch, optimizer steps per epoch, total steps after train.max_steps)."""
    bs = cfg.optim.batch_size
    batches = samples_per_epoch // bs if drops_last(cfg, samples_per_epoch) else math.ceil(samples_per_epoch / bs)
    per_epoch = max(1, batches // cfg.optim.accum_steps)
    total = per_epoch * cfg.optim.epochs
    return batches, per_epoch, min(total, cfg.train.max_steps) if cfg.train.max_steps > 0 else total


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, steps_per_epoch: int):
    warmup_steps = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    factor = warmup_cosine(steps_per_epoch * cfg.optim.epochs, warmup_steps, cfg.optim.schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def back_off(scaler: "torch.amp.GradScaler", loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """A non-finite fp16 loss skips its step (its gradients dropped); lower the loss scale as
    GradScaler does when the gradients overflow, or every later batch would overflow the same way."""
    scaler.scale(loss)  # initialises the scale on a first-batch overflow
    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    optimizer.zero_grad(set_to_none=True)


def non_finite(loss: torch.Tensor, epoch: int, step: int, last_good) -> TinltError:
    return TinltError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, optimizer step {step + 1}; last good "
                      f"checkpoint: {last_good or 'none yet'}; lower optim.lr or check the data")
