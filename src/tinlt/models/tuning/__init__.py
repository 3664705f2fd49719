"""How each tower trains: full, frozen, or one lightweight method (``model.tune_image`` /
``model.tune_text``; docs/tuning.md).

Each method is its own module in this package, registered by name with what it needs and
its own keys (:mod:`.registry`); a tower says where its parts are (``tuning_parts``,
models/base.py), so no method knows tower classes and no tower knows methods:

=============  =================================================================  ==========
method         trains                                                             towers
=============  =================================================================  ==========
full           every parameter (TIN's paper recipe)                               all
frozen         nothing (new projections of offline towers still train)            all
lora           rank-r updates of the ``targets`` (q, v by default; k, o, mlp;     transformer;
               ``conv1x1``: every pointwise conv)                                 conv (1x1)
adaptformer    a bottleneck branch parallel to each MLP                           transformer
vpt            prompt tokens (``prompts``, ``deep``)                              image ViT
bitfit         biases                                                             all
ln             LayerNorm affine weights                                           transformer
bn             BatchNorm affine weights                                           conv
ssf            a scale and shift per channel of each layer's output               all
last_k         the last ``blocks`` blocks and everything after them               all
=============  =================================================================  ==========

``blocks: k`` restricts a method to the last k blocks (LIFT's partial tuning); for last_k
it is k itself. Every added parameter starts where the model is unchanged (LoRA's B,
AdaptFormer's up projection, SSF at identity), except VPT's prompts. A tuned tower's
normalisation statistics and dropout stay in eval mode, as a frozen tower's do.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ...errors import TinltError
from . import whole  # noqa: F401 - full and frozen first in messages
from .lora import merge
from .registry import METHODS, TuneContext, check_needs, get_method, method_names, register_method

__all__ = ["tune_tower", "merge", "trainable_summary", "describe_trainable", "register_method", "method_names",
           "METHODS"]


def _get(cfg: Any, key: str, default: Any) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _names(tower: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in tower.named_parameters() if id(p) in ids}


def tune_tower(tower: nn.Module, cfg: Any, *, num_classes: int, key: str = "image") -> set[str]:
    """Set ``tower`` up for ``cfg.method`` (adding modules where the method needs them) and
    return the names (as in ``tower.named_parameters()``) of the parameters that train."""
    where = f"model.tune_{key}"
    method = get_method(str(_get(cfg, "method", "") or "full"), where)
    parts, blocks = None, []
    if method.parts:
        parts = tower.tuning_parts()
        check_needs(method, parts, where)
        k = int(_get(cfg, "blocks", 0) or 0)
        if k and not method.blocks_apply:
            raise TinltError(f"config key '{where}.blocks': {method.name} starts at the first block; leave blocks at 0")
        if k < 0 or k > len(parts.blocks):
            raise TinltError(f"config key '{where}.blocks' = {k}; the tower has {len(parts.blocks)} blocks")
        blocks = parts.blocks[-k:] if k else parts.blocks
    ctx = TuneContext(tower=tower, parts=parts, blocks=blocks, keys=cfg, num_classes=num_classes, where=where)
    return _names(tower, method.apply(ctx))


def trainable_summary(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), each tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def describe_trainable(model: nn.Module) -> str:
    """The line ``tinlt train`` prints: trainable parameters and their share of the model."""
    trainable, total = trainable_summary(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3g}%)"
