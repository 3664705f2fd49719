"""TIN's visual attention: large-kernel attention (LKA) on a tower's last feature map.

LKA (Guo et al., "Visual Attention Network", 2022) decomposes a 21x21 receptive field
into a 5x5 depthwise conv, a 7x7 depthwise conv with dilation 3 and a 1x1 conv; the
result multiplies the input element-wise (no softmax). ``GatedAttention`` adds it as a
residual behind a zero-initialised scalar gate, so a pretrained tower is unchanged at
step 0 and the attention fades in as the gate learns.
"""

from __future__ import annotations

import torch
from torch import nn


class LargeKernelAttention(nn.Module):
    """attn = conv1x1(dwconv7x7_dil3(dwconv5x5(x))); out = attn * x. Shape-preserving."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"LargeKernelAttention needs channels >= 1, got {channels}")
        self.channels = channels
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=5, padding=2, groups=channels)
        # 7x7 with dilation 3 spans 19 pixels; padding 9 keeps the size
        self.conv_spatial = nn.Conv2d(channels, channels, kernel_size=7, padding=9, dilation=3, groups=channels)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.conv1(self.conv_spatial(self.conv0(x)))
        return attn * x


class GatedAttention(nn.Module):
    """out = x + gate * LKA(x), with a learnable scalar gate (0 at init: identity).

    The LKA weights keep PyTorch's default init so that d(out)/d(gate) = LKA(x) is
    non-zero at step 0; the gate is what lets the attention switch on.
    """

    def __init__(self, channels: int, gate_init: float = 0.0):
        super().__init__()
        self.lka = LargeKernelAttention(channels)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate.to(x.dtype) * self.lka(x)
