"""The assembled SAM / FocSAM model: pure tensors in, tensors out (no images, no sessions)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
import torch.nn as nn

from .config import SamConfig
from .focus_refiner import focus_box_mask
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """SAM with attribute names as in official checkpoints; ``refiner`` is FocSAM's focus
    refiner (None for plain SAM); HQ-SAM has an ``HQMaskDecoder`` (``config.hq`` set)."""

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        refiner: nn.Module | None = None,
        config: SamConfig | None = None,
    ) -> None:
        """
        SAM (or FocSAM) predicts object masks from image embeddings and prompts.

        Arguments:
          image_encoder (ImageEncoderViT): the backbone that encodes the preprocessed image
            into the image embedding
          prompt_encoder (PromptEncoder): encodes points, boxes and mask inputs
          mask_decoder (MaskDecoder): predicts masks from the image embedding and the encoded
            prompts
          refiner (nn.Module or None): FocSAM's focus refiner (FocusRefiner), which rewrites
            the embedding around one object; None for plain SAM
          config (SamConfig or None): the architecture the model was built from (default
            SamConfig()); its pixel_mean / pixel_std become the non-persistent buffers of the
            same names, which the preprocessing (steadysam.preprocess.image_to_tensor) reads
            together with config.preprocess; the model itself never normalises images
        """
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.refiner = refiner
        self.config = config if config is not None else SamConfig()
        self.register_buffer("pixel_mean", torch.tensor(self.config.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.config.pixel_std), persistent=False)

    def plugins(self) -> list[nn.Module]:
        """The Stable-SAM plugins in the mask decoder (empty for SAM / FocSAM)."""
        from .stable_plugin import StablePlugin

        return [m for m in self.mask_decoder.modules() if isinstance(m, StablePlugin)]

    def plugin_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the Stable-SAM plugins (what RTS trains)."""
        for plugin in self.plugins():
            yield from plugin.parameters()

    def set_routing(self, mode: str, threshold: float | None = None) -> None:
        """Stable-SAM routing at inference: ``soft`` (mix by the router's weights) or ``hard``
        (deformed sampling iff its weight > threshold). Updates ``config.plugin`` too.

        Arguments:
          mode (str): ``soft`` or ``hard``
          threshold (float or None): the hard-routing threshold in [0, 1]; None keeps the
            current one
        """
        if self.config.plugin is None:
            raise ValueError("this model has no Stable-SAM plugin")
        changes = {"routing": mode}
        if threshold is not None:
            changes["hard_threshold"] = threshold
        plugin = dataclasses.replace(self.config.plugin, **changes)  # validates
        for m in self.plugins():
            m.routing, m.hard_threshold = plugin.routing, plugin.hard_threshold
        self.config = dataclasses.replace(self.config, plugin=plugin)

    @property
    def device(self) -> torch.device:
        """The device of the model's buffers."""
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """S, the side in pixels of the square model input."""
        return self.image_encoder.img_size

    @property
    def mask_threshold(self) -> float:
        """Logits above this value are foreground."""
        return 0.0

    @property
    def is_hq(self) -> bool:
        """Whether this is HQ-SAM (its decoder also needs the encoder's early features)."""
        return self.config.hq is not None

    def encode(
        self, images: torch.Tensor, early_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          images (torch.Tensor): B x 3 x S x S preprocessed images (normalised and padded by
            steadysam.preprocess.image_to_tensor; S = image_size)
          early_features (bool): also return the encoder's tokens after its first global
            block, which HQ-SAM's decoder needs (``decode(..., early_features=...)``)

        Returns:
          torch.Tensor: the image embeddings, B x C x S/16 x S/16 (C = prompt width,
            channels-last memory)
          torch.Tensor: only with early_features: B x S/16 x S/16 x encoder width
        """
        return self.image_encoder(images, early_features=early_features)

    def hq_features(self, embeddings: torch.Tensor, early_features: torch.Tensor) -> torch.Tensor:
        """HQ-SAM's global-local fusion of an image (``HQMaskDecoder.hq_features``), to pass to
        every ``decode`` on that image as ``hq_features``: B x C/8 x 4h x 4w."""
        if not self.is_hq:
            raise ValueError("hq_features: this model is not HQ-SAM")
        return self.mask_decoder.hq_features(embeddings, early_features)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        return_tokens: bool = False,
        *,
        early_features: torch.Tensor | None = None,
        hq_features: torch.Tensor | None = None,
        hq_token_only: bool | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """
        Prompt encoder + mask decoder on precomputed embeddings.

        Arguments:
          embeddings (torch.Tensor): image embeddings from ``encode`` (or ``refine``),
            B x C x h x w; a batch of 1 is shared by all B prompts
          points (tuple(torch.Tensor, torch.Tensor) or None): coordinates B x N x 2 as (x, y)
            pixels of the model's S x S input frame, and labels B x N (1 positive, 0 negative,
            -1 padding)
          boxes (torch.Tensor or None): B x 4 boxes (x0, y0, x1, y1) in input-frame pixels
          mask_input (torch.Tensor or None): B x 1 x 4h x 4w low-res logits, e.g. the previous
            prediction
          multimask_output (bool): True: the masks of mask tokens 1..num_multimask_outputs
            (3 in SAM); False: the single mask of mask token 0
          return_tokens (bool): whether to also return the selected mask tokens' transformer
            outputs (FocSAM's click-fused query for ``refine``; not for HQ-SAM)
          early_features (torch.Tensor or None): HQ-SAM only: the encoder's early features of
            the embeddings' image (``encode(..., early_features=True)``), B x h x w x D
          hq_features (torch.Tensor or None): HQ-SAM only, instead of early_features: the
            image's precomputed ``hq_features`` (saves recomputing them for every prompt)
          hq_token_only (bool or None): HQ-SAM only: True returns the HQ mask alone, False
            SAM's plus HQ's logits (the official predictor's ``hq_token_only``); None takes
            the model's default, ``config.hq.token_only``

        Returns:
          torch.Tensor: low-res mask logits, B x M x 4h x 4w (M = num_multimask_outputs or 1;
            HQ-SAM: always 1, in multimask mode SAM's best token by predicted IoU)
          torch.Tensor: predicted IoUs, B x M
          torch.Tensor: only with return_tokens: mask-token outputs, B x M x C
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        hq = {}
        if self.is_hq:
            token_only = self.config.hq.token_only if hq_token_only is None else hq_token_only
            hq = dict(
                early_features=early_features, hq_features=hq_features, hq_token_only=token_only
            )
        elif early_features is not None or hq_features is not None or hq_token_only is not None:
            raise ValueError("early_features / hq_features / hq_token_only: this is not HQ-SAM")
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            return_tokens=return_tokens,
            **hq,
        )

    def refine(
        self,
        embeddings: torch.Tensor,
        coarse_logits: torch.Tensor,
        query_token: torch.Tensor,
        expand_ratio: float | tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """
        FocSAM: the focus box from the coarse prediction, then the refiner
        (docs/focsam.md §1.2-1.3, §4).

        Arguments:
          embeddings (torch.Tensor): the original image embeddings, B x C x h x w (square grid)
          coarse_logits (torch.Tensor): B x 1 x 4h x 4w low-res logits of the coarse pass
            (``decode`` with mask token 0 on the original embeddings)
          query_token (torch.Tensor): the click-fused query, B x 1 x C (the token output of the
            same ``decode(..., return_tokens=True)`` call)
          expand_ratio (float, tuple or None): the focus-box expansion, one ratio or
            (h_ratio, w_ratio), each a float or a tensor of shape () or (B,); None uses the
            refiner's ``expand_ratio`` (1.4)

        Returns:
          torch.Tensor: the refined embeddings, B x C x h x w (channels-last memory), used in
            place of ``embeddings`` for this and every later click of the object

        Raises:
          RuntimeError: if the model has no refiner (plain SAM)
        """
        if self.refiner is None:
            raise RuntimeError("this model has no focus refiner (it is plain SAM, not FocSAM)")
        ratio = self.refiner.expand_ratio if expand_ratio is None else expand_ratio
        # The refiner only reads the box max-pooled to the embedding grid: build that directly.
        grid = focus_box_mask(coarse_logits, self.image_size, ratio, grid_size=embeddings.shape[-1])
        return self.refiner(embeddings, grid, query_token)
