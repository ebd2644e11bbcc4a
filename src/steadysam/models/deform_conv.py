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


def deform_columns(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Modulated bilinear samples of every kernel tap (the DCNv2 "im2col").

    Arguments:
      x (Tensor): B x Cin x H x W (any memory format).
      offset (Tensor): B x 2K x Ho x Wo, K = kh * kw; channel 2k = dy, 2k + 1 = dx of tap k.
      mask (Tensor): B x K x Ho x Wo.

    Returns:
      (Tensor): B x (Cin * K) x (Ho * Wo) columns, Cin-major, ready for weight.view(Cout, -1) @ .
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
    # Sample positions in at least fp32: half precision cannot hold fractional pixel positions.
    dev, dt = x.device, torch.promote_types(offset.dtype, torch.float32)
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dw).repeat(kh)
    off = offset.reshape(b, k, 2, ho, wo)
    py = off[:, :, 0] + (tap_y.view(k, 1, 1) + (torch.arange(ho, device=dev) * sh - ph).view(1, ho, 1))
    px = off[:, :, 1] + (tap_x.view(k, 1, 1) + (torch.arange(wo, device=dev) * sw - pw).view(1, 1, wo))
    # mmcv / torchvision return 0 (and no gradient) for samples at or beyond one pixel outside;
    # grid_sample alone would still differentiate the in-range corner at exactly y = -1 or x = -1.
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    grid = torch.stack(((2 * px + 1) / w - 1, (2 * py + 1) / h - 1), dim=-1)
    cols = F.grid_sample(
        x,
        grid.view(b, k, ho * wo, 2).to(x.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # B, Cin, K, Ho*Wo
    mod = (mask.reshape(b, 1, k, ho * wo) * inside.view(b, 1, k, ho * wo)).to(cols.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or offset.requires_grad or mask.requires_grad):
        cols = cols * mod
    else:
        cols.mul_(mod)  # saves a full-size temporary at inference
    return cols.view(b, cin * k, ho * wo)


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
    cout = weight.shape[0]
    ho, wo = offset.shape[-2:]
    cols = deform_columns(x, offset, mask, tuple(weight.shape[2:]), stride, padding, dilation)
    # bmm with a broadcast kernel: torch.matmul would fold the batch and copy the columns.
    out = torch.bmm(weight.reshape(1, cout, -1).expand(cols.shape[0], -1, -1), cols)
    if bias is not None:
        out = out + bias.view(1, cout, 1)
    return out.view(x.shape[0], cout, ho, wo)


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
