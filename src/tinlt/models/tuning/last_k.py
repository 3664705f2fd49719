"""``last_k``: the last ``blocks`` blocks train, and everything after them (norms, pooling,
projections); the rest of the tower is fixed (LIFT's partial fine-tuning)."""

from __future__ import annotations

from ...errors import TinltError
from .registry import TuneContext, register_method


@register_method("last_k")
def last_k(ctx: TuneContext):
    if int(ctx.get("blocks", 0) or 0) < 1:
        raise TinltError(f"config key '{ctx.where}.blocks' must be >= 1 for method last_k")
    parts = ctx.parts
    params = [p for b in ctx.blocks for p in b.parameters()] + [p for m in parts.tail for p in m.parameters()]
    return params + [getattr(m, n) for m, n in parts.tail_params]
