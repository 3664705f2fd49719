"""The tuning modules peft does not offer: AdaptFormer, SSF and visual prompts (VPT).

* ``AdaptFormer`` (Chen et al. 2022, LIFT's default): a bottleneck branch parallel to a
  transformer block's MLP, on the residual stream after attention: LayerNorm, down
  projection, ReLU, up projection (zero-initialised, so the block is unchanged at step 0)
  times a learnable scale (1 at init). Attached with hooks, so the block's own code (and
  tinlt's class-token shortcut) runs unchanged and no parameter is renamed.
* ``SSF`` (Lian et al. 2022): a per-channel scale and shift of a layer's output, folded
  into that layer's weight and bias by parametrization (W -> s * W, b -> s * b + t); at
  identity (s = 1, t = 0) the model is unchanged, and a merge makes it a plain layer again.
* ``VisualPrompts`` (Jia et al. 2022): learnable tokens inserted after a ViT's class
  token, before the first block (shallow) or replaced before every block (deep). Not
  identity at step 0: extra keys change the attention, whatever the prompts' values.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize


class AdaptFormer(nn.Module):
    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(self.ln(x)))) * self.scale


class _Keep:
    """Pre-hook: keep the residual stream the adapter reads (an object, not a closure, so a
    deep copy of the model gets its own)."""

    def __init__(self, stash: dict, index: int) -> None:
        self.stash, self.index = stash, index

    def __call__(self, _module, args):
        self.stash["x"] = args[self.index]


class _AddToOutput:
    def __init__(self, adapter: AdaptFormer, stash: dict) -> None:
        self.adapter, self.stash = adapter, stash

    def __call__(self, _module, _args, out):
        return out + self.adapter(self.stash.pop("x"))


class _AddToInput(_AddToOutput):
    def __call__(self, _module, args):
        return (args[0] + self.adapter(self.stash.pop("x")),)


def attach_adaptformer(block: nn.Module, family: str, bottleneck: int, dim: int) -> AdaptFormer:
    """Add ``block.adaptformer`` in parallel with the block's MLP (see the module doc).

    clip blocks (pre-LN: x + mlp(ln_2(x))): a pre-hook on ln_2 keeps x, a hook on mlp adds
    adapter(x). bert blocks (post-LN: LN(dense(h) + x)): a pre-hook on the output block keeps
    x, a pre-hook on its LayerNorm adds adapter(x) to the sum before normalising."""
    adapter = AdaptFormer(dim, bottleneck).to(next(block.parameters()).device)
    block.add_module("adaptformer", adapter)
    stash: dict = {}
    if family == "clip":
        block.ln_2.register_forward_pre_hook(_Keep(stash, 0))
        block.mlp.register_forward_hook(_AddToOutput(adapter, stash))
    else:
        block.output.register_forward_pre_hook(_Keep(stash, 1))
        block.output.LayerNorm.register_forward_pre_hook(_AddToInput(adapter, stash))
    return adapter


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


class VisualPrompts(nn.Module):
    """``n`` prompt tokens per block (deep) or for the first block only (shallow); uniform init as VPT."""

    def __init__(self, n: int, dim: int, blocks: int, deep: bool, patch_area: int) -> None:
        super().__init__()
        self.n, self.deep = int(n), bool(deep)
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))
        self.tokens = nn.Parameter(torch.empty(blocks if deep else 1, n, dim).uniform_(-bound, bound))

    def insert(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """(B, 1 + P, D) [class, patches] -> (B, 1 + n + P, D) before block 0; before a later
        block (deep), the previous block's prompt outputs are replaced by this block's prompts."""
        if block > 0 and not self.deep:
            return x
        p = self.tokens[block if self.deep else 0].to(x.dtype).expand(x.shape[0], -1, -1)
        rest = x[:, 1:] if block == 0 else x[:, 1 + self.n:]
        return torch.cat([x[:, :1], p, rest], dim=1)
