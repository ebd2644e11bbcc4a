"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Drop-in for mmcv's / torchvision's ``ModulatedDeformConv2d`` (groups = deform_groups = 1): same
offset layout, same zero contribution of samples outside the input, no compiled ops.

The bilinear sample of a tap is a weighted sum of four rows of the channels-last input, i.e. an
``embedding_bag`` with per-sample weights (modulation folded in); one matmul then contracts the
columns with the kernel. Both are differentiable in every input, offsets included.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import fused_linear


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_columns(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Modulated bilinear samples of every kernel tap (the DCNv2 "im2col"), channels last.

    Arguments:
      x (torch.Tensor): B x Cin x H x W; channels-last memory avoids a copy.
      offset (torch.Tensor): B x 2K x Ho x Wo, K = kh * kw; channel 2k = dy, 2k + 1 = dx of
        tap k.
      mask (torch.Tensor): B x K x Ho x Wo.

    Returns:
      (torch.Tensor): (B * Ho * Wo) x (K * Cin) columns, rows in (b, i, j) order, columns
        (k, c), so that F.linear(cols, weight.permute(0, 2, 3, 1).reshape(Cout, -1)) is the
        convolution.
    """
    b, cin, h, w = x.shape
    kh, kw = kernel_size
    k = kh * kw
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape != (b, 2 * k, ho, wo) or mask.shape != (b, k, ho, wo):
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not match "
            f"({b}, {2 * k} / {k}, {ho}, {wo})"
        )
    dev = x.device
    # Positions in at least fp32: half precision cannot hold fractional pixel positions.
    dt = torch.promote_types(offset.dtype, torch.float32)
    off = offset.to(dt).reshape(b, k, 2, ho, wo).permute(0, 3, 4, 1, 2)  # B, Ho, Wo, K, 2
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).repeat(kh)
    py = off[..., 0] + (tap_y + (torch.arange(ho, device=dev) * sh - ph).view(ho, 1, 1))
    px = off[..., 1] + (tap_x + (torch.arange(wo, device=dev) * sw - pw).view(wo, 1))
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    # mmcv / torchvision read exactly 0 (and pass no gradient) at or beyond one pixel outside.
    m = mask.to(dt).permute(0, 2, 3, 1) * ((py > -1) & (py < h) & (px > -1) & (px < w))
    base = (torch.arange(b, device=dev) * (h * w)).view(b, 1, 1, 1)
    idx, wgt = [], []
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)  # each corner only if inside
            idx.append(base + (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long())
            wgt.append(wy * wx * ok * m)
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, cin)
    idx4, wgt4 = torch.stack(idx, -1).view(-1, 4), torch.stack(wgt, -1).view(-1, 4).to(x.dtype)
    if fast_paths_enabled():
        # A weighted bag of the 4 corner rows per sample: contiguous row reads, modulation
        # included, no (samples x 4 x Cin) intermediate.
        cols = F.embedding_bag(idx4, rows, per_sample_weights=wgt4, mode="sum")
    else:
        cols = (rows[idx4] * wgt4[..., None]).sum(1)  # the same sum, as plain gathers
    return cols.view(b * ho * wo, k * cin)


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """DCNv2: y[o, p] = sum_{c, k} W[o, c, k] * m_k(p) * x_c(p0 + p_k + d_k(p)) (+ bias[o]).

    Arguments:
      x (torch.Tensor): B x Cin x H x W input.
      offset (torch.Tensor): B x 2K x Ho x Wo with K = kh * kw; channel 2k is the row offset
        (dy) and 2k + 1 the column offset (dx) of kernel tap k (taps in row-major order), as in
        mmcv and torchvision.
      mask (torch.Tensor): B x K x Ho x Wo modulation of each tap (already passed through a
        sigmoid).
      weight (torch.Tensor): Cout x Cin x kh x kw.
      bias (torch.Tensor or None): Cout.

    Returns:
      (torch.Tensor): B x Cout x Ho x Wo, in channels-last memory format.

    Samples are bilinear; each of the four neighbours contributes only when it lies inside the
    input (zero outside), and a sample with y <= -1, y >= H, x <= -1 or x >= W reads exactly zero
    with zero gradient, matching the mmcv / torchvision kernels also at those boundaries.
    """
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    cols = deform_columns(x, offset, mask, (kh, kw), stride, padding, dilation)
    out = fused_linear(cols, weight.permute(0, 2, 3, 1).reshape(cout, -1), bias)
    return out.view(x.shape[0], ho, wo, cout).permute(0, 3, 1, 2)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer holding only the kernel (and an optional bias); offsets and the modulation mask
    are inputs, as in mmcv's ``ModulatedDeformConv2d`` (groups = deform_groups = 1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
    ) -> None:
        """
        Arguments:
          in_channels (int): the number of input channels Cin
          out_channels (int): the number of output channels Cout
          kernel_size (int or tuple(int, int)): the kernel size (kh, kw); K = kh * kw taps
          stride (int or tuple(int, int)): the stride, in input pixels
          padding (int or tuple(int, int)): the zero padding of the input, in pixels
          dilation (int or tuple(int, int)): the spacing between kernel taps, in pixels
          bias (bool): if True, a learnable output bias (FocSAM's layer has none)
        """
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same default as nn.Conv2d; FocSAM overrides it with its own MSRA-style fill.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): the input, B x Cin x H x W
          offset (torch.Tensor): B x 2K x Ho x Wo, in input pixels; channel 2k is the row
            offset (dy) and 2k + 1 the column offset (dx) of tap k (row-major taps)
          mask (torch.Tensor): the modulation of each tap, B x K x Ho x Wo (already through a
            sigmoid)

        Returns:
          torch.Tensor: B x Cout x Ho x Wo, channels-last memory
        """
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )
