"""LoRA (Hu et al. 2022) as a torch parametrization: W -> W + (alpha / r) * B @ A.

One mechanism for every layer LoRA applies to in tinlt's towers: ``nn.Linear`` weights,
row blocks of a fused q/k/v projection (``nn.MultiheadAttention.in_proj_weight``: q and v
each get their own A and B, as LoRA and LIFT adapt them), and 1x1 convolutions. A is
Kaiming-uniform and B zero, so the model is unchanged at step 0. Reading the weight gives
the adapted one, so every code path that uses the layer (open_clip's attention, tinlt's
class-token shortcut, ONNX tracing) sees the update; :func:`merge` writes it into the
weight for good (exact), which is what an export does.

Why not Hugging Face peft: its LoRA for ``nn.MultiheadAttention`` adapts the fused q/k/v
projection and the output projection together ("no way to specify only one of them"),
and merges/unmerges the weights around every forward; open_clip's towers use exactly that
module. peft's Linear LoRA is the reference our tests compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...config import register_validator
from ...errors import TinltError
from .registry import TuneContext, register_method

TARGETS = ("q", "k", "v", "o", "mlp", "conv1x1")


@dataclass
class LoraKeys:
    rank: int = 8  # lora
    alpha: float = 16.0  # lora: the update is scaled by alpha / rank
    targets: List[str] = field(default_factory=lambda: ["q", "v"])  # lora: q k v o (attention), mlp, conv1x1


class LoRAUpdate(nn.Module):
    """The low-rank update of one weight, on the given row ranges (all rows when None)."""

    def __init__(self, weight: torch.Tensor, rows: Sequence[Optional[slice]], rank: int, alpha: float) -> None:
        super().__init__()
        out, fan_in = weight.shape[0], int(weight[0].numel())
        self.shape = tuple(weight.shape)
        self.rows = [r if r is not None else slice(0, out) for r in rows]
        self.scale = float(alpha) / int(rank)
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        for r in self.rows:
            a = torch.empty(rank, fan_in, dtype=weight.dtype, device=weight.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.A.append(nn.Parameter(a))
            self.B.append(nn.Parameter(torch.zeros(r.stop - r.start, rank, dtype=weight.dtype, device=weight.device)))

    def delta(self) -> torch.Tensor:
        out = self.shape[0]
        pieces, at = [], 0
        for r, a, b in sorted(zip(self.rows, self.A, self.B), key=lambda t: t[0].start):
            if r.start > at:
                pieces.append(a.new_zeros(r.start - at, a.shape[1]))
            pieces.append(b @ a)
            at = r.stop
        if at < out:
            pieces.append(self.A[0].new_zeros(out - at, self.A[0].shape[1]))
        return (torch.cat(pieces) * self.scale).reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def add_lora(module: nn.Module, name: str, rows: Sequence[Optional[slice]], rank: int, alpha: float) -> LoRAUpdate:
    update = LoRAUpdate(getattr(module, name).detach(), rows, rank, alpha)
    parametrize.register_parametrization(module, name, update)
    return update


def merge(model: nn.Module) -> int:
    """Write every parametrization (LoRA, SSF) into its weight; returns how many were merged."""
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                merged += 1
    return merged


def _check_targets(cfg) -> None:
    for key in ("tune_image", "tune_text"):
        bad = [t for t in list(cfg.model[key].get("targets") or []) if t not in TARGETS]
        if bad:
            raise TinltError(f"config key 'model.{key}.targets': {bad[0]!r}; expected some of: {', '.join(TARGETS)}")


register_validator(_check_targets)


@register_method("lora", keys=LoraKeys)
def lora(ctx: TuneContext):
    rank, alpha = int(ctx.get("rank", 8)), float(ctx.get("alpha", 16.0))
    if rank < 1:
        raise TinltError(f"config key '{ctx.where}.rank' must be >= 1, got {rank}")
    targets = list(ctx.get("targets", ["q", "v"]))
    family = ctx.parts.family
    updates = []
    if family.kind == "conv":
        if targets != ["conv1x1"]:
            raise TinltError(f"config key '{ctx.where}.targets': a convolutional tower takes [conv1x1], got {targets}")
        for b in ctx.blocks:
            updates += [add_lora(c, "weight", [None], rank, alpha) for c in family.pointwise_convs(b)]
    else:
        if "conv1x1" in targets:
            raise TinltError(f"config key '{ctx.where}.targets': conv1x1 is for convolutional towers")
        for b in ctx.blocks:
            by_tensor: dict = {}
            for module, name, rows in family.attention_targets(b, targets):
                by_tensor.setdefault((id(module), name), (module, name, []))[2].append(rows)
            updates += [add_lora(m, n, rows, rank, alpha) for m, n, rows in by_tensor.values()]
    if not updates:
        raise TinltError(f"config key '{ctx.where}.targets' = {targets}: nothing to adapt in this tower")
    return [p for u in updates for p in u.parameters()]
