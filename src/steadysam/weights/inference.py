"""Infer a model's architecture (:class:`SamConfig`) from the tensor shapes of a state dict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from ..models.config import PLUGIN_SITES, HQConfig, PluginConfig, RefinerConfig, SamConfig
from ..models.stable_plugin import is_plugin_key, site_module_name
from .formats import CheckpointError, detect_format, file_key, to_model_layout


def _indices(state: Mapping[str, Any], prefix: str) -> int:
    """Number of numbered children under ``prefix`` (max index + 1; gaps become missing keys)."""
    found = [int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)]
    return max(found) + 1 if found else 0


def infer_config(state_dict: Mapping[str, Any], format: str | None = None) -> SamConfig:
    """The architecture of a state dict (our or FocSAM's layout), read from tensor shapes.

    Read from shapes: encoder width (patch_embed), depth (number of blocks), head dim (width of
    the relative-position tables; heads = width / head dim), window size and global blocks (table
    length 2*ws-1 for windowed blocks, 2*grid-1 for global ones), image size (pos_embed grid x
    patch), MLP ratio, prompt width, mask_in_chans, decoder depth / MLP width / number of mask
    tokens, IoU head depth and width, refiner depth and MLP ratio.

    Not in shapes, so set by rule: decoder heads 8 (all official models); refiner heads =
    width / 32 (FocSAM's head width; 8 at width 256, 2 for the tiny width-64 models) and refiner
    window = min(16, grid / 2) (FocSAM's 16 at grid 64, 8 for tiny grids). A block whose window
    equals the whole grid is reported as global (the computation is identical). HQ-SAM: a
    ``mask_decoder.hf_token.weight`` key (official sam_hq_vit_*.pth); its widths follow from
    the encoder's and decoder's, and the strict key / shape check verifies them.

    Conventions: FocSAM layout (or, for unknown provenance, a refiner present) gives LayerNorm eps
    1e-5 and ``focsam`` preprocessing (docs/focsam.md §2.1, §1.1); plain SAM gives 1e-6 and ``sam``.
    """
    layout = detect_format(state_dict)
    fmt = format or layout
    state, _ = to_model_layout(state_dict, layout)
    names = "focsam" if fmt == "focsam" else layout  # errors name keys as the file does

    def shape(key: str) -> torch.Size:
        if key in state:
            return state[key].shape
        part = key.split(".")[0] + "."
        absent = not any(k.startswith(part) for k in state)
        note = f" (no {file_key(part, names)}* keys at all)" if absent else ""
        name = file_key(key, names)
        raise CheckpointError(f"cannot infer the architecture: {name!r} is missing{note}", [name])

    enc = "image_encoder."
    embed_dim, _, _, patch = shape(enc + "patch_embed.proj.weight")
    grid = shape(enc + "pos_embed")[1]
    depth = _indices(state, enc + "blocks.")
    head_dim = shape(enc + "blocks.0.attn.rel_pos_h")[1]
    if embed_dim % head_dim:
        raise CheckpointError(f"encoder width {embed_dim} is not a multiple of head dim {head_dim}")
    tables = (state.get(f"{enc}blocks.{i}.attn.rel_pos_h") for i in range(depth))
    lengths = {i: t.shape[0] for i, t in enumerate(tables) if t is not None}  # gaps: missing
    global_idx = tuple(i for i, n in lengths.items() if n == 2 * grid - 1)
    windowed = [n for n in lengths.values() if n != 2 * grid - 1]
    window = (Counter(windowed).most_common(1)[0][0] + 1) // 2 if windowed else 0
    prompt_dim = shape(enc + "neck.0.weight")[0]
    dec = "mask_decoder."
    refiner = None
    if any(k.startswith("refiner.") for k in state):
        refiner = RefinerConfig(
            depth=_indices(state, "refiner.blocks."),
            num_heads=prompt_dim // 32 if prompt_dim % 32 == 0 else 1,
            mlp_ratio=shape("refiner.blocks.0.img2cls.mlp.0.weight")[0] / prompt_dim,
            window_size=max(1, min(16, grid // 2)),
        )
    plugin = _infer_plugin(state, shape)
    focsam = fmt == "focsam" or (fmt != "sam" and refiner is not None)
    return SamConfig(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_idx,
        encoder_window_size=window,
        encoder_mlp_ratio=shape(enc + "blocks.0.mlp.lin1.weight")[0] / embed_dim,
        encoder_norm_eps=1e-5 if focsam else 1e-6,
        image_size=grid * patch,
        patch_size=patch,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=_indices(state, dec + "transformer.layers."),
        decoder_mlp_dim=shape(dec + "transformer.layers.0.mlp.lin1.weight")[0],
        num_multimask_outputs=shape(dec + "mask_tokens.weight")[0] - 1,
        iou_head_depth=_indices(state, dec + "iou_prediction_head.layers."),
        iou_head_hidden_dim=shape(dec + "iou_prediction_head.layers.0.weight")[0],
        preprocess="focsam" if focsam else "sam",
        refiner=refiner,
        plugin=plugin,
        hq=HQConfig() if dec + "hf_token.weight" in state else None,
    )


def _infer_plugin(state: Mapping[str, Any], shape) -> PluginConfig | None:
    """Stable-SAM plugin sites, router width and depthwise kernel from shapes; the settings
    invisible in shapes (PE mode, routing token, sampled map, offset bound) keep PluginConfig's
    defaults. steadysam files store the whole PluginConfig, so this is for bare state dicts."""
    if not any(is_plugin_key(k) for k in state):
        return None
    prefix = "mask_decoder.transformer."
    sites = tuple(
        s for s in PLUGIN_SITES if any(k.startswith(prefix + site_module_name(s)) for k in state)
    )
    if not sites:
        bad = [k for k in state if is_plugin_key(k)]
        raise CheckpointError(f"plugin keys at no known plugin site: {bad[:5]}", [], bad)
    first = prefix + site_module_name(sites[0])
    return PluginConfig(
        sites=sites,
        drp_hidden=shape(first + ".drp.fc1.weight")[0],
        kernel_size=shape(first + ".dsp.dw.weight")[-1],
    )
