"""Visual prompt tuning (VPT, Jia et al. 2022): learnable tokens inserted after a ViT's class
token, before the first block (shallow) or replaced before every block (deep). Not the
identity at step 0: extra keys change the attention, whatever the prompts' values. The
tower says where prompts go (``tuning_parts().prompts``, models/base.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import TinltError
from .registry import TuneContext, register_method


@dataclass
class VptKeys:
    prompts: int = 10  # vpt: prompt tokens
    deep: bool = False  # vpt: new prompts before every block (else only before the first)


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


@register_method("vpt", needs="prompts", keys=VptKeys, blocks_apply=False)
def vpt(ctx: TuneContext):
    n = int(ctx.get("prompts", 10))
    if n < 1:
        raise TinltError(f"config key '{ctx.where}.prompts' must be >= 1, got {n}")
    slots = ctx.parts.prompts
    prompts = VisualPrompts(n, slots.width, slots.blocks, bool(ctx.get("deep", False)), slots.patch_area)
    slots.install(prompts.to(slots.device))
    return list(prompts.parameters())
