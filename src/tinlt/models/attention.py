"""TIN's visual attention: large-kernel attention (LKA) on a tower's last feature map.

LKA (Guo et al., "Visual Attention Network", 2022) decomposes a 21x21 receptive field
into a 5x5 depthwise conv, a 7x7 depthwise conv with dilation 3 and a 1x1 conv; the
result multiplies the input element-wise (no softmax). ``GatedAttention`` adds it as a
residual behind a zero-initialised scalar gate, so a pretrained tower is unchanged at
step 0 and the attention fades in as the gate learns.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def _reach(size: int, kernel: int, dilation: int) -> int:
    """Taps each side of the centre that can land on a ``size``-pixel axis: a tap
    ``dilation * j`` away lies in the zero padding from every output pixel once
    ``dilation * j >= size``."""
    return min((kernel - 1) // 2, (size - 1) // dilation)


def depthwise_conv_cropped(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a same-padded depthwise conv, skipping the kernel taps that only
    ever see padding (a 7x7 kernel with dilation 3 on CLIP's 7x7 map keeps 5x5 of them).
    Exact: the dropped taps multiply zeros; their weights get zero gradient either way."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    rh, rw = _reach(x.shape[-2], k, d), _reach(x.shape[-1], k, d)
    c = (k - 1) // 2
    if (rh == c and rw == c) or torch.onnx.is_in_onnx_export():  # the TorchScript exporter needs static kernels
        return conv(x)
    weight = conv.weight[:, :, c - rh:c + rh + 1, c - rw:c + rw + 1]
    return F.conv2d(x, weight, conv.bias, padding=(d * rh, d * rw), dilation=d, groups=conv.groups)


# Maps up to this many pixels run both depthwise convs as one (HW x HW) matrix per channel
# on CPU: CLIP's 7x7 and the demo's 2x2 maps. PyTorch's CPU depthwise kernels reach only
# 1-2 GFLOP/s there; a batched matmul does the same sums 1.4-2.6x faster (LKA forward +
# backward, measured). Larger maps, GPUs, ONNX export and torch.compile use the convolutions.
MATRIX_MAX_PIXELS = 64


@functools.lru_cache(maxsize=64)
def _tap_positions(h: int, w: int, kernel: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For a same-padded ``kernel``x``kernel`` conv with ``dilation`` on an h x w map: every
    (tap, output pixel, input pixel) it connects, as tap indices and flat (out * hw + in)."""
    c = (kernel - 1) // 2
    oy, ox = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    taps, flat = [], []
    for i in range(kernel):
        for j in range(kernel):
            iy, ix = oy + dilation * (i - c), ox + dilation * (j - c)
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            out_px, in_px = (oy * w + ox)[ok], (iy * w + ix)[ok]
            taps.append(torch.full_like(out_px, i * kernel + j))
            flat.append(out_px * (h * w) + in_px)
    return torch.cat(taps), torch.cat(flat)


def depthwise_matrix(conv: nn.Conv2d, h: int, w: int) -> torch.Tensor:
    """(C, hw, hw): out[c] = M[c] @ in[c] + bias[c] is ``conv`` (depthwise, same padding) on
    an h x w map. Differentiable in the conv's weight."""
    channels, k, d = conv.weight.shape[0], conv.kernel_size[0], conv.dilation[0]
    taps, flat = _tap_positions(h, w, k, d)
    weight = conv.weight.reshape(channels, k * k)
    taps, flat = taps.to(weight.device), flat.to(weight.device)
    matrix = weight.new_zeros(channels, h * w * h * w).index_copy(1, flat, weight[:, taps])
    return matrix.view(channels, h * w, h * w)


class LargeKernelAttention(nn.Module):
    """attn = conv1x1(dwconv7x7_dil3(dwconv5x5(x))); out = attn * x. Shape-preserving.

    On maps smaller than a kernel's reach (7x7 at 224 px for CLIP, 2x2 at 64 px for the
    offline tower) the depthwise convs run only the taps that can touch the map; on CPU,
    maps up to MATRIX_MAX_PIXELS run them as per-channel matrices instead.
    """

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
        h, w = x.shape[-2:]
        if (x.device.type == "cpu" and h * w <= MATRIX_MAX_PIXELS and not torch.onnx.is_in_onnx_export()
                and not torch.compiler.is_compiling()):  # compilers pick their own conv kernels
            spatial = self._depthwise_pair_as_matrix(x)
        else:
            spatial = depthwise_conv_cropped(depthwise_conv_cropped(x, self.conv0), self.conv_spatial)
        return self.conv1(spatial) * x

    def _depthwise_pair_as_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """conv_spatial(conv0(x)) as one per-channel linear map: both are depthwise and linear,
        so M = M_spatial @ M_0, and conv0's bias enters as b0 * (row sums of M_spatial)."""
        b, c, h, w = x.shape
        m0, ms = depthwise_matrix(self.conv0, h, w), depthwise_matrix(self.conv_spatial, h, w)
        bias = self.conv0.bias[:, None] * ms.sum(dim=-1) + self.conv_spatial.bias[:, None]  # (C, hw)
        y = torch.einsum("bci,coi->bco", x.reshape(b, c, h * w), torch.bmm(ms, m0)) + bias
        return y.view(b, c, h, w)


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
