"""SSF (Lian et al. 2022): a per-channel scale and shift of each targeted layer's output,
folded into that layer's weight and bias by parametrization (W -> s * W, b -> s * b + t);
at identity (s = 1, t = 0) the model is unchanged, and a merge makes it a plain layer
again. The block family names the layers (models/blocks.py)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .registry import TuneContext, register_method


class SSF(nn.Module):
    """The scale and shift of one layer's output channels (shared by its weight's and bias's parametrizations)."""

    def __init__(self, channels: int, like: torch.Tensor) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, dtype=like.dtype, device=like.device))
        self.shift = nn.Parameter(torch.zeros(channels, dtype=like.dtype, device=like.device))


class _ScaleWeight(nn.Module):
    def __init__(self, ssf: SSF) -> None:
        super().__init__()
        self.ssf = ssf

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.ssf.scale.view(-1, *([1] * (w.ndim - 1)))


class _ScaleShiftBias(_ScaleWeight):
    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return b * self.ssf.scale + self.ssf.shift


def add_ssf(module: nn.Module, weight: str, bias: str) -> Optional[SSF]:
    """Scale-shift ``module``'s outputs through its ``weight`` and ``bias``; None when it has no bias."""
    w, b = getattr(module, weight, None), getattr(module, bias, None)
    if w is None or b is None:
        return None
    ssf = SSF(w.shape[0], w)
    parametrize.register_parametrization(module, weight, _ScaleWeight(ssf))
    parametrize.register_parametrization(module, bias, _ScaleShiftBias(ssf))
    return ssf


@register_method("ssf")
def ssf(ctx: TuneContext):
    made = [add_ssf(m, w, b) for blk in ctx.blocks for m, w, b in ctx.parts.family.ssf_targets(blk)]
    return [p for s in made if s is not None for p in s.parameters()]
