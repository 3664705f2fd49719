"""BitFit (Ben Zaken et al. 2022): only the biases train (of the last ``blocks`` blocks, else
of the whole tower)."""

from __future__ import annotations

from .registry import TuneContext, register_method


@register_method("bitfit")
def bitfit(ctx: TuneContext):
    scope = ctx.blocks if ctx.get("blocks", 0) else [ctx.tower]
    return [p for m in scope for n, p in m.named_parameters() if n.split(".")[-1].endswith("bias")]
