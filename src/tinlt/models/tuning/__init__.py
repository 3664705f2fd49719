"""How each tower trains: full, frozen, or one lightweight method (``model.tune_image`` /
``model.tune_text``; docs/tuning.md).

Owns the methods' meaning on every tower (via :mod:`.anatomy`) and which parameters each
one trains:

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

``blocks: k`` restricts lora / adaptformer / vpt / bitfit / ln / bn / ssf to the last k
blocks (LIFT's partial tuning); for last_k it is k itself. Every added parameter starts
where the model is unchanged (LoRA's B, AdaptFormer's up projection, SSF at identity),
except VPT's prompts. A tuned tower's normalisation statistics and dropout stay in eval
mode, as a frozen tower's do.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import nn

from ...errors import TinltError
from .anatomy import Anatomy, anatomy, attention_targets, pointwise_convs, ssf_targets
from .lora import add_lora, merge
from .modules import VisualPrompts, add_ssf, attach_adaptformer

__all__ = ["tune_tower", "merge", "trainable_summary", "describe_trainable", "adaptformer_width"]

TRANSFORMER_ONLY = ("adaptformer", "ln")
CONV_ONLY = ("bn",)


def _get(cfg: Any, key: str, default: Any) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def adaptformer_width(num_classes: int, blocks: int) -> int:
    """LIFT's default bottleneck: 2^max(0, floor(log2(classes / (2 * blocks))))."""
    return 2 ** max(0, int(math.log2(num_classes / (blocks * 2))))


def _names(tower: nn.Module, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in tower.named_parameters() if id(p) in ids}


def _selected(parts: Anatomy, k: int) -> list[nn.Module]:
    if k < 0 or k > len(parts.blocks):
        raise TinltError(f"config key 'model.tune_*.blocks' = {k}; the tower has {len(parts.blocks)} blocks")
    return parts.blocks[-k:] if k else parts.blocks


def tune_tower(tower: nn.Module, cfg: Any, *, num_classes: int, key: str = "image") -> set[str]:
    """Set ``tower`` up for ``cfg.method`` (adding modules where the method needs them) and
    return the names (as in ``tower.named_parameters()``) of the parameters that train."""
    method = str(_get(cfg, "method", ""))
    where = f"model.tune_{key}"
    if method in ("", "full"):
        return {n for n, _ in tower.named_parameters()}
    if method == "frozen":
        return set()
    parts = anatomy(tower)
    if method in TRANSFORMER_ONLY and parts.family == "conv":
        raise TinltError(f"config key '{where}.method' = {method!r} needs a transformer tower; this one is "
                         f"convolutional (try bn, bitfit, ssf, last_k or lora with targets [conv1x1])")
    if method in CONV_ONLY and parts.family != "conv":
        raise TinltError(f"config key '{where}.method' = {method!r} needs a convolutional tower (try ln)")
    k = int(_get(cfg, "blocks", 0) or 0)
    blocks = _selected(parts, k)
    if method == "last_k":
        if k < 1:
            raise TinltError(f"config key '{where}.blocks' must be >= 1 for method last_k")
        params = [p for b in blocks for p in b.parameters()] + [p for m in parts.tail for p in m.parameters()]
        params += [getattr(m, n) for m, n in parts.tail_params]
        return _names(tower, params)
    if method == "bitfit":
        scope = blocks if k else [tower]
        return _names(tower, [p for m in scope for n, p in m.named_parameters() if n.split(".")[-1].endswith("bias")])
    if method in ("ln", "bn"):
        kind = nn.LayerNorm if method == "ln" else nn.modules.batchnorm._BatchNorm
        scope = blocks if k else [tower]
        return _names(tower, [p for m in scope for sub in m.modules() if isinstance(sub, kind)
                              for p in sub.parameters(recurse=False)])
    if method == "lora":
        return _lora(tower, parts, blocks, cfg, where)
    if method == "adaptformer":
        width = int(_get(cfg, "bottleneck", 0) or 0) or adaptformer_width(num_classes, len(blocks))
        adapters = [attach_adaptformer(b, parts.family, width, parts.width) for b in blocks]
        return _names(tower, [p for a in adapters for p in a.parameters()])
    if method == "ssf":
        made = [add_ssf(m, w, b) for blk in blocks for m, w, b in ssf_targets(blk, parts.family)]
        return _names(tower, [p for s in made if s is not None for p in s.parameters()])
    if method == "vpt":
        return _vpt(tower, parts, cfg, k, where)
    raise TinltError(f"config key '{where}.method' = {method!r} is not implemented")  # CHOICES and this list differ


def _lora(tower, parts: Anatomy, blocks, cfg, where: str) -> set[str]:
    rank, alpha = int(_get(cfg, "rank", 8)), float(_get(cfg, "alpha", 16.0))
    if rank < 1:
        raise TinltError(f"config key '{where}.rank' must be >= 1, got {rank}")
    targets = list(_get(cfg, "targets", ["q", "v"]))
    updates = []
    if parts.family == "conv":
        if targets != ["conv1x1"]:
            raise TinltError(f"config key '{where}.targets': a convolutional tower takes [conv1x1], got {targets}")
        for b in blocks:
            updates += [add_lora(c, "weight", [None], rank, alpha) for c in pointwise_convs(b)]
    else:
        if "conv1x1" in targets:
            raise TinltError(f"config key '{where}.targets': conv1x1 is for convolutional towers")
        for b in blocks:
            by_tensor: dict = {}
            for module, name, rows in attention_targets(b, parts.family, targets):
                by_tensor.setdefault((id(module), name), (module, name, []))[2].append(rows)
            updates += [add_lora(m, n, rows, rank, alpha) for m, n, rows in by_tensor.values()]
    if not updates:
        raise TinltError(f"config key '{where}.targets' = {targets}: nothing to adapt in this tower")
    return _names(tower, [p for u in updates for p in u.parameters()])


def _vpt(tower, parts: Anatomy, cfg, k: int, where: str) -> set[str]:
    from ..clip_towers import OpenCLIPImageTower

    if not (isinstance(tower, OpenCLIPImageTower) and tower.kind == "vit"):
        raise TinltError(f"config key '{where}.method' = 'vpt' needs an open_clip ViT image tower "
                         "(for text prompts use model.coop.n_ctx)")
    if k:
        raise TinltError(f"config key '{where}.blocks': vpt prompts start at the first block; leave blocks at 0")
    n = int(_get(cfg, "prompts", 10))
    if n < 1:
        raise TinltError(f"config key '{where}.prompts' must be >= 1, got {n}")
    v = tower.visual
    area = int(v.patch_size[0] * v.patch_size[1])
    tower.prompts = VisualPrompts(n, parts.width, len(parts.blocks), bool(_get(cfg, "deep", False)), area)
    tower.prompts.to(next(v.parameters()).device)
    return _names(tower, tower.prompts.parameters())


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
