"""Norm tuning: ``ln`` trains the LayerNorm affine weights of a transformer tower, ``bn`` the
BatchNorm ones of a convolutional tower (of the last ``blocks`` blocks, else all)."""

from __future__ import annotations

from .registry import TuneContext, register_method


def _norm_params(ctx: TuneContext):
    scope = ctx.blocks if ctx.get("blocks", 0) else [ctx.tower]
    kind = ctx.parts.family.norm
    return [p for m in scope for sub in m.modules() if isinstance(sub, kind) for p in sub.parameters(recurse=False)]


@register_method("ln", needs="transformer")
def ln(ctx: TuneContext):
    return _norm_params(ctx)


@register_method("bn", needs="conv")
def bn(ctx: TuneContext):
    return _norm_params(ctx)
