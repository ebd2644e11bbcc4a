"""Stable-SAM's deformable sampling plugin (DSP): image features resampled at learned offsets.

The offset network is the DAT offset generator (Xia et al., CVPR 2022) at stride 1, drawn in
Stable-SAM's final figure: 1x1 conv -> x*, depthwise k x k conv + LayerNorm + GELU, 1x1 conv
to 2 channels = one (dx, dy) offset per embedding cell. x* is also the map that is sampled
(the figure's x*_{p+Δp}; the learnable projection is what rescales feature "amplitudes").
Design choices the paper leaves open are documented in docs/stable-sam.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import fused_linear


class DeformableSampling(nn.Module):
    """Offset network + bilinear resampling of B x hw x C image tokens.

    Arguments:
        dim: channel width C (the decoder's transformer width).
        kernel_size: depthwise convolution size (5 in the paper's figure).
        sample_source: ``projected`` samples x* = proj(x) (final figure); ``raw`` samples x
            itself and uses the projection only inside the offset network (arXiv v1 figure).
        offset_range: None for unbounded offsets; R bounds them to R * tanh(.) cells.

    Initialisation makes it the identity: ``proj`` is the identity matrix and the last offset
    layer is zero, so offsets are 0 and every sample lands exactly on its own cell centre.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 5,
        sample_source: str = "projected",
        offset_range: float | None = None,
    ) -> None:
        super().__init__()
        # 1x1 convolutions on a channels-last map are Linears on its tokens (same parameters).
        self.proj = nn.Linear(dim, dim)
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()
        self.offset = nn.Linear(dim, 2)
        self.sample_source = sample_source
        self.offset_range = offset_range
        self._grids: dict[tuple, torch.Tensor] = {}
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()
            self.offset.weight.zero_()
            self.offset.bias.zero_()

    def offsets(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """B x hw x C tokens -> (x* B x hw x C, offsets B x h x w x 2 in cells, (dx, dy))."""
        b, n, c = x.shape
        h, w = size
        xs = fused_linear(x, self.proj.weight, self.proj.bias)
        # NCHW view of channels-last memory: the depthwise conv runs without a transposing copy.
        t = self.dw(xs.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        t = self.norm(t)
        t = self.act(t) if torch.is_grad_enabled() else F.gelu(t, out=t)  # in place at inference
        off = self.offset(t)
        if self.offset_range is not None:
            off = torch.tanh(off) * self.offset_range
        return xs, off

    def reference_grid(self, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """h x w x 2 cell centres in grid_sample's normalised (x, y) frame (align_corners
        False): (2j + 1) / w - 1. A zero offset then samples each cell exactly (for power-of-two
        grids, SAM's 64 and the demo's 16, bit-exactly)."""
        key = (size, like.device, like.dtype)
        if key not in self._grids:
            h, w = size
            ys = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
            xs = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
            self._grids[key] = grid.to(device=like.device, dtype=like.dtype)
        return self._grids[key]

    def sample(self, maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of B x C x h x w ``maps`` at cell centres + ``offsets`` (B x h x w x 2,
        cells, (dx, dy)); border padding, so far offsets read the edge instead of zeros.
        -> B x hw x C. Reference: ``grid_sample``; inference: the same samples as weighted
        bags of four token rows (:func:`sample_rows`), ~7x faster on CPU for C = 256."""
        if not torch.is_grad_enabled() and maps.device.type == "cpu":
            return sample_rows(maps, offsets)
        b, c, h, w = maps.shape
        scale = offsets.new_tensor([2.0 / w, 2.0 / h])
        grid = self.reference_grid((h, w), offsets) + offsets * scale
        out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.flatten(2).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int], pe: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Image tokens x (B x hw x C) on an h x w grid -> (deformed features B x hw x C, the
        positional encoding ``pe`` (1|B x hw x C) sampled at the same points or None, offsets
        B x h x w x 2)."""
        b, n, c = x.shape
        h, w = size
        xs, off = self.offsets(x, size)
        src = (xs if self.sample_source == "projected" else x).view(b, h, w, c)
        if pe is None:
            return self.sample(src.permute(0, 3, 1, 2), off), None, off
        # One sampling pass for features and PE, stacked along channels.
        maps = torch.cat([src, pe.expand(b, -1, -1).reshape(b, h, w, c)], dim=-1)
        sampled = self.sample(maps.permute(0, 3, 1, 2), off)
        return sampled[..., :c], sampled[..., c:], off


def sample_rows(maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``grid_sample(bilinear, border, align_corners=False)`` at cell centres + offsets, written
    on the channels-last rows of ``maps``: each sample is a weighted bag of its four corner rows
    (contiguous reads), as in deform_conv. Border padding clamps the position into
    [0, w - 1] x [0, h - 1] before interpolating, as grid_sample does.

    maps: B x C x h x w (channels-last memory avoids a copy); offsets: B x h x w x 2 (dx, dy),
    in cells -> B x hw x C."""
    b, c, h, w = maps.shape
    dt = torch.promote_types(offsets.dtype, torch.float32)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=maps.device, dtype=dt),
        torch.arange(w, device=maps.device, dtype=dt),
        indexing="ij",
    )
    limit = torch.tensor([w - 1, h - 1], device=maps.device, dtype=dt)
    pos = torch.minimum((offsets.to(dt) + torch.stack([xs, ys], dim=-1)).clamp_(min=0), limit)
    p0 = pos.floor()
    frac = pos - p0
    p1 = torch.minimum(p0 + 1, limit)
    (x0, y0), (x1, y1), (lx, ly) = p0.unbind(-1), p1.unbind(-1), frac.unbind(-1)
    idx = torch.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], dim=-1).long()
    if b > 1:
        idx += (torch.arange(b, device=maps.device) * (h * w)).view(b, 1, 1, 1)
    mx, my = 1 - lx, 1 - ly
    wgt = torch.stack([my * mx, my * lx, ly * mx, ly * lx], dim=-1)
    rows = maps.permute(0, 2, 3, 1).reshape(b * h * w, c)
    out = F.embedding_bag(
        idx.view(-1, 4), rows, per_sample_weights=wgt.view(-1, 4).to(maps.dtype), mode="sum"
    )
    return out.view(b, h * w, c)
