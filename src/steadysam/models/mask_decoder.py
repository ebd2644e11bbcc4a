"""SAM's mask decoder: the two-way transformer plus hypernetwork mask heads and the IoU head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import LayerNorm2d, fusable_activation, fused_linear, is_plain


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        """
        Predicts masks given image and prompt embeddings, using a transformer architecture.

        Arguments:
          transformer_dim (int): the channel dimension of the transformer (= the prompt and
            image embedding width C)
          transformer (nn.Module): the transformer used to predict masks, called as
            transformer(image_embedding, image_pe, tokens, outputs=...) (TwoWayTransformer)
          num_multimask_outputs (int): the number of masks to predict when disambiguating
            masks; the decoder has num_multimask_outputs + 1 mask tokens, token 0 being the
            single-mask output
          activation (type[nn.Module]): the activation used when upscaling masks
          iou_head_depth (int): the depth of the MLP used to predict mask quality
          iou_head_hidden_dim (int): the hidden dimension of the MLP used to predict mask
            quality
        """
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        return_tokens: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """
        Predict masks given image and prompt embeddings.

        Arguments:
          image_embeddings (torch.Tensor): the embeddings from the image encoder (or FocSAM's
            refiner), B x C x h x w; a batch of 1 is shared by all B prompts
          image_pe (torch.Tensor): the positional encoding of the embedding grid,
            1 x C x h x w or B x C x h x w (PromptEncoder.get_dense_pe)
          sparse_prompt_embeddings (torch.Tensor): the embeddings of the points and boxes,
            B x N x C
          dense_prompt_embeddings (torch.Tensor): the embeddings of the mask inputs,
            B x C x h x w
          multimask_output (bool): True returns the masks of mask tokens 1..num_multimask_outputs
            (M = num_multimask_outputs), False the single mask of mask token 0 (M = 1)
          return_tokens (bool): whether to also return the transformer outputs of the
            selected mask tokens

        Returns:
          torch.Tensor: low-res mask logits, B x M x 4h x 4w
          torch.Tensor: predicted mask quality (IoU), B x M
          torch.Tensor: only with return_tokens: the selected mask tokens after the final
            token->image attention and its norm, before the hypernetwork MLPs, B x M x C
            (for mask token 0 FocSAM's click-fused query, docs/focsam.md §3)
        """
        masks, iou_pred, mask_tokens_out = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            slice(1, None) if multimask_output else slice(0, 1),
        )
        if return_tokens:
            return masks, iou_pred, mask_tokens_out
        return masks, iou_pred

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        select: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the transformer and the heads for the mask tokens in ``select`` only (the
        hypernetwork heads are per token, so skipping unused ones changes nothing).

        Arguments:
          image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings: as in
            ``forward``
          select (slice): the mask tokens to predict, as a slice of range(num_mask_tokens)

        Returns:
          torch.Tensor: low-res mask logits, B x M x 4h x 4w (M = the number of selected tokens)
          torch.Tensor: predicted IoUs, B x M
          torch.Tensor: the selected mask tokens' transformer outputs, B x M x C
        """
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(B, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        if image_embeddings.shape[0] != B:
            image_embeddings = image_embeddings.expand(B, -1, -1, -1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe if image_pe.shape[0] == B else image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape

        ids = range(self.num_mask_tokens)[select]
        hs, src = self.transformer(src, pos_src, tokens, outputs=[0] + [1 + i for i in ids])
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:, :]

        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, j]) for j, i in enumerate(ids)],
            dim=1,
        )
        masks = self._upscale_and_predict(src, hyper_in, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)[:, select]
        return masks, iou_pred, mask_tokens_out

    def _upscale_and_predict(
        self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """``output_upscaling`` on B x hw x C image tokens, then the per-pixel dot product with
        the hypernetwork outputs B x M x C/8 -> masks B x M x 4h x 4w.

        Same weights and math as the official ConvTranspose/LayerNorm2d stack. A 2x2 stride-2
        transposed convolution maps each input pixel to its own 2x2 output block, so both
        convolutions are per-pixel matmuls and the sub-pixel layout can stay blocked until the
        (M-channel, small) masks are assembled: no full-size feature map is ever permuted."""
        up0, ln, act0, up1, act1 = self.output_upscaling
        b = src.shape[0]
        if not (
            fast_paths_enabled()
            and is_plain(up0, nn.ConvTranspose2d)
            and is_plain(up1, nn.ConvTranspose2d)
            and is_plain(ln, LayerNorm2d)
        ):
            # Reference: official SAM's stack on the B x C x h x w map, modules called.
            upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, -1, h, w))
            masks = hyper_in @ upscaled.flatten(2)  # b x M x 16hw
            return masks.view(b, -1, 4 * h, 4 * w)
        x = _subpixel_linear(src, up0)  # b x hw*4 x C/4, rows (pixel, dy1, dx1)
        x = act0(F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps))
        act = fusable_activation(act1)
        x = _subpixel_linear(x, up1, act) if act is not None else act1(_subpixel_linear(x, up1))
        # x: b x hw*16 x C/8, rows (pixel, dy1, dx1, dy2, dx2)
        masks = x @ hyper_in.transpose(1, 2)  # b x hw*16 x M
        m = masks.shape[-1]
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)


def _subpixel_linear(
    x: torch.Tensor, conv: nn.ConvTranspose2d, activation: str | None = None
) -> torch.Tensor:
    """A kernel-2, stride-2 ConvTranspose2d as a matmul: B x N x Cin -> B x 4N x Cout, each
    input row expanded to its 4 sub-pixels (dy, dx) in row-major order; optionally followed
    by an activation (see ``fused_linear``)."""
    b, n, cin = x.shape
    cout = conv.out_channels
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)  # (dy, dx, Cout) x Cin
    bias = conv.bias.repeat(4) if conv.bias is not None else None
    return fused_linear(x, weight, bias, activation).view(b, 4 * n, cout)


class MLP(nn.Module):
    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        """
        A stack of Linear layers with ReLU between them (the hypernetwork and IoU heads).

        Arguments:
          input_dim (int): the input channel dimension
          hidden_dim (int): the channel dimension between layers
          output_dim (int): the output channel dimension
          num_layers (int): the number of Linear layers
          sigmoid_output (bool): if True, a sigmoid is applied to the output
        """
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim], strict=True)
        )
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """... x input_dim -> ... x output_dim."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
