"""Building blocks of FocSAM's focus refiner (docs/focsam.md §4.4-4.8).

Every module works on a batch of windows: tokens are W x N x C (W windows, N = S*S tokens each);
the window token is W x 1 x C. Attribute names follow the FocSAM checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import fused_linear, is_plain_linear, linear
from .deform_conv import ModulatedDeformConv2d


class Attention(nn.Module):
    """Multi-head attention with one extra all-zero key and value slot.

    The zero slot (appended after the k/v projections) adds exp(0) to the softmax denominator and
    nothing to the numerator: the learned function depends on it, so it must be kept.
    """

    def __init__(self, embed_dim: int, num_heads: int = 8) -> None:
        """
        Arguments:
          embed_dim (int): the channel dimension C of queries, keys, values and the output
            (q, k, v and output projections are C -> C, with bias)
          num_heads (int): the number of heads (head width C // num_heads, logit scale its
            inverse square root)
        """
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          q (torch.Tensor): the queries, B x Nq x C
          k (torch.Tensor): the keys, B x Nk x C
          v (torch.Tensor): the values, B x Nk x C (passing one tensor as q, k and v runs the
            three projections as one fused matmul: self-attention)

        Returns:
          torch.Tensor: B x Nq x C
        """
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if (
            q is k
            and k is v
            and fast_paths_enabled()
            and all(is_plain_linear(m, q) for m in projections)
        ):  # self-attention: one fused projection
            w = torch.cat([m.weight for m in projections])
            bias = torch.cat([m.bias for m in projections])
            q, k, v = fused_linear(q, w, bias).chunk(3, dim=-1)
        else:
            q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        k = F.pad(k, (0, 0, 0, 1))
        v = F.pad(v, (0, 0, 0, 1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        b, _, nq, _ = out.shape
        out = out.transpose(1, 2).reshape(b, nq, -1)
        return linear(self.proj, out)

    def attend_few(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Same result as ``forward(q, kv, kv)``, cheaper when Nq * heads << Nk.

        q: B x Nq x C, kv: B x Nk x C -> B x Nq x C. The key/value projections are moved onto the
        queries / the attention-weighted inputs, so the Nk tokens are never projected. It reads
        the key / value weights, so it needs plain ``nn.Linear`` projections; otherwise, and
        under ``use_fast_paths(False)``, it is ``forward(q, kv, kv)``.
        """
        if not (
            fast_paths_enabled()
            and is_plain_linear(self.k_proj, kv)
            and is_plain_linear(self.v_proj, kv)
        ):
            return self.forward(q, kv, kv)
        b, nq, c = q.shape
        h, d = self.num_heads, self.head_dim
        qh = self._heads(self.q_proj(q))  # B, h, Nq, d
        wk = self.k_proj.weight.view(h, d, c)
        q_in = torch.einsum("bhqd,hdc->bhqc", qh, wk).reshape(b, h * nq, c)
        logits = torch.baddbmm(
            (qh * self.k_proj.bias.view(1, h, 1, d)).sum(-1).reshape(b, h * nq, 1),
            q_in,
            kv.transpose(1, 2),
        )
        probs = F.pad(logits * self.scale, (0, 1)).softmax(-1)[..., :-1]  # zero-key slot
        ctx = torch.bmm(probs, kv).view(b, h, nq, c)
        out = torch.einsum("bhqc,hdc->bhqd", ctx, self.v_proj.weight.view(h, d, c))
        out = out + probs.sum(-1).view(b, h, nq, 1) * self.v_proj.bias.view(1, h, 1, d)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class CrossAttentionBlock(nn.Module):
    """img2cls: the window token attends to its window (pre-LN, gamma-scaled residuals, MLP)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> None:
        """
        Arguments:
          embed_dim (int): the channel dimension C of the token and the window features
          num_heads (int): the number of attention heads
          mlp_ratio (float): the ratio of the MLP hidden width to C
        """
        super().__init__()
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_kv = nn.LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads)
        self.gamma1 = nn.Parameter(torch.ones(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        hidden = int(mlp_ratio * embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim)
        )
        self.gamma2 = nn.Parameter(torch.ones(embed_dim))

    def forward(self, t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          t (torch.Tensor): the window tokens, W x 1 x C
          f (torch.Tensor): the window features, W x N x C

        Returns:
          torch.Tensor: the updated window tokens, W x 1 x C
        """
        t = t + self.gamma1 * self.attn.attend_few(self.norm_q(t), self.norm_kv(f))
        return t + self.gamma2 * self.mlp(self.norm(t))


class PDyReLU(nn.Module):
    """Pixel-wise dynamic ReLU: max of a per-token and a per-window affine piece
    (docs/focsam.md §4.6)."""

    def __init__(self, channels: int) -> None:
        """
        Arguments:
          channels (int): the channel dimension C of the tokens and the query; each branch's
            MLP outputs 2C values (C slopes, C intercepts)
        """
        super().__init__()
        self.channels = channels
        self.pixel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_mlp = nn.Sequential(
            nn.Linear(1, channels), nn.ReLU(), nn.Linear(channels, 2 * channels), nn.Tanh()
        )
        self.channel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.channel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, channels),
            nn.ReLU(),
            nn.Linear(channels, 2 * channels),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): the normalised window tokens, W x N x C
          q (torch.Tensor): the projected window token (the query), W x 1 x C

        Returns:
          torch.Tensor: W x N x C
        """
        c = self.channels
        # The dot product is deliberately unnormalised (no scale, no softmax).
        hidden, relu, out, tanh = self.pixel_mlp
        pix = linear(out, relu(hidden(x @ q.transpose(1, 2))), tanh)
        pix = torch.addcmul(self.pixel_bias, pix, self.pixel_scale.exp())
        chn = self.channel_mlp(x.mean(1, keepdim=True))
        chn = torch.addcmul(self.channel_bias, chn, self.channel_scale.exp())
        return torch.maximum(
            torch.addcmul(pix[..., c:], pix[..., :c], x),
            torch.addcmul(chn[..., c:], chn[..., :c], x),
        )


class DeformLayer(nn.Module):
    """3x3 DCNv2 whose offsets and modulation come from a plain 3x3 conv of the same input."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        """
        Arguments:
          in_channels (int): the number of input channels (of the offset convolution too)
          out_channels (int): the number of output channels of the deformable convolution
        """
        super().__init__()
        self.dcn_offset = nn.Conv2d(in_channels, 27, kernel_size=3, padding=1)
        self.dcn = ModulatedDeformConv2d(in_channels, out_channels, 3, padding=1, bias=False)
        fan_out, fan_in = out_channels, in_channels * 9
        nn.init.normal_(self.dcn.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): the windows as maps, W x C x S x S

        Returns:
          torch.Tensor: W x Cout x S x S (each window zero-padded on its own)
        """
        om = self.dcn_offset(x)
        # The official code names channels 0..8 / 9..17 "x" / "y" but passes 0..17 through in
        # order, i.e. the mmcv layout (2k = dy, 2k+1 = dx); keep the order, not the names.
        return self.dcn(x, om[:, :18], om[:, 18:].sigmoid())


class MSAModule(nn.Module):
    """cls2img: window update = self-attention -> LN -> P-DyReLU, then DCN -> GN -> ReLU.

    The second residual starts from the module input, so the attention branch reaches the output
    only through the deformable convolution (paper eq. 5: f + DCN(f + f_hat)).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        """
        Arguments:
          embed_dim (int): the channel dimension C of the window features and the token
          num_heads (int): the number of heads of the window self-attention
        """
        super().__init__()
        self.cls_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.LayerNorm(embed_dim))
        self.attn = Attention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.relu1 = PDyReLU(embed_dim)
        self.conv2 = DeformLayer(embed_dim, embed_dim)
        self.norm2 = nn.GroupNorm(1, embed_dim)
        self.gamma1 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))
        self.gamma2 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))

    def forward(self, f: torch.Tensor, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """
        Arguments:
          f (torch.Tensor): the window features, W x N x C (N = h * w tokens, row-major)
          t (torch.Tensor): the window tokens from img2cls, W x 1 x C
          size (tuple(int, int)): the window size (h, w)

        Returns:
          torch.Tensor: the updated window features, W x N x C
        """
        nw, _, c = f.shape
        h = self.relu1(self.norm1(self.attn(f, f, f)), self.cls_proj(t))
        f1 = torch.addcmul(f, h, self.gamma1.view(c))
        # Channels-last view of the tokens: the convolutions need no layout copy.
        y = self.conv2(f1.view(nw, *size, c).permute(0, 3, 1, 2))
        y = F.relu(self.norm2(y), inplace=True)
        return torch.addcmul(f, y.flatten(2).transpose(1, 2), self.gamma2.view(c))
