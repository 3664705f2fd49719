"""The two methods that tune a tower whole: ``full`` (every parameter trains, the paper's
recipe) and ``frozen`` (none does; TIN keeps the tower in eval mode)."""

from __future__ import annotations

from .registry import TuneContext, register_method


@register_method("full", parts=False)
def full(ctx: TuneContext):
    return list(ctx.tower.parameters())


@register_method("frozen", parts=False)
def frozen(ctx: TuneContext):
    return []
