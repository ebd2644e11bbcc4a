"""HQ-SAM's mask decoder (Ke et al., NeurIPS 2023): SAM's decoder plus the HQ output token.

The HQ token joins SAM's output tokens ([iou, mask x 4, hq, prompts...]) in the frozen two-way
transformer. Its own MLP (``hf_mlp``) predicts the weights of a dot product with the HQ
feature: SAM's upscaled decoder feature refined by ``embedding_maskfeature``, plus the
global-local fusion of the final image embedding (``embedding_encoder``) and the early ViT
feature after the first global-attention block (``compress_vit_feat``). Parameter names are
those of the official ``sam_hq_vit_*.pth`` files (``mask_decoder.hf_token.weight`` ...).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn

from .common import LayerNorm2d
from .mask_decoder import MLP, MaskDecoder

# HQ-SAM's learnable additions (its training freezes everything else): their names inside
# the decoder, and the part name parameter counts use for them.
HQ_MODULE_NAMES = (
    "hf_token",
    "hf_mlp",
    "compress_vit_feat",
    "embedding_encoder",
    "embedding_maskfeature",
)
HQ_PART = "hq"


def hq_parameters(decoder: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters of HQ-SAM's additions in ``decoder`` (none for SAM's decoder)."""
    for name in HQ_MODULE_NAMES:
        module = getattr(decoder, name, None)
        if module is not None:
            yield from module.parameters()


class HQMaskDecoder(MaskDecoder):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        vit_dim: int,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        """
        SAM's mask decoder (every argument as in :class:`MaskDecoder`) with HQ-SAM's additions.

        Arguments:
          vit_dim (int): the width of the image encoder's tokens (its early feature's channels:
            768 / 1024 / 1280 for ViT-B / L / H)

        ``num_mask_tokens`` stays SAM's (num_multimask_outputs + 1): the HQ token is
        ``hf_token``, and the IoU head still scores SAM's mask tokens only.
        """
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            activation=activation,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        dim = transformer_dim
        self.vit_dim = vit_dim
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        # The official layers use nn.GELU whatever ``activation`` is.
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, dim, kernel_size=2, stride=2),
            LayerNorm2d(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1),
        )

    def hq_features(
        self, image_embeddings: torch.Tensor, early_features: torch.Tensor
    ) -> torch.Tensor:
        """
        The global-local fusion. It depends on the image only, so callers that decode many
        prompts on one image (``steadysam.Predictor``) compute it once and pass it to forward.

        Arguments:
          image_embeddings (torch.Tensor): the final image embeddings, B x C x h x w
          early_features (torch.Tensor): the encoder's tokens after its first global-attention
            block, B x h x w x vit_dim (``ImageEncoderViT(x, early_features=True)``)

        Returns:
          torch.Tensor: the HQ feature, B x C/8 x 4h x 4w
        """
        if early_features.dim() != 4 or early_features.shape[-1] != self.vit_dim:
            raise ValueError(
                f"early_features must be B x h x w x {self.vit_dim} (the encoder's tokens after "
                f"its first global block), got shape {tuple(early_features.shape)}"
            )
        if early_features.shape[1:3] != image_embeddings.shape[-2:]:
            raise ValueError(
                f"early_features grid {tuple(early_features.shape[1:3])} differs from the "
                f"embedding grid {tuple(image_embeddings.shape[-2:])}"
            )
        # B x h x w x D permuted is a channels-last B x D x h x w view: no copy.
        vit = self.compress_vit_feat(early_features.permute(0, 3, 1, 2))
        return self.embedding_encoder(image_embeddings) + vit

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        return_tokens: bool = False,
        *,
        early_features: torch.Tensor | None = None,
        hq_features: torch.Tensor | None = None,
        hq_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Predict one mask per prompt, as the official ``MaskDecoderHQ``.

        Arguments:
          image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings: as in
            :meth:`MaskDecoder.forward`
          multimask_output (bool): False: SAM's part is mask token 0; True: the one of mask
            tokens 1..num_multimask_outputs with the highest predicted IoU (HQ-SAM always
            returns a single mask)
          return_tokens (bool): must be False (FocSAM's refiner is not combined with HQ-SAM)
          early_features (torch.Tensor or None): B x h x w x vit_dim, see ``hq_features``
          hq_features (torch.Tensor or None): the precomputed ``hq_features`` (1 or B x C/8 x
            4h x 4w); one of early_features / hq_features is required
          hq_token_only (bool): True returns the HQ mask's logits; False (the official
            default) the SAM mask's logits plus the HQ mask's

        Returns:
          torch.Tensor: low-res mask logits, B x 1 x 4h x 4w
          torch.Tensor: predicted IoU of SAM's selected mask token, B x 1
        """
        if return_tokens:
            raise ValueError("HQ-SAM's decoder returns no tokens (no FocSAM refiner on HQ-SAM)")
        if hq_features is None:
            if early_features is None:
                raise ValueError(
                    "HQ-SAM's decoder needs the encoder's early features (Sam.encode(images, "
                    "early_features=True)) or hq_features"
                )
            hq_features = self.hq_features(image_embeddings, early_features)
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight])
        B = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat((tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings), 1)
        if image_embeddings.shape[0] != B:
            image_embeddings = image_embeddings.expand(B, -1, -1, -1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe if image_pe.shape[0] == B else image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape

        n = self.num_mask_tokens
        ids = list(range(1, n)) if multimask_output else [0]
        # Only the used tokens go through the final attention: iou, SAM's selected, HQ.
        used = [0] + [1 + i for i in ids] + [1 + n]
        hs, src = self.transformer(src, pos_src, tokens, outputs=used)
        iou_pred = self.iou_prediction_head(hs[:, 0])[:, ids]
        sam_hyper = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + j]) for j, i in enumerate(ids)], dim=1
        )
        hq_hyper = self.hf_mlp(hs[:, -1])[:, None]  # b x 1 x C/8

        # SAM's upscaled feature, which the HQ branch convolves, is needed as a map here (not
        # in MaskDecoder's blocked sub-pixel layout): SAM's upscaling modules on the image
        # tokens viewed as a channels-last map give it channels-last, which the 3x3
        # convolutions of embedding_maskfeature also run fastest on.
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hq_map = self.embedding_maskfeature(upscaled) + hq_features
        masks = _dot(hq_hyper, hq_map)
        if multimask_output:  # the official rule: SAM's token with the highest predicted IoU
            iou_pred, best = torch.max(iou_pred, dim=1)
            iou_pred = iou_pred[:, None]
            sam_hyper = sam_hyper[torch.arange(b, device=best.device), best][:, None]
        if not hq_token_only:
            masks = _dot(sam_hyper, upscaled) + masks
        return masks, iou_pred


def _dot(hyper: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-pixel dot products: weights b x M x C', features b x C' x H x W (any memory
    format) -> masks b x M x H x W."""
    b, c, h, w = features.shape
    pixels = features.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view when channels-last
    return (pixels @ hyper.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
