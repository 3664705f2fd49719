"""LargeKernelAttention / GatedAttention against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinlt.models.attention import GatedAttention, LargeKernelAttention


def _depthwise_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int, dil: int) -> np.ndarray:
    """Plain loops: out[c, y, x] = b[c] + sum_ij w[c, i, j] * xpad[c, y + dil*i, x + dil*j]."""
    c, h, wd = x.shape
    k = w.shape[-1]
    xp = np.zeros((c, h + 2 * pad, wd + 2 * pad), dtype=np.float64)
    xp[:, pad:pad + h, pad:pad + wd] = x
    out = np.zeros((c, h, wd), dtype=np.float64)
    for ch in range(c):
        for yy in range(h):
            for xx in range(wd):
                acc = b[ch]
                for i in range(k):
                    for j in range(k):
                        acc += w[ch, i, j] * xp[ch, yy + dil * i, xx + dil * j]
                out[ch, yy, xx] = acc
    return out


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 5, 7), (3, 2, 1, 1), (1, 1, 16, 3)])
def test_lka_preserves_shape(shape):
    lka = LargeKernelAttention(shape[1])
    assert lka(torch.randn(shape)).shape == shape


def test_lka_layer_definitions():
    lka = LargeKernelAttention(6)
    c0, cs, c1 = lka.conv0, lka.conv_spatial, lka.conv1
    assert (c0.kernel_size, c0.padding, c0.dilation, c0.groups) == ((5, 5), (2, 2), (1, 1), 6)
    assert (cs.kernel_size, cs.padding, cs.dilation, cs.groups) == ((7, 7), (9, 9), (3, 3), 6)
    assert (c1.kernel_size, c1.groups, c1.in_channels, c1.out_channels) == ((1, 1), 1, 6, 6)


def test_lka_matches_functional_convs():
    torch.manual_seed(0)
    lka = LargeKernelAttention(5)
    x = torch.randn(2, 5, 11, 9)
    a = F.conv2d(x, lka.conv0.weight, lka.conv0.bias, padding=2, groups=5)
    a = F.conv2d(a, lka.conv_spatial.weight, lka.conv_spatial.bias, padding=9, dilation=3, groups=5)
    a = F.conv2d(a, lka.conv1.weight, lka.conv1.bias)
    torch.testing.assert_close(lka(x), a * x, rtol=0, atol=1e-6)


def test_lka_matches_loop_reference():
    torch.manual_seed(1)
    c = 3
    lka = LargeKernelAttention(c).double()
    x = torch.randn(1, c, 6, 7, dtype=torch.float64)
    xn = x[0].numpy()
    a = _depthwise_reference(xn, lka.conv0.weight[:, 0].detach().numpy(), lka.conv0.bias.detach().numpy(), 2, 1)
    a = _depthwise_reference(
        a, lka.conv_spatial.weight[:, 0].detach().numpy(), lka.conv_spatial.bias.detach().numpy(), 9, 3
    )
    w1 = lka.conv1.weight[:, :, 0, 0].detach().numpy()
    a = np.einsum("oc,chw->ohw", w1, a) + lka.conv1.bias.detach().numpy()[:, None, None]
    expected = a * xn
    np.testing.assert_allclose(lka(x)[0].detach().numpy(), expected, rtol=1e-10, atol=1e-10)


def test_lka_single_channel_delta_kernels():
    lka = LargeKernelAttention(1)
    with torch.no_grad():
        lka.conv0.weight.zero_()
        lka.conv0.weight[0, 0, 2, 2] = 1.0  # centre tap: identity
        lka.conv0.bias.zero_()
        lka.conv_spatial.weight.zero_()
        # tap (3, 4) reads input at (y + 3*3 - 9, x + 3*4 - 9) = (y, x + 3)
        lka.conv_spatial.weight[0, 0, 3, 4] = 1.0
        lka.conv_spatial.bias.zero_()
        lka.conv1.weight.fill_(2.0)
        lka.conv1.bias.fill_(0.5)
    x = torch.arange(1.0, 1.0 + 4 * 6).reshape(1, 1, 4, 6)
    shifted = torch.zeros_like(x)
    shifted[..., :, :3] = x[..., :, 3:]  # x[y, x+3], zero beyond the border
    expected = x * (2.0 * shifted + 0.5)
    assert torch.equal(lka(x), expected)
    # e.g. top-left pixel: 1 * (2 * 4 + 0.5)
    assert lka(x)[0, 0, 0, 0].item() == 8.5
    assert lka(x)[0, 0, 0, 5].item() == 6 * 0.5


def test_gated_attention_is_identity_at_init_and_gate_learns():
    torch.manual_seed(2)
    gated = GatedAttention(4)
    assert isinstance(gated.gate, torch.nn.Parameter) and gated.gate.item() == 0.0
    x = torch.randn(2, 4, 6, 6)
    out = gated(x)
    assert torch.equal(out, x)

    r = torch.randn_like(x)
    (out * r).sum().backward()
    with torch.no_grad():
        expected_gate_grad = (r * gated.lka(x)).sum()
    assert gated.gate.grad is not None and gated.gate.grad.abs().item() > 0
    torch.testing.assert_close(gated.gate.grad, expected_gate_grad, rtol=1e-5, atol=1e-6)
    # behind a zero gate the LKA weights receive exactly zero gradient at step 0
    assert torch.count_nonzero(gated.lka.conv0.weight.grad) == 0


def test_gated_attention_nonzero_gate():
    torch.manual_seed(3)
    gated = GatedAttention(3, gate_init=0.25)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(gated(x), x + 0.25 * gated.lka(x))


def test_lka_rejects_zero_channels():
    with pytest.raises(ValueError):
        LargeKernelAttention(0)


@pytest.mark.parametrize("hw", [(7, 7), (2, 2), (1, 1), (3, 10), (20, 20), (9, 9)])
def test_small_map_paths_give_the_full_convolutions_output_and_gradients(hw):
    # up to 64 pixels: per-channel matrices; above: convs that skip taps only seeing padding.
    # Outputs and all gradients must equal the plain convolutions.
    torch.manual_seed(2)
    c = 4
    lka = LargeKernelAttention(c).double()
    x = torch.randn(2, c, *hw, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    w0, ws, w1 = lka.conv0.weight, lka.conv_spatial.weight, lka.conv1.weight
    b0, bs = lka.conv0.bias, lka.conv_spatial.bias
    ref = F.conv2d(x2, w0, b0, padding=2, groups=c)
    ref = F.conv2d(ref, ws, bs, padding=9, dilation=3, groups=c)
    ref = F.conv2d(ref, w1, lka.conv1.bias) * x2
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (x2, w0, ws, w1, b0, bs), g)
    out = lka(x)
    grads = torch.autograd.grad(out, (x, w0, ws, w1, b0, bs), g)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if hw == (7, 7):  # the outer ring of the dilated 7x7 kernel never touches a 7x7 map
        assert grads[2][:, :, 0].abs().max() == 0 and grads[2][:, :, 1:-1, 1:-1].abs().min() > 0


def test_matrix_of_a_depthwise_conv_by_hand():
    # 1 channel, 3x3 kernel, a 2x2 map: output pixel o sums w[tap] * in[o + offset(tap)]
    from tinlt.models.attention import depthwise_matrix

    conv = torch.nn.Conv2d(1, 1, 3, padding=1, groups=1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 10.0).view(1, 1, 3, 3))  # w[i, j] = 3 i + j + 1
    m = depthwise_matrix(conv, 2, 2)[0]
    # pixels 0 (0,0), 1 (0,1), 2 (1,0), 3 (1,1); tap (i, j) reads offset (i - 1, j - 1)
    expected = torch.tensor([[5.0, 6, 8, 9], [4, 5, 7, 8], [2, 3, 5, 6], [1, 2, 4, 5]])
    torch.testing.assert_close(m, expected)
