"""SAM's ViT image encoder: windowed + global attention with decomposed relative positions.

Parameter names follow segment-anything so that official checkpoints load without renames.
Attention runs through ``F.scaled_dot_product_attention`` with the relative-position bias as an
additive mask; on CPU this avoids materialising the scaled-logit, biased-logit and softmax
tensors separately, which dominates the official implementation's time in the global blocks.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import LayerNorm2d, MLPBlock


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
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S normalised image -> B x out_chans x S/16 x S/16 embedding."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:
                pos = F.interpolate(
                    pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear", align_corners=False
                ).permute(0, 2, 3, 1)
            x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


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
        """B x H x W x C -> B x H x W x C."""
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
        """B x H x W x C -> B x H x W x C; window_size > 0 attends within windows only.

        Equivalent to official SAM's partition-then-attend: there, zero-padded tokens become
        keys equal to the qkv bias. Projecting before padding and padding with that bias gives
        the same keys without running the linear layers on padding."""
        B, H, W, C = x.shape
        nh = self.num_heads
        qkv = self.qkv(x)
        if window_size > 0:
            qkv, pad_hw = window_partition(qkv, window_size, pad_value=self.qkv.bias)
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # b x nh x hw x hd
        if self.use_rel_pos:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, C)
        if window_size > 0:
            out = window_unpartition(out, window_size, pad_hw, (H, W))
        return self.proj(out)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x S/p x S/p x C."""
        return self.proj(x).permute(0, 2, 3, 1)


def window_partition(
    x: torch.Tensor, window_size: int, pad_value: torch.Tensor | None = None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """B x H x W x C -> (B * nW) x ws x ws x C, padding H and W up to multiples of ws with
    zeros or with the per-channel vector pad_value (C)."""
    B, H, W, C = x.shape
    Hp = -(-H // window_size) * window_size
    Wp = -(-W // window_size) * window_size
    if (Hp, Wp) != (H, W):
        if pad_value is None:
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        else:
            padded = pad_value.to(x.dtype).expand(B, Hp, Wp, C).clone()
            padded[:, :H, :W] = x
            x = padded
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of window_partition: (B * nW) x ws x ws x C -> B x H x W x C."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


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
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_h, rel_w)):
        return _biased_sdpa(q, k, v, rel_h, rel_w, scale, chunk_bytes)
    return _biased_attention_inplace(q, k, v, rel_h, rel_w, scale, chunk_bytes)


def _biased_attention_inplace(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    chunk_bytes: int,
) -> torch.Tensor:
    """Inference: one logit buffer per chunk of (batch x head, query rows), filled by a
    matmul, biased and soft-maxed in place, then multiplied into its slice of the output.

    Unlike SDPA with an additive mask, the bias is never written out as a tensor of its own
    and read back: on 2 CPU cores this is ~1.5x faster for a ViT-B global block."""
    bn, h, w, kh = rel_h.shape
    B, nh, L, dim = q.shape
    q = (q * scale).reshape(bn, L, dim)
    kt = k.reshape(bn, L, dim).transpose(1, 2)
    v = v.reshape(bn, L, dim)
    out = q.new_empty(bn, L, dim)
    row_bytes = w * L * q.element_size()
    rows = min(h, max(1, chunk_bytes // row_bytes))
    # Several batch x head slices per chunk only when whole ones fit (windows): the output
    # slice written by the second matmul must stay contiguous.
    group = min(bn, max(1, chunk_bytes // (h * row_bytes))) if rows == h else 1
    buffer = q.new_empty(group * rows * w * L)
    for b0 in range(0, bn, group):
        g = min(group, bn - b0)
        for r0 in range(0, h, rows):
            r = min(rows, h - r0)
            tokens = slice(r0 * w, (r0 + r) * w)
            logits = buffer[: g * r * w * L].view(g, r * w, L)
            torch.bmm(q[b0 : b0 + g, tokens], kt[b0 : b0 + g], out=logits)
            grid = logits.view(g, r, w, kh, L // kh)
            grid.add_(rel_h[b0 : b0 + g, r0 : r0 + r, :, :, None])
            grid.add_(rel_w[b0 : b0 + g, r0 : r0 + r, :, None, :])
            torch.softmax(logits, dim=-1, out=logits)
            torch.bmm(logits, v[b0 : b0 + g], out=out[b0 : b0 + g, tokens])
    return out.view(B, nh, L, dim)


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
