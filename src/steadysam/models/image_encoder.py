"""SAM's ViT image encoder: windowed + global attention with decomposed relative positions.

Parameter names follow segment-anything so that official checkpoints load without renames.
The official code materialises the scaled logits, the bias, the biased logits and the softmax
of every global block separately (4 x nh x 4096^2 floats); here inference fills one cache-sized
logit buffer per chunk of query rows and biases and normalises it in place, and training uses
``F.scaled_dot_product_attention`` with the bias as a chunked additive mask. Both read q, k, v
as strided views of the qkv projection.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import LayerNorm2d, MLPBlock, fused_linear, is_plain_linear, linear


class ImageEncoderViT(nn.Module):
    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        """
        SAM's image encoder: a ViT (ViTDet style) over patch tokens, mostly windowed attention
        with a few global blocks, followed by a convolutional neck that maps to the prompt width.

        Arguments:
          img_size (int): the side, in pixels, of the square (padded) input image; the absolute
            position embedding is created for its grid and interpolated for other input sizes
          patch_size (int): the side of the square patches, in pixels: the embedding grid is
            img_size // patch_size per side (64 for 1024 / 16)
          in_chans (int): the number of input image channels
          embed_dim (int): the token width of the ViT
          depth (int): the number of transformer blocks
          num_heads (int): the number of attention heads in each block
          mlp_ratio (float): the ratio of the blocks' MLP hidden width to embed_dim
          out_chans (int): the channels of the output embedding (the neck's width, which must be
            the prompt encoder's / mask decoder's width: 256 in SAM)
          qkv_bias (bool): if True, the q, k, v projections have a learnable bias
          norm_eps (float): eps of the blocks' LayerNorms: 1e-6 in SAM, 1e-5 in FocSAM's ViT
            (docs/focsam.md §2.1); the neck's LayerNorm2d always uses 1e-6
          use_abs_pos (bool): if True, a learned absolute position embedding
            (1 x grid x grid x embed_dim) is added to the patch tokens
          use_rel_pos (bool): if True, every block's attention adds decomposed relative position
            biases (SAM: True)
          window_size (int): the side, in tokens, of the attention windows of the non-global
            blocks; 0 makes every block global
          global_attn_indexes (tuple(int, ...)): 0-based indexes of the blocks that use global
            attention over the whole grid
        """
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_eps=norm_eps,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        # HQ-SAM's early feature: the tokens after the first global-attention block.
        self.early_index: int | None = min(global_attn_indexes) if global_attn_indexes else None
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(
        self, x: torch.Tensor, early_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          x (torch.Tensor): B x in_chans x H x W normalised, padded images (H = W = img_size for
            SAM's inputs; any multiple of patch_size works)
          early_features (bool): also return the tokens after the first global-attention
            block (HQ-SAM's early ViT feature)

        Returns:
          torch.Tensor: the image embeddings, B x out_chans x H/patch_size x W/patch_size
            (channels-last memory)
          torch.Tensor: only with early_features: the early feature, B x H/patch_size x
            W/patch_size x embed_dim; that block's own output tensor, kept alive rather than
            copied (later blocks never write into their input)
        """
        if early_features and self.early_index is None:
            raise ValueError("this encoder has no global-attention block: no early feature")
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            x = x + pos
        early = None
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if early_features and i == self.early_index:
                early = x
        out = self.neck(x.permute(0, 3, 1, 2))
        return (out, early) if early_features else out


class Block(nn.Module):
    """Pre-norm transformer block; window_size 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] = (64, 64),
    ) -> None:
        """
        Arguments:
          dim (int): the token width
          num_heads (int): the number of attention heads
          mlp_ratio (float): the ratio of the MLP hidden width to dim
          qkv_bias (bool): if True, the q, k, v projections have a learnable bias
          norm_eps (float): eps of norm1 and norm2
          use_rel_pos (bool): if True, the attention adds decomposed relative position biases
          window_size (int): 0 for global attention; otherwise the side, in tokens, of the
            non-overlapping windows attention is restricted to (the grid is padded at the
            bottom / right to a multiple of it)
          input_size (tuple(int, int)): the token grid (H, W) of a global block, which sizes
            its relative position tables; windowed blocks size them for
            (window_size, window_size) instead
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): B x H x W x C tokens

        Returns:
          torch.Tensor: B x H x W x C tokens
        """
        x = x + self.attn(self.norm1(x), self.window_size)
        return self.mlp(self.norm2(x), residual=x)


class Attention(nn.Module):
    """Multi-head attention with decomposed relative position bias (MViTv2 style)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Arguments:
          dim (int): the token width
          num_heads (int): the number of attention heads (head width dim // num_heads)
          qkv_bias (bool): if True, the q, k, v projections have a learnable bias
          use_rel_pos (bool): if True, add decomposed relative position biases (parameters
            rel_pos_h, rel_pos_w) to the attention logits
          input_size (tuple(int, int) or None): the (h, w) grid attended over (the whole grid or
            one window), which sizes the relative position tables as (2h - 1) x head width and
            (2w - 1) x head width; required when use_rel_pos is True
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            assert input_size is not None
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor, window_size: int = 0) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): B x H x W x C tokens
          window_size (int): 0 attends over the whole H x W grid; > 0 within non-overlapping
            window_size x window_size windows (grid padded at the bottom / right)

        Returns:
          torch.Tensor: B x H x W x C

        Equivalent to official SAM's partition-then-attend: there, zero-padded tokens become
        keys equal to the qkv bias. On the fast path the projection runs on the real tokens only
        and the windows are gathered from its rows plus one bias row (the padding); that needs
        ``qkv`` to be a plain ``nn.Linear`` (its output for a zero token is its bias), so any
        other module, and ``use_fast_paths(False)``, take the reference path."""
        if not (fast_paths_enabled() and is_plain_linear(self.qkv, x)):
            return self._reference(x, window_size)
        B, H, W, C = x.shape
        nh = self.num_heads
        qkv = fused_linear(x, self.qkv.weight, self.qkv.bias).reshape(B * H * W, 3 * C)
        if window_size > 0:
            gather, scatter, padding = window_rows(B, H, W, window_size, x.device)
            qkv = qkv.index_select(0, gather)
            if padding.numel():
                pad = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(3 * C)
                qkv.index_copy_(0, padding, pad.to(qkv.dtype).expand(padding.numel(), -1))
            b, h, w = gather.numel() // window_size**2, window_size, window_size
        else:
            b, h, w = B, H, W
        # b x nh x hw x hd views into the token-major qkv rows (no copies)
        q, k, v = qkv.view(b, h * w, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
        if self.use_rel_pos:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(b * h * w, C)
        if window_size > 0:
            out = out.index_select(0, scatter)
        return linear(self.proj, out.view(B, H, W, C))

    def _reference(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Official segment-anything's math: zero-pad and partition into windows, project,
        attend (logits, decomposed bias, softmax), project, unpartition. The modules are
        called as modules."""
        B, H, W, C = x.shape
        pad_hw = (H, W)
        if window_size > 0:
            x, pad_hw = window_partition(x, window_size)
        b, h, w, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # b x nh x hw x hd
        if self.use_rel_pos:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale)
        else:
            out = _reference_attention(q, k, v, None, None, self.scale)
        out = self.proj(out.transpose(1, 2).reshape(b, h, w, -1))
        if window_size > 0:
            out = window_unpartition(out, window_size, pad_hw, (H, W))
        return out


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Official SAM's window partition: B x H x W x C -> (B * nW) x ws x ws x C windows of the
    grid zero-padded at the bottom / right, and the padded size (Hp, Wp)."""
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window_size, (-W) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = H + pad_h, W + pad_w
    x = x.view(B, hp // window_size, window_size, wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows -> B x H x W x C, the padding cropped."""
    hp, wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(B, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, hp, wp, -1)
    return x[:, :H, :W] if hp > H or wp > W else x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        """
        Image to patch tokens: a convolution with kernel size and stride patch_size.

        Arguments:
          patch_size (int): the side of the square patches, in pixels
          in_chans (int): the number of input image channels
          embed_dim (int): the token width
        """
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): B x in_chans x H x W images

        Returns:
          torch.Tensor: B x H/p x W/p x embed_dim tokens (p = patch_size)
        """
        return self.proj(x).permute(0, 2, 3, 1)


@functools.lru_cache(maxsize=16)
def _window_rows_cpu(
    b: int, h: int, w: int, ws: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    grid = torch.full((b, hp, wp), -1, dtype=torch.long)
    grid[:, :h, :w] = torch.arange(b * h * w).view(b, h, w)
    source = grid.view(b, hp // ws, ws, wp // ws, ws).transpose(2, 3).reshape(-1)
    padding = (source < 0).nonzero().squeeze(1)
    order = torch.empty(b * h * w, dtype=torch.long)
    real = source >= 0
    order[source[real]] = real.nonzero().squeeze(1)  # where each token lands in the windows
    return source.clamp(min=0), order, padding


def window_rows(
    b: int, h: int, w: int, window_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices for official SAM's window_partition / window_unpartition on B*H*W token
    rows: ``gather`` ((B * nW * ws^2) source rows, row-major windows padded at the bottom /
    right), ``scatter`` (the window row of each token, which also crops the padding) and
    ``padding`` (the window rows that are padding; gather points them at row 0)."""
    return tuple(t.to(device) for t in _window_rows_cpu(b, h, w, window_size))


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair: q_size x k_size x C."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = (
            F.interpolate(
                rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                size=max_rel_dist,
                mode="linear",
            )
            .reshape(-1, max_rel_dist)
            .permute(1, 0)
        )
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    scale: float,
    chunk_bytes: int = 8 << 20,
) -> torch.Tensor:
    """softmax(scale q k^T + decomposed relative-position bias) v for B x nh x (h w) x hd inputs.

    The logits of a global block are nh x (hw)^2 floats (1 GiB for ViT-H), so they are built
    and consumed a few query rows at a time: the chunk stays in cache and peak memory small."""
    h, w = size
    B, nh, L, dim = q.shape
    Rh = get_rel_pos(h, h, rel_pos_h)
    Rw = get_rel_pos(w, w, rel_pos_w)
    r_q = q.reshape(B * nh, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)  # (B nh) x h x w x h(keys)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)  # (B nh) x h x w x w(keys)
    if not fast_paths_enabled():
        return _reference_attention(q, k, v, rel_h, rel_w, scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_h, rel_w)):
        return _biased_sdpa(q, k, v, rel_h, rel_w, scale, chunk_bytes)
    return _biased_attention_inplace(q, k, v, rel_h, rel_w, scale, chunk_bytes)


def _reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    scale: float,
    chunk_bytes: int = 256 << 20,
) -> torch.Tensor:
    """Official SAM's attention, softmax((scale q) k^T + bias) v with the decomposed bias
    rel_h ((B nh) x h x w x kh) and rel_w ((B nh) x h x w x kw) added to the logits viewed as
    ... x kh x kw (no bias when None), for B x nh x L x hd inputs -> B x nh x L x hd.

    Plain ops only (the reference math: FLOP counting, export). The logits of all heads are
    materialised as in the official code, but for at most ``chunk_bytes`` of them at a time
    (ViT-H's global blocks would need 1 GiB per tensor otherwise)."""
    B, nh, L, _ = q.shape
    rows = max(1, chunk_bytes // (B * nh * L * q.element_size()))
    if rel_h is not None:
        kh, kw = rel_h.shape[-1], rel_w.shape[-1]
        rel_h = rel_h.reshape(B, nh, L, kh, 1)
        rel_w = rel_w.reshape(B, nh, L, 1, kw)
    outs = []
    for r0 in range(0, L, rows):
        r1 = min(L, r0 + rows)
        attn = (q[:, :, r0:r1] * scale) @ k.transpose(-2, -1)
        if rel_h is not None:
            attn = attn.view(B, nh, r1 - r0, kh, kw) + rel_h[:, :, r0:r1] + rel_w[:, :, r0:r1]
            attn = attn.view(B, nh, r1 - r0, L)
        outs.append(attn.softmax(dim=-1) @ v)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _biased_attention_inplace(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    chunk_bytes: int,
) -> torch.Tensor:
    """Inference: one logit buffer per chunk of (batch, query rows) of one head, filled by a
    matmul, biased and soft-maxed in place, then multiplied into its slice of the output.

    Unlike SDPA with an additive mask, the bias is never written out as a tensor of its own
    and read back. q, k, v may be strided views (e.g. into the qkv projection's rows): every
    matmul reads them in place. Returns B x nh x L x hd, a view of B x L x nh x hd memory."""
    B, nh, L, dim = q.shape
    _, h, w, kh = rel_h.shape
    rel_h = rel_h.view(B, nh, h, w, kh)
    rel_w = rel_w.view(B, nh, h, w, -1)
    out = q.new_empty(B, L, nh, dim)
    row_bytes = w * L * q.element_size()
    rows = min(h, max(1, chunk_bytes // row_bytes))
    group = min(B, max(1, chunk_bytes // (h * row_bytes))) if rows == h else 1
    buffer = q.new_empty(group * rows * w * L)
    for head in range(nh):
        kt, vh = k[:, head].transpose(1, 2), v[:, head]
        for b0 in range(0, B, group):
            g = min(group, B - b0)
            if g == 1:
                # One long sequence (global blocks): 2-D matmuls, which oneDNN runs ~20 %
                # faster than MKL's bmm for these shapes (see fused_linear).
                k2, vt2 = k[b0, head], vh[b0].t().contiguous()
            for r0 in range(0, h, rows):
                r = min(rows, h - r0)
                tokens = slice(r0 * w, (r0 + r) * w)
                if g == 1:
                    logits = fused_linear(q[b0, head, tokens] * scale, k2, None)[None]
                else:
                    logits = buffer[: g * r * w * L].view(g, r * w, L)
                    torch.bmm(q[b0 : b0 + g, head, tokens] * scale, kt[b0 : b0 + g], out=logits)
                grid = logits.view(g, r, w, kh, L // kh)
                grid.add_(rel_h[b0 : b0 + g, head, r0 : r0 + r, :, :, None])
                grid.add_(rel_w[b0 : b0 + g, head, r0 : r0 + r, :, None, :])
                torch.softmax(logits, dim=-1, out=logits)
                if g == 1:
                    out[b0, tokens, head] = fused_linear(logits[0], vt2, None)
                else:
                    torch.bmm(logits, vh[b0 : b0 + g], out=out[b0 : b0 + g, tokens, head])
    return out.transpose(1, 2)


def _biased_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    chunk_bytes: int,
) -> torch.Tensor:
    """Training: SDPA with the bias as an additive mask, a few query rows at a time."""
    bn, h, w, kh = rel_h.shape
    B, nh, L, dim = q.shape
    rows = max(1, chunk_bytes // (bn * w * L * q.element_size()))
    outs = []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        bias = rel_h[:, r0:r1, :, :, None] + rel_w[:, r0:r1, :, None, :]
        bias = bias.reshape(B, nh, (r1 - r0) * w, L)
        qc = q[:, :, r0 * w : r1 * w]
        outs.append(F.scaled_dot_product_attention(qc, k, v, attn_mask=bias, scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
