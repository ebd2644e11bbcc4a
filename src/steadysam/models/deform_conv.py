"""Modulated deformable convolution (DCNv2) in plain PyTorch.

Drop-in for mmcv's / torchvision's ``ModulatedDeformConv2d`` (groups = deform_groups = 1): same
offset layout, same zero contribution of samples outside the input, no compiled ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


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
      x (Tensor): B x Cin x H x W input.
      offset (Tensor): B x 2K x Ho x Wo with K = kh * kw; channel 2k is the row offset (dy) and
        2k + 1 the column offset (dx) of kernel tap k (taps in row-major order), as in mmcv and
        torchvision.
      mask (Tensor): B x K x Ho x Wo modulation of each tap (already passed through a sigmoid).
      weight (Tensor): Cout x Cin x kh x kw.
      bias (Tensor or None): Cout.

    Returns:
      (Tensor): B x Cout x Ho x Wo.

    Samples are bilinear; each of the four neighbours contributes only when it lies inside the
    input (zero outside), and a sample with y <= -1, y >= H, x <= -1 or x >= W reads exactly zero
    with zero gradient, matching the mmcv / torchvision kernels also at those boundaries.
    """
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape != (b, 2 * kh * kw, ho, wo) or mask.shape != (b, kh * kw, ho, wo):
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not match "
            f"({b}, {2 * kh * kw} / {kh * kw}, {ho}, {wo})"
        )
    # Lay the K samples of every output pixel out as a kh x kw tile of a (kh*Ho) x (kw*Wo) image,
    # so that an ordinary strided convolution with the same weight performs the contraction.
    off = offset.reshape(b, kh, kw, 2, ho, wo).permute(0, 4, 1, 5, 2, 3)  # B, Ho, kh, Wo, kw, 2
    # Sample positions in at least fp32: half precision cannot hold fractional pixel positions.
    dev, dt = x.device, torch.promote_types(offset.dtype, torch.float32)
    base_y = (torch.arange(ho, device=dev, dtype=dt) * sh - ph).view(ho, 1, 1, 1)
    base_y = base_y + (torch.arange(kh, device=dev, dtype=dt) * dh).view(1, kh, 1, 1)
    base_x = (torch.arange(wo, device=dev, dtype=dt) * sw - pw).view(1, 1, wo, 1)
    base_x = base_x + (torch.arange(kw, device=dev, dtype=dt) * dw).view(1, 1, 1, kw)
    py = base_y + off[..., 0]  # B, Ho, kh, Wo, kw
    px = base_x + off[..., 1]
    # mmcv / torchvision return 0 (and no gradient) for samples at or beyond one pixel outside;
    # grid_sample alone would still differentiate the in-range corner at exactly y = -1 or x = -1.
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1).to(x.dtype)
    cols = F.grid_sample(
        x,
        grid.reshape(b, ho * kh, wo * kw, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    mod = mask.reshape(b, kh, kw, ho, wo).permute(0, 3, 1, 4, 2) * inside
    cols = cols * mod.reshape(b, 1, ho * kh, wo * kw).to(cols.dtype)
    return F.conv2d(cols, weight, bias, stride=(kh, kw))


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
        """x: B x Cin x H x W, offset: B x 2K x Ho x Wo, mask: B x K x Ho x Wo -> B x Cout x Ho x Wo."""
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )
