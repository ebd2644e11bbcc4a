"""Import the official HQ-SAM package (segment-anything-hq, a test-only dependency installed
with --no-deps) without torchvision and timm.

torchvision gets the same stand-in as for segment-anything (official_sam). timm is imported
only by the TinyViT backbone of ``sam_hq_vit_tiny``, which the parity tests do not build: a
stand-in with inert names lets the package import, and raises if TinyViT is ever used."""

from __future__ import annotations

import sys
import types

import official_sam  # noqa: F401  (installs the torchvision stand-in first)


def _install_timm_stub() -> None:
    if "timm" in sys.modules:
        return

    def _unavailable(*args, **kwargs):
        raise NotImplementedError("timm stand-in: TinyViT is not available in tests")

    class DropPath:  # subclassed at import; instantiating it (TinyViT) fails
        def __init__(self, *args, **kwargs):
            _unavailable()

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = DropPath
    layers.to_2tuple = _unavailable
    layers.trunc_normal_ = _unavailable
    registry.register_model = lambda fn: fn  # decorators run at import
    timm.models = models
    models.layers = layers
    models.registry = registry
    sys.modules.update(
        {
            "timm": timm,
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
        }
    )


_install_timm_stub()

import segment_anything_hq  # noqa: E402
from segment_anything_hq import SamPredictor as HQSamPredictor  # noqa: E402
from segment_anything_hq.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoderHQ,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

__all__ = ["segment_anything_hq", "HQSamPredictor", "build_official_hq_sam"]


def build_official_hq_sam(
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    window_size: int = 14,
    image_size: int = 1024,
    prompt_embed_dim: int = 256,
    decoder_mlp_dim: int = 2048,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    """segment_anything_hq's _build_sam with every size a parameter (tiny ones for tests)."""
    import torch

    grid = image_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=depth,
            embed_dim=embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
            num_heads=num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=global_attn_indexes,
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_embed_dim, mlp_dim=decoder_mlp_dim, num_heads=8
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
            vit_dim=embed_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()
