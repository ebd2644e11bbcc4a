"""Builders: a model from a :class:`SamConfig`, and the architecture presets the model registry
(:mod:`steadysam.weights.registry`) names."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from .config import PluginConfig, SamConfig
from .focus_refiner import FocusRefiner
from .hq_mask_decoder import HQMaskDecoder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .stable_plugin import StablePlugin, site_module_name
from .transformer import TwoWayTransformer


def build_sam(config: SamConfig) -> Sam:
    """Instantiate (randomly initialised) SAM, FocSAM or HQ-SAM from a config."""
    c = config
    if c.hq is not None and c.refiner is not None:
        raise ValueError("HQ-SAM with a FocSAM refiner is not supported (config.hq and refiner)")
    if c.hq is not None and not c.encoder_global_attn_indexes:
        raise ValueError("HQ-SAM needs a global-attention block in the encoder (early feature)")
    grid = c.image_size // c.patch_size
    image_encoder = ImageEncoderViT(
        img_size=c.image_size,
        patch_size=c.patch_size,
        embed_dim=c.encoder_embed_dim,
        depth=c.encoder_depth,
        num_heads=c.encoder_num_heads,
        mlp_ratio=c.encoder_mlp_ratio,
        out_chans=c.prompt_embed_dim,
        norm_eps=c.encoder_norm_eps,
        window_size=c.encoder_window_size,
        global_attn_indexes=tuple(c.encoder_global_attn_indexes),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=c.prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(c.image_size, c.image_size),
        mask_in_chans=c.mask_in_chans,
    )
    decoder_class, extra = MaskDecoder, {}
    if c.hq is not None:
        decoder_class, extra = HQMaskDecoder, dict(vit_dim=c.encoder_embed_dim)
    mask_decoder = decoder_class(
        **extra,
        transformer_dim=c.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=c.decoder_depth,
            embedding_dim=c.prompt_embed_dim,
            num_heads=c.decoder_num_heads,
            mlp_dim=c.decoder_mlp_dim,
        ),
        num_multimask_outputs=c.num_multimask_outputs,
        iou_head_depth=c.iou_head_depth,
        iou_head_hidden_dim=c.iou_head_hidden_dim,
    )
    refiner: nn.Module | None = None
    if c.refiner is not None:
        r = c.refiner
        refiner = FocusRefiner(
            embed_dim=c.prompt_embed_dim,
            depth=r.depth,
            num_heads=r.num_heads,
            mlp_ratio=r.mlp_ratio,
            window_size=r.window_size,
            expand_ratio=r.expand_ratio,
        )
    model = Sam(image_encoder, prompt_encoder, mask_decoder, refiner, config=c)
    if c.plugin is not None:
        attach_plugin(model, c.plugin)
    return model.eval()


def attach_plugin(model: Sam, plugin: PluginConfig) -> Sam:
    """Add freshly initialised Stable-SAM plugins (one per site of ``plugin``) to ``model``'s
    mask decoder, in place. Fresh plugins are the identity: the model still computes SAM."""
    transformer = model.mask_decoder.transformer
    depth = len(transformer.layers)
    for site in plugin.sites:
        if site != "final_t2i" and int(site[len("layer") : -len("_t2i")]) >= depth:
            raise ValueError(
                f"plugin site {site!r} needs decoder depth > {site[5:-4]}, not {depth}"
            )
    if model.plugins():
        raise ValueError("the model already has a Stable-SAM plugin")
    dim = model.mask_decoder.transformer_dim
    # Output tokens before the prompts: iou, SAM's mask tokens and HQ-SAM's HQ token.
    tokens = 1 + model.mask_decoder.num_mask_tokens + (model.config.hq is not None)
    device = next(model.mask_decoder.parameters()).device
    for site in plugin.sites:
        owner_name, _, attr = site_module_name(site).rpartition(".")
        owner = transformer.get_submodule(owner_name) if owner_name else transformer
        # Same mode as the model it joins (hard routing applies only in eval mode).
        setattr(owner, attr, StablePlugin(dim, plugin, tokens).to(device).train(model.training))
    model.config = dataclasses.replace(model.config, plugin=plugin)
    return model


def _vit(embed_dim: int, depth: int, heads: int, global_idx: tuple[int, ...]) -> dict:
    return dict(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=global_idx,
    )


VIT_B = _vit(768, 12, 12, (2, 5, 8, 11))
VIT_L = _vit(1024, 24, 16, (5, 11, 17, 23))
VIT_H = _vit(1280, 32, 16, (7, 15, 23, 31))
# Small random-weight architectures for tests and the demo model: 256 px input, 16x16 grid.
VIT_TINY = dict(
    _vit(64, 2, 2, (1,)),
    encoder_window_size=8,
    image_size=256,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    iou_head_hidden_dim=64,
)
# FocSAM's ViT keeps nn.LayerNorm's default eps and reads BGR, /32-padded images
# (docs/focsam.md §2.1).
FOCSAM = dict(encoder_norm_eps=1e-5, preprocess="focsam")
