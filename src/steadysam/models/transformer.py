"""SAM's two-way transformer: tokens and image embedding attend to each other."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import MLPBlock, fused_linear, is_plain_linear


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        """
        A transformer decoder that attends to an input image using queries whose positional
        embedding is supplied: depth two-way blocks, then a final token->image attention.

        Arguments:
          depth (int): the number of two-way blocks
          embedding_dim (int): the channel dimension of the tokens and the image embedding
          num_heads (int): the number of heads of every attention; must divide
            embedding_dim // attention_downsample_rate
          mlp_dim (int): the hidden channel dimension of the blocks' MLPs
          activation (type[nn.Module]): the activation of the blocks' MLPs
          attention_downsample_rate (int): the token<->image attentions project to
            embedding_dim // attention_downsample_rate channels (128 in SAM); the token
            self-attention keeps embedding_dim

        The ``final_plugin`` attribute (None after construction) is an extension point: a
        module called as final_plugin(queries, keys, image_pe, size) -> (attention keys,
        attention values) replaces the image tokens in the final token->image attention
        (Stable-SAM's plugin, attached by ``models.build.attach_plugin``; docs/stable-sam.md).
        """
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)
        # Extension point: a module that supplies the final token->image attention's keys and
        # values (see TwoWayAttentionBlock.plugin); None = the image tokens themselves.
        self.final_plugin: nn.Module | None = None

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        outputs: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embedding (torch.Tensor): the image to attend to, B x C x h x w
          image_pe (torch.Tensor): the positional encoding of the image, 1 x C x h x w or
            B x C x h x w
          point_embedding (torch.Tensor): the tokens (output tokens, then prompt tokens),
            B x N x C; they are also the tokens' positional encoding at every layer
          outputs (list(int) or None): indexes of the tokens to return (default all, N' = N):
            the final token->image attention updates each token on its own, so it only runs
            for the tokens that are used

        Returns:
          torch.Tensor: the processed tokens, B x N' x C (after norm_final_attn)
          torch.Tensor: the processed image tokens, B x hw x C
        """
        size = image_embedding.shape[-2:]
        image_embedding = _tokens(image_embedding)
        image_pe = _tokens(image_pe)
        queries = point_embedding
        keys = image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe, size)
        if self.final_plugin is None:
            k, v = keys + image_pe, keys
        else:  # routed on all tokens, before the unused ones are dropped
            k, v = self.final_plugin(queries, keys, image_pe, size)
        if outputs is not None:
            queries, point_embedding = queries[:, outputs], point_embedding[:, outputs]
        q = queries + point_embedding
        queries = queries + self.final_attn_token_to_image(q=q, k=k, v=v)
        queries = self.norm_final_attn(queries)
        return queries, keys


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> contiguous B x hw x C (a view for channels-last input)."""
    return x.flatten(2).transpose(1, 2).contiguous()


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP, image->token; each followed by a LayerNorm."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        """
        Arguments:
          embedding_dim (int): the channel dimension of the embeddings
          num_heads (int): the number of heads in the attention layers
          mlp_dim (int): the hidden dimension of the MLP block
          activation (type[nn.Module]): the activation of the MLP block
          attention_downsample_rate (int): the two cross attentions project to
            embedding_dim // attention_downsample_rate channels
          skip_first_layer_pe (bool): if True (the first block), the self-attention adds no
            positional encoding and no residual (its input tokens still equal their
            positional encoding)

        The ``plugin`` attribute (None after construction) is an extension point: a module
        called as plugin(queries, keys, key_pe, size) -> (attention keys, attention values)
        supplies the keys and values of this block's token->image attention; None is SAM
        (keys + key_pe and keys). The image->token attention always reads the regular image
        tokens. Stable-SAM's deformable sampling uses it (docs/stable-sam.md).
        """
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe
        # Extension point for the token->image source: a module called as
        # plugin(queries, keys, key_pe, size) -> (attention keys, attention values), e.g.
        # Stable-SAM's deformable sampling. None = SAM: keys + key_pe and keys.
        self.plugin: nn.Module | None = None

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        size: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          queries (torch.Tensor): the tokens, B x N x C
          keys (torch.Tensor): the image tokens, B x hw x C
          query_pe (torch.Tensor): the tokens' positional encoding, B x N x C
          key_pe (torch.Tensor): the image tokens' positional encoding, 1 x hw x C or
            B x hw x C
          size (tuple(int, int) or None): (h, w) of the image grid; needed by a plugin only

        Returns:
          torch.Tensor: the updated tokens, B x N x C
          torch.Tensor: the updated image tokens, B x hw x C
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # keys do not change until norm4, so this serves both attentions
        if self.plugin is None:
            t2i_k, t2i_v = k, keys
        else:  # only this attention sees the plugin's features; image->token keeps keys
            t2i_k, t2i_v = self.plugin(queries, keys, key_pe, size)
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=t2i_k, v=t2i_v))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token(q=k, k=q, v=queries, residual=keys))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention that can project to a smaller internal width (downsample_rate)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        """
        Arguments:
          embedding_dim (int): the channel dimension of the inputs and the output
          num_heads (int): the number of heads; must divide the internal dimension
          downsample_rate (int): q, k, v are projected to embedding_dim // downsample_rate
            channels (the internal dimension) and back to embedding_dim by out_proj
        """
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        assert self.internal_dim % num_heads == 0, "num_heads must divide embedding_dim."
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Arguments:
          q (torch.Tensor): the queries, B x Nq x C
          k (torch.Tensor): the keys, B x Nk x C
          v (torch.Tensor): the values, B x Nk x C
          residual (torch.Tensor or None): B x Nq x C, added to the output (fused into the
            last matmul where possible)

        Returns:
          torch.Tensor: B x Nq x C
        """
        heads_q, heads_k = self.num_heads * q.shape[1], self.num_heads * k.shape[1]
        # The reassociated forms read the projections' weights: plain nn.Linear layers only.
        fast = fast_paths_enabled() and all(
            is_plain_linear(m, q) for m in (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        )
        if fast and heads_q < self.internal_dim and k.shape[1] > self.internal_dim:
            out = self._few_queries(q, k, v)
        elif fast and heads_k < self.internal_dim and q.shape[1] > self.internal_dim:
            return self._few_keys(q, k, v, residual)
        else:
            q = self._separate_heads(self.q_proj(q))
            k = self._separate_heads(self.k_proj(k))
            v = self._separate_heads(self.v_proj(v))
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]))
            b, h, n, d = out.shape
            out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
        return out if residual is None else residual + out

    # The decoder's cross attentions pair a handful of tokens with thousands of image tokens.
    # Projecting every image token to the internal width costs Nimg * C * internal; moving the
    # projection onto the token side instead costs Nimg * C * heads * Ntok, which is smaller
    # while heads * Ntok < internal (up to ~10 clicks for SAM). Same function, reassociated.

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Token -> image attention without projecting the image tokens: the scores are
        (q_h Wk_h) k^T + q_h bk_h and the values (p_h v) Wv_h^T."""
        b, nq, c = q.shape
        nh = self.num_heads
        d = self.internal_dim // nh
        qh = self.q_proj(q).view(b, nq, nh, d).transpose(1, 2) * d**-0.5  # b x nh x nq x d
        a = torch.matmul(qh, self.k_proj.weight.view(nh, d, c)).reshape(b, nh * nq, c)
        if b == 1 and not torch.is_grad_enabled():
            # The key bias only adds a per-query constant, which softmax cancels.
            attn = fused_linear(a[0], k[0], None)[None].softmax(dim=-1)
        else:
            # Kept in training so that the bias takes part in autograd exactly as in the
            # reference (DDP requires every parameter to be used).
            shift = torch.matmul(qh, self.k_proj.bias.view(nh, d, 1)).reshape(b, nh * nq, 1)
            attn = torch.baddbmm(shift, a, k.transpose(1, 2)).softmax(dim=-1)
        y = torch.bmm(attn, v).view(b, nh, nq, c)
        wv = self.v_proj.weight.view(nh, d, c).transpose(1, 2)  # nh x C x d
        out = torch.matmul(y, wv) + self.v_proj.bias.view(nh, 1, d)  # b x nh x nq x d
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, nh * d))

    def _few_keys(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """Image -> token attention without projecting the image tokens: the scores are
        q (Wq_h^T k_h^T) + bq_h k_h^T and the output p_h (v_h Wo_h^T), all heads in one matmul."""
        b, nq, c = q.shape
        nk = k.shape[1]
        nh = self.num_heads
        d = self.internal_dim // nh
        kh = self.k_proj(k).view(b, nk, nh, d) * d**-0.5
        vh = self.v_proj(v).view(b, nk, nh, d)
        wq = self.q_proj.weight.view(nh, d, c)
        m = torch.einsum("hdc,bjhd->bhjc", wq, kh).reshape(b, nh * nk, c)
        bias = torch.einsum("hd,bjhd->bhj", self.q_proj.bias.view(nh, d), kh)
        # Transposed scores (heads x tokens) x image: the softmax then reduces over a short
        # strided axis with the long image axis contiguous, which vectorises.
        scores = torch.baddbmm(bias.reshape(b, nh * nk, 1), m, q.transpose(1, 2))
        attn = scores.view(b, nh, nk, nq).softmax(dim=2).view(b, nh * nk, nq).transpose(1, 2)
        wo = self.out_proj.weight.view(-1, nh, d)  # C_out x nh x d
        u = torch.einsum("bjhd,chd->bhjc", vh, wo).reshape(b, nh * nk, -1)
        # Each head's weights sum to 1, so a row of attn sums to nh: the output bias rides
        # along in u, and the residual is the matmul's accumulator (no extra full-size pass).
        u = u + self.out_proj.bias / nh
        if residual is None:
            return torch.bmm(attn, u)
        return torch.baddbmm(residual, attn, u)
