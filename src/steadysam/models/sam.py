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
    refiner (None for plain SAM)."""

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        refiner: nn.Module | None = None,
        config: SamConfig | None = None,
    ) -> None:
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
        (deformed sampling iff its weight > threshold). Updates ``config.plugin`` too."""
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
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def mask_threshold(self) -> float:
        return 0.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S preprocessed images -> B x C x S/16 x S/16 embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
        return_tokens: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Prompts in the model's S x S input frame -> low-res logits B x M x 4h x 4w, IoU
        predictions B x M and, with return_tokens, mask-token outputs B x M x C."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            return_tokens=return_tokens,
        )

    def refine(
        self,
        embeddings: torch.Tensor,
        coarse_logits: torch.Tensor,
        query_token: torch.Tensor,
        expand_ratio: float | tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """FocSAM: focus box from coarse logits B x 1 x 4h x 4w, then the refiner on the
        embeddings B x C x h x w with the click-fused query B x 1 x C -> refined B x C x h x w."""
        if self.refiner is None:
            raise RuntimeError("this model has no focus refiner (it is plain SAM, not FocSAM)")
        ratio = self.refiner.expand_ratio if expand_ratio is None else expand_ratio
        # The refiner only reads the box max-pooled to the embedding grid: build that directly.
        grid = focus_box_mask(coarse_logits, self.image_size, ratio, grid_size=embeddings.shape[-1])
        return self.refiner(embeddings, grid, query_token)
