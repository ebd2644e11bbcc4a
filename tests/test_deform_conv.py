"""modulated_deform_conv2d against a literal per-pixel evaluation of the DCNv2 formula."""

import math

import pytest
import torch

from steadysam.models.deform_conv import ModulatedDeformConv2d, modulated_deform_conv2d


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img: C x H x W; mmcv/torchvision rule: zero beyond one pixel outside, each of the four
    neighbours counted only if it lies inside."""
    _, h, w = img.shape
    val = torch.zeros(img.shape[0], dtype=img.dtype)
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return val
    y0, x0 = math.floor(y), math.floor(x)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:
                val = val + (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[:, yy, xx]
    return val


def naive_mdcn(x, offset, mask, weight, bias, stride, padding, dilation):
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(b, cout, ho, wo, dtype=x.dtype)
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                acc = torch.zeros(cout, dtype=x.dtype)
                for k in range(kh * kw):
                    a, c = divmod(k, kw)
                    y = i * stride - padding + a * dilation + offset[n, 2 * k, i, j].item()
                    xx = j * stride - padding + c * dilation + offset[n, 2 * k + 1, i, j].item()
                    v = _bilinear(x[n], y, xx) * mask[n, k, i, j]
                    acc = acc + weight[:, :, a, c] @ v
                out[n, :, i, j] = acc + (bias if bias is not None else 0)
    return out


def _inputs(b, cin, cout, h, w, k, stride, padding, dilation, scale, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    x = torch.randn(b, cin, h, w, generator=g, dtype=dtype)
    offset = torch.randn(b, 2 * k * k, ho, wo, generator=g, dtype=dtype) * scale
    mask = torch.rand(b, k * k, ho, wo, generator=g, dtype=dtype)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=dtype)
    bias = torch.randn(cout, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias


@pytest.mark.parametrize(
    "stride,padding,dilation,k",
    [(1, 1, 1, 3), (2, 1, 1, 3), (1, 0, 1, 3), (1, 2, 2, 3), (2, 3, 2, 3), (1, 1, 1, 2)],
)
def test_matches_naive_formula(stride, padding, dilation, k):
    # Offsets of std 3 on a 5 x 6 input: many samples fall partly or wholly outside.
    args = _inputs(2, 3, 4, 5, 6, k, stride, padding, dilation, scale=3.0)
    x, offset, mask, weight, bias = args
    ref = naive_mdcn(x, offset, mask, weight, bias, stride, padding, dilation)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out_nb = modulated_deform_conv2d(x, offset, mask, weight, None, stride, padding, dilation)
    torch.testing.assert_close(out_nb, ref - bias.view(1, -1, 1, 1), rtol=1e-10, atol=1e-10)


def test_samples_mostly_outside_and_zero_offsets():
    x, offset, mask, weight, _ = _inputs(1, 2, 3, 4, 4, 3, 1, 1, 1, scale=6.0, seed=1)
    ref = naive_mdcn(x, offset, mask, weight, None, 1, 1, 1)
    out = modulated_deform_conv2d(x, offset, mask, weight)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # Zero offsets and unit mask: an ordinary convolution (borders at exactly -1 / H included).
    conv = torch.nn.functional.conv2d(x, weight, padding=1)
    out0 = modulated_deform_conv2d(x, torch.zeros_like(offset), torch.ones_like(mask), weight)
    torch.testing.assert_close(out0, conv, rtol=1e-10, atol=1e-10)
    # Integer offsets: a shifted convolution with zero fill.
    shift = torch.zeros_like(offset)
    shift[:, 0::2] = 1.0  # dy = +1 for every tap
    ref_shift = naive_mdcn(x, shift, torch.ones_like(mask), weight, None, 1, 1, 1)
    out_shift = modulated_deform_conv2d(x, shift, torch.ones_like(mask), weight)
    torch.testing.assert_close(out_shift, ref_shift, rtol=1e-10, atol=1e-10)


def test_offset_channel_layout_is_dy_then_dx():
    # A single tap (the centre, k = 4) with dy = 1: output row i reads input row i + 1.
    x = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0
    offset = torch.zeros(1, 18, 4, 4, dtype=torch.float64)
    offset[:, 8] = 1.0  # channel 2k = dy
    out = modulated_deform_conv2d(x, offset, torch.ones(1, 9, 4, 4, dtype=torch.float64), weight)
    expected = torch.cat([x[..., 1:, :], torch.zeros_like(x[..., :1, :])], dim=2)
    torch.testing.assert_close(out, expected)
    offset = torch.zeros_like(offset)
    offset[:, 9] = 0.5  # channel 2k + 1 = dx
    out = modulated_deform_conv2d(x, offset, torch.ones(1, 9, 4, 4, dtype=torch.float64), weight)
    right = torch.cat([x[..., 1:], torch.zeros_like(x[..., :1])], dim=3)
    torch.testing.assert_close(out, (x + right) / 2)


def test_zero_mask_gives_bias_only():
    x, offset, mask, weight, bias = _inputs(2, 3, 4, 5, 5, 3, 1, 1, 1, scale=2.0, seed=2)
    out = modulated_deform_conv2d(x, offset, torch.zeros_like(mask), weight, bias)
    torch.testing.assert_close(out, bias.view(1, -1, 1, 1).expand_as(out))
    # Zeroing one tap equals dropping that tap from the formula.
    mask[:, 4] = 0
    ref = naive_mdcn(x, offset, mask, weight, bias, 1, 1, 1)
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, mask, weight, bias), ref)


def test_float32_close_to_float64():
    x, offset, mask, weight, bias = _inputs(2, 8, 8, 9, 7, 3, 1, 1, 1, scale=2.5, seed=3)
    ref = modulated_deform_conv2d(x, offset, mask, weight, bias)
    out = modulated_deform_conv2d(
        x.float(), offset.float(), mask.float(), weight.float(), bias.float()
    )
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-4)


def test_gradcheck():
    x, offset, mask, weight, bias = _inputs(1, 2, 2, 4, 4, 3, 1, 1, 1, scale=1.5, seed=4)
    args = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, stride=1, padding=1, dilation=1), args
    )
    args = [t.clone().requires_grad_() for t in _inputs(1, 2, 3, 5, 4, 3, 2, 2, 2, 2.0, seed=5)]
    assert torch.autograd.gradcheck(
        lambda *a: modulated_deform_conv2d(*a, stride=2, padding=2, dilation=2), args
    )


def test_no_offset_gradient_at_one_pixel_outside():
    # mmcv's kernels treat y <= -1 as fully outside, also in the backward pass: with zero offsets
    # the top-row taps of output row 0 sit at exactly y = -1 and get no offset gradient, while
    # the same taps one row lower (y = 0) do.
    x = torch.rand(1, 2, 4, 4, dtype=torch.float64) + 1
    weight = torch.rand(3, 2, 3, 3, dtype=torch.float64)
    offset = torch.zeros(1, 18, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 9, 4, 4, dtype=torch.float64)
    modulated_deform_conv2d(x, offset, mask, weight).sum().backward()
    for k in range(3):  # taps of the top kernel row
        assert torch.all(offset.grad[0, 2 * k, 0] == 0)
        assert torch.all(offset.grad[0, 2 * k, 1, 1:3] != 0)  # columns clear of x = -1, W


def test_module_state_dict_and_forward():
    m = ModulatedDeformConv2d(4, 5, 3, padding=1)
    assert set(m.state_dict()) == {"weight"}
    assert m.weight.shape == (5, 4, 3, 3)
    mb = ModulatedDeformConv2d(4, 5, 3, padding=1, bias=True)
    assert set(mb.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 4, 6, 6)
    offset, mask = torch.randn(2, 18, 6, 6), torch.rand(2, 9, 6, 6)
    torch.testing.assert_close(
        m(x, offset, mask), modulated_deform_conv2d(x, offset, mask, m.weight)
    )
    # Non-contiguous offset (a channel slice of a larger conv output), as FocSAM feeds it.
    om = torch.randn(2, 27, 6, 6).contiguous(memory_format=torch.channels_last)
    ref = modulated_deform_conv2d(x, om[:, :18].contiguous(), om[:, 18:].sigmoid(), m.weight)
    torch.testing.assert_close(m(x, om[:, :18], om[:, 18:].sigmoid()), ref)
