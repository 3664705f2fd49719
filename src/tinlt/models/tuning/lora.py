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
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize


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
