"""``build_model``: a model from a name, a checkpoint, or both."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..models.build import PLUGIN_BASES, build_sam, sam_config
from ..models.sam import Sam
from .files import (
    CheckpointError,
    load_checkpoint,
    load_plugin_checkpoint,
    reconcile_config,
    with_plugin,
)

# Small models trained on this project's CPUs and shipped in the package (README, "Demo
# model"): the default when no model is named, so a fresh offline machine works out of the box.
WEIGHTS_DIR = Path(__file__).resolve().parent
DEMO_MODELS = {
    "demo_focsam": WEIGHTS_DIR / "demo_focsam.safetensors",
    "demo_sam": WEIGHTS_DIR / "demo_sam.safetensors",  # the same model without the refiner
}
# Stable-SAM demos: one plugin file, trained with RTS on demo_sam, on either demo model.
DEMO_PLUGIN = WEIGHTS_DIR / "demo_stable_plugin.safetensors"
DEMO_PLUGIN_MODELS = {"demo_stable_sam": "demo_sam", "demo_stable_focsam": "demo_focsam"}
DEFAULT_MODEL = "demo_focsam"


def print_demo_notice() -> None:
    """The one-line notice shown whenever the demo model stands in for an unnamed model."""
    print(
        f"steadysam: no model named, using the small built-in demo model ({DEFAULT_MODEL}, "
        "trained on 800 COCO-MVal objects on a CPU); for real results pass real weights: "
        "`steadysam download sam_vit_h` then --checkpoint PATH, or "
        "build_model('sam_vit_h', pretrained=True) (see README)",
        file=sys.stderr,
    )


def build_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    *,
    trusted: bool = False,
    plugin: str | os.PathLike | None = None,
) -> Sam:
    """Build a SAM / FocSAM model.

    Arguments:
        name: a registered architecture (``steadysam.MODEL_CONFIGS``: sam_vit_b/l/h,
            focsam_vit_b/l/h, sam_tiny, focsam_tiny; alone: random weights), or a built-in
            trained model (``demo_focsam``, ``demo_sam``). No name and no checkpoint: the
            built-in ``demo_focsam``, with a one-line notice on stderr.
        checkpoint: an official SAM ``.pth``, an official FocSAM (mmengine) ``.pth`` or a
            steadysam ``.safetensors`` file. Alone: the architecture is inferred from it. With
            ``name``: both architectures must agree (else :class:`CheckpointError` naming the
            differences); settings invisible in tensor shapes come from ``name``.
        pretrained: download the published weights of ``name`` (:mod:`.hub`) and load them.
        trusted: allow full unpickling of a ``.pth`` that the safe loader refuses (this runs
            code from the file: only for files from a source you trust).
        plugin: a Stable-SAM plugin-only ``.safetensors`` file (RTS training writes one) put on
            top of the model's mask decoder; any SAM or FocSAM model whose decoder it was made
            for takes it. Names ``stable_<base>`` (e.g. ``stable_sam_vit_l``,
            ``stable_focsam_vit_h``) are the base architectures with the plugin; with a base
            checkpoint they need ``plugin`` (no published Stable-SAM weights exist).
            ``demo_stable_sam`` / ``demo_stable_focsam`` are the built-in demos with the
            built-in plugin.

    Loading is strict (every key and shape must match); the model's ``config.preprocess`` tells
    the image convention its weights expect.
    """
    if name is None and checkpoint is None:
        name = DEFAULT_MODEL
        print_demo_notice()
    if name in DEMO_PLUGIN_MODELS:
        if plugin is not None:
            raise ValueError(f"{name} has its built-in plugin: do not pass plugin")
        if not DEMO_PLUGIN.is_file():
            raise FileNotFoundError(f"built-in weights missing: {DEMO_PLUGIN}")
        name, plugin = DEMO_PLUGIN_MODELS[name], DEMO_PLUGIN
    if name in DEMO_MODELS:
        if checkpoint is not None or pretrained:
            raise ValueError(f"{name} is a built-in model: do not pass checkpoint or pretrained")
        if not DEMO_MODELS[name].is_file():
            raise FileNotFoundError(f"built-in weights missing: {DEMO_MODELS[name]}")
        name, checkpoint = None, DEMO_MODELS[name]
    if pretrained:
        if checkpoint is not None:
            raise ValueError("pass pretrained=True or checkpoint=PATH, not both")
        if name is None:
            raise ValueError("pretrained=True needs a model name, e.g. 'sam_vit_b'")
        from . import hub

        base = PLUGIN_BASES.get(name, name)
        if base != name and plugin is None:
            raise ValueError(
                f"no published weights exist for {name} (Stable-SAM's authors released none): "
                f"use build_model({name!r}, pretrained=True, plugin=FILE) with a plugin trained "
                "by RTS (configs/stablesam_rts.yaml)"
            )
        checkpoint = hub.download(base)
    if checkpoint is None:
        if plugin is None:
            return build_sam(sam_config(name))
        # The file brings the plugin (and its config): build the base it goes on.
        return load_plugin_checkpoint(build_sam(sam_config(PLUGIN_BASES.get(name, name))), plugin)
    state, config, fmt = load_checkpoint(checkpoint, trusted=trusted)
    if name is not None:
        base = PLUGIN_BASES.get(name, name)
        if config.plugin is not None:  # a merged file: the name must name the combination
            config = reconcile_config(name, config, fmt)
        elif base != name and plugin is None:
            raise CheckpointError(
                f"{name} has a Stable-SAM plugin but {str(checkpoint)!r} holds none: pass the "
                f"plugin file (plugin=FILE, CLI --plugin FILE), or use {base!r}"
            )
        else:  # the base weights against the base architecture; the plugin file comes next
            config = reconcile_config(base, config, fmt)
    if plugin is not None:
        config, state = with_plugin(config, state, plugin)
    model = build_sam(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # load_checkpoint checked keys/shapes; this is a safety net
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: {e}") from e
    return model.eval()
