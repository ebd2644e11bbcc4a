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

from ..fastpath import fast_paths_enabled
from ..native import PluginKernels, plugin_kernels
from .common import fused_linear, is_plain, is_plain_linear


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
        """B x hw x C tokens -> (x* B x hw x C, offsets B x h x w x 2 in cells, (dx, dy)).

        Below: the readable reference (the modules themselves), used under autograd and off
        the CPU; CPU inference takes :meth:`_offsets_inference`, the same function."""
        if cpu_inference(x) and is_plain_linear(self.proj, x):
            return self._offsets_inference(x, size)
        b, n, c = x.shape
        h, w = size
        xs = self.proj(x)
        # NCHW view of channels-last memory: the depthwise conv runs without a transposing copy.
        t = self.dw(xs.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        off = self.offset(self.act(self.norm(t)))
        if self.offset_range is not None:
            off = torch.tanh(off) * self.offset_range
        return xs, off

    def _offsets_inference(
        self, x: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`offsets` without autograd on CPU: the same ops as functional calls, each on
        dense memory and with no intermediate kept longer than it is needed.

        The 256 x 256 projection is one oneDNN matmul with its bias in the epilogue; the
        depthwise conv, LayerNorm, GELU and the 2-output layer then run as one compiled pass
        (steadysam.native: the conv's output stays in a row buffer, ~1.4x faster than the ops)
        or, without a compiler, as ops: the conv reads x* as an NCHW view of channels-last
        memory and writes channels-last (oneDNN's fastest layout here, ~1.4x a plain NCHW
        conv, no transposing copies) and GELU runs in place on LayerNorm's output."""
        b, n, c = x.shape
        h, w = size
        xs = fused_linear(x, self.proj.weight, self.proj.bias)
        dw, norm = self.dw, self.norm
        kernels = self._head_kernels(x)
        if kernels is not None:  # conv, LayerNorm, GELU and the offset layer in one pass
            off = kernels.offset_head(xs, size, dw, norm, self.offset.weight, self.offset.bias)
            if self.offset_range is not None:
                off = torch.tanh_(off).mul_(self.offset_range)
            return xs, off
        t = F.conv2d(
            xs.view(b, h, w, c).permute(0, 3, 1, 2),
            dw.weight,
            dw.bias,
            dw.stride,
            dw.padding,
            dw.dilation,
            dw.groups,
        ).permute(0, 2, 3, 1)
        t = F.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        t = F.gelu(t, approximate=self.act.approximate, out=t)
        # (2 x C) @ (C x bhw): MKL runs the 2-output layer this way round ~2x faster than as
        # (bhw x C) @ (C x 2). The transposed result is a B x h x w x 2 view whose dx and dy
        # are contiguous planes, as bilinear_bags reads them.
        off = torch.addmm(self.offset.bias[:, None], self.offset.weight, t.reshape(-1, c).t())
        off = off.t().view(b, h, w, 2)
        if self.offset_range is not None:
            off = torch.tanh_(off).mul_(self.offset_range)
        return xs, off

    def _head_kernels(self, x: torch.Tensor) -> PluginKernels | None:
        """The compiled kernels, where they compute exactly these layers: fp32, plain
        modules, a depthwise conv with 'same' zero padding, an affine LayerNorm, the erf GELU."""
        dw, norm = self.dw, self.norm
        if not (
            is_plain(dw, nn.Conv2d) and is_plain(norm, nn.LayerNorm) and is_plain(self.act, nn.GELU)
        ):
            return None
        if x.dtype != torch.float32 or self.act.approximate != "none":
            return None
        k = dw.kernel_size[0]
        same = dw.kernel_size == (k, k) and k % 2 == 1 and dw.padding == (k // 2, k // 2)
        plain_dw = dw.stride == (1, 1) and dw.dilation == (1, 1) and dw.padding_mode == "zeros"
        if not (same and plain_dw and dw.groups == dw.in_channels == dw.out_channels):
            return None
        if dw.bias is None or norm.weight is None or norm.bias is None:
            return None
        return plugin_kernels() if is_plain_linear(self.offset, x) else None

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
        if cpu_inference(maps):
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
        if cpu_inference(x):
            # Same bags for both maps: two gathers instead of concatenating the maps (an
            # 8 MB copy at SAM's size) and slicing the result; a shared PE is read unexpanded.
            idx, wgt = bilinear_bags(off, h, w)
            feats = gather_bags(src.reshape(b * n, c), _batch_rows(idx, b, n), wgt)
            pe_idx = idx if pe.shape[0] == 1 else _batch_rows(idx, b, n)
            pe_rows = pe.reshape(-1, c)
            return feats.view(b, n, c), gather_bags(pe_rows, pe_idx, wgt).view(b, n, c), off
        # One sampling pass for features and PE, stacked along channels.
        maps = torch.cat([src, pe.expand(b, -1, -1).reshape(b, h, w, c)], dim=-1)
        sampled = self.sample(maps.permute(0, 3, 1, 2), off)
        return sampled[..., :c], sampled[..., c:], off


def cpu_inference(x: torch.Tensor) -> bool:
    """Whether the inference-only CPU kernels apply (no autograd graph to record, fast paths
    on: ``use_fast_paths(False)`` keeps the reference ``grid_sample`` path)."""
    return fast_paths_enabled() and not torch.is_grad_enabled() and x.device.type == "cpu"


# (h, w, dtype, device) -> the x and y coordinates of the cells, as hw vectors.
_CELLS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _cells(h: int, w: int, dtype: torch.dtype, device: torch.device):
    key = (h, w, dtype, device)
    if key not in _CELLS:
        with torch.inference_mode(False):  # plain tensors, usable in any mode
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=dtype, device=device),
                torch.arange(w, dtype=dtype, device=device),
                indexing="ij",
            )
            _CELLS[key] = (xs.reshape(-1), ys.reshape(-1))
    return _CELLS[key]


def bilinear_bags(offsets: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The four corner rows and bilinear weights of ``grid_sample(bilinear, border,
    align_corners=False)`` at cell centres + ``offsets`` (B x h x w x 2, (dx, dy), cells) on an
    h x w map stored as hw rows: (indices B x hw x 4 into one map's rows, weights B x hw x 4).
    Border padding clamps the position into [0, w - 1] x [0, h - 1] before interpolating, as
    grid_sample does; the +1 neighbour of the corner (x0, y0) is then the next cell, or the
    same one at the last cell.

    The arithmetic runs on separate x and y vectors (hw long; contiguous for the offsets that
    :meth:`DeformableSampling.offsets` returns at inference): ops on B x hw x 2 tensors, with
    their length-2 inner axis, vectorise poorly (~20 % slower in all at SAM's 64 x 64).
    Indices are integers below 2^24, exact in floating point."""
    b = offsets.shape[0]
    dt = torch.promote_types(offsets.dtype, torch.float32)
    cx, cy = _cells(h, w, dt, offsets.device)
    off = offsets.to(dt).reshape(b, h * w, 2)
    px = torch.add(off[..., 0], cx).clamp_(0, w - 1)
    py = torch.add(off[..., 1], cy).clamp_(0, h - 1)
    x0, y0 = px.floor(), py.floor()
    lx, ly = px.sub_(x0), py.sub_(y0)  # fractions, in place of the positions
    i00 = torch.add(x0, y0, alpha=w)  # y0 * w + x0
    i01 = i00 + (x0 < w - 1).to(dt)
    dy = (y0 < h - 1).to(dt).mul_(w)
    # int32 rows: embedding_bag gathers ~20 % faster than with int64 (SAM's 64 x 64 x 256).
    idx_dtype = torch.int32 if b * h * w < 2**31 else torch.int64
    idx = torch.stack([i00, i01, i00 + dy, i01 + dy], dim=-1).to(idx_dtype)
    mx, my = 1 - lx, 1 - ly
    return idx, torch.stack([my * mx, my * lx, ly * mx, ly * lx], dim=-1)


def _batch_rows(idx: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Per-map row indices B x hw x 4 -> indices into the B maps' rows stacked (B hw rows)."""
    if b == 1:
        return idx
    return idx + (torch.arange(b, device=idx.device, dtype=idx.dtype) * n).view(b, 1, 1)


def gather_bags(rows: torch.Tensor, idx: torch.Tensor, wgt: torch.Tensor) -> torch.Tensor:
    """sum_k wgt[..., k] * rows[idx[..., k]]: R x C rows, ... x 4 bags -> (prod ...) x C."""
    return F.embedding_bag(
        idx.reshape(-1, 4), rows, per_sample_weights=wgt.reshape(-1, 4).to(rows.dtype), mode="sum"
    )


def sample_rows(maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``grid_sample(bilinear, border, align_corners=False)`` at cell centres + offsets, written
    on the channels-last rows of ``maps``: each sample is a weighted bag of its four corner rows
    (:func:`bilinear_bags`; contiguous reads), as in deform_conv.

    maps: B x C x h x w (channels-last memory avoids a copy); offsets: B x h x w x 2 (dx, dy),
    in cells -> B x hw x C."""
    b, c, h, w = maps.shape
    idx, wgt = bilinear_bags(offsets, h, w)
    rows = maps.permute(0, 2, 3, 1).reshape(b * h * w, c)
    return gather_bags(rows, _batch_rows(idx, b, h * w), wgt).view(b, h * w, c)
