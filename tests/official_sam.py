"""Import the official segment-anything package without torchvision.

segment-anything imports torchvision at package import for two helpers. A minimal stand-in
reproduces exactly what SamPredictor uses: ``to_pil_image`` on an H x W x 3 uint8 array and
``resize`` of a PIL image, which torchvision implements as PIL bilinear ``Image.resize``."""

from __future__ import annotations

import sys
import types

import numpy as np
from PIL import Image


def _install_torchvision_stub() -> None:
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")

    def to_pil_image(pic: np.ndarray) -> Image.Image:
        return Image.fromarray(np.asarray(pic))

    def resize(img: Image.Image, size: list[int] | tuple[int, int]) -> Image.Image:
        h, w = size
        return img.resize((w, h), Image.BILINEAR)

    def _unavailable(*args, **kwargs):
        raise NotImplementedError("torchvision stand-in: not available in tests")

    functional.to_pil_image = to_pil_image
    functional.resize = resize
    boxes.batched_nms = _unavailable
    boxes.box_area = _unavailable
    tv.transforms = transforms
    transforms.functional = functional
    tv.ops = ops
    ops.boxes = boxes
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
            "torchvision.ops.boxes": boxes,
        }
    )


_install_torchvision_stub()

import segment_anything  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

__all__ = ["segment_anything", "SamPredictor", "build_official_sam"]


def build_official_sam(
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
    """segment-anything's _build_sam with every size a parameter (so tests can build tiny ones)."""
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
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_embed_dim, mlp_dim=decoder_mlp_dim, num_heads=8
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()
