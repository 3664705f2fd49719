"""AdaptFormer (Chen et al. 2022, LIFT's default): a bottleneck branch parallel to each
transformer block's MLP, on the residual stream after attention: LayerNorm, down
projection, ReLU, up projection (zero-initialised, so the block is unchanged at step 0)
times a learnable scale (1 at init). The block family decides where it reads and adds
(models/blocks.py); hooks attach it, so the block's own code runs unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .registry import TuneContext, register_method


@dataclass
class AdaptFormerKeys:
    bottleneck: int = 0  # adaptformer: width; 0 = LIFT's rule 2^max(0, floor(log2(classes / (2 * blocks))))


def adaptformer_width(num_classes: int, blocks: int) -> int:
    """LIFT's default bottleneck: 2^max(0, floor(log2(classes / (2 * blocks))))."""
    return 2 ** max(0, int(math.log2(num_classes / (blocks * 2))))


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


@register_method("adaptformer", needs="transformer", keys=AdaptFormerKeys)
def adaptformer(ctx: TuneContext):
    family = ctx.parts.family
    width = int(ctx.get("bottleneck", 0) or 0) or adaptformer_width(ctx.num_classes, len(ctx.blocks))
    params = []
    for block in ctx.blocks:
        adapter = AdaptFormer(family.width(block), width).to(next(block.parameters()).device)
        block.add_module("adaptformer", adapter)
        family.attach_parallel(block, adapter)
        params += list(adapter.parameters())
    return params
