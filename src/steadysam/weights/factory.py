"""``build_model``: a model from a name, a checkpoint, or both."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..models.build import build_sam
from ..models.sam import Sam
from .files import CheckpointError, load_checkpoint, load_plugin_checkpoint, with_plugin
from .registry import DEFAULT_MODEL, model_record


def print_demo_notice() -> None:
    """The one-line notice shown whenever the demo model stands in for an unnamed model."""
    print(
        f"steadysam: no model named, using the small built-in demo model ({DEFAULT_MODEL}, "
        "trained on 800 COCO-MVal objects on a CPU); for real results name real weights: "
        "`steadysam download sam_vit_h` then --model sam_vit_h (see README)",
        file=sys.stderr,
    )


def weights_file(name: str, download: bool = False) -> Path:
    """The file holding a registered name's trained weights (shipped, or published / manual from
    the cache; ``download`` fetches published ones); an error saying how to get them otherwise.
    Stable-SAM names (``stable_*``): their base's file (the plugin is a file of its own)."""
    record = model_record(name)
    if record.shipped is not None:
        return record.shipped_path()
    if record.shipped_plugin is not None:
        return weights_file(record.plugin_of)
    from . import hub

    return hub.cached_weights(record.plugin_of or name, fetch=download)


def build_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    random_init: bool = False,
    download: bool = False,
    trusted: bool = False,
    plugin: str | os.PathLike | None = None,
) -> Sam:
    """Build a SAM / FocSAM / Stable-SAM model with trained weights.

    Arguments:
        name: a registered model (``steadysam.list_models()``; README, "Models"). A name means
            trained weights: the published file from the cache (``sam_vit_b/l/h``; see
            ``download``), a manually downloaded file placed in the cache (``focsam_vit_h``),
            or the shipped demo weights (``demo_sam``, ``demo_focsam``, ``demo_stable_sam``,
            ``demo_stable_focsam``). Names without published weights (``sam_tiny``,
            ``focsam_vit_b`` ...) need ``checkpoint`` or ``random_init``. No name and no
            checkpoint: the built-in ``demo_focsam``, with a one-line notice on stderr.
        checkpoint: an official SAM ``.pth``, an official FocSAM (mmengine) ``.pth``, or a
            steadysam ``.safetensors`` / training checkpoint. Alone: the architecture comes from
            the file, and a file that does not determine it fully is an error naming the open
            fields. With ``name``: the file must agree with the name's architecture in every
            field it determines; the name supplies the rest.
        random_init: a randomly initialised network of architecture ``name`` (tests,
            training from scratch); never implied.
        download: fetch published weights that are not in the cache yet (``steadysam.weights.
            hub``); without it a missing file is an error saying how to get it.
        trusted: allow full unpickling of a ``.pth`` that the safe loader refuses (this runs
            code from the file: only for files from a source you trust).
        plugin: a Stable-SAM plugin-only ``.safetensors`` file (RTS training writes one) put on
            top of the model's mask decoder; any SAM or FocSAM model whose decoder it was made
            for takes it. ``stable_<base>`` names (e.g. ``stable_sam_vit_l``) are the base with
            a plugin: their weights are the base's plus ``plugin`` (none were published).

    Loading is strict (every key and shape must match); the model's ``config.preprocess`` tells
    the image convention its weights expect.
    """
    if name is None and checkpoint is None:
        if random_init:
            raise ValueError("random_init=True needs a model name (the architecture)")
        name = DEFAULT_MODEL
        print_demo_notice()
    record = model_record(name) if name is not None else None
    if random_init:
        if checkpoint is not None or download:
            raise ValueError("random_init=True excludes checkpoint and download")
        if record.arch is None:
            raise ValueError(
                f"{name} is a trained model shipped with steadysam; for a random network name "
                "an architecture (e.g. sam_tiny, focsam_tiny)"
            )
        if plugin is None:
            return build_sam(record.config())
        base = record.plugin_of or name  # the file brings the plugin and its config
        return load_plugin_checkpoint(build_sam(model_record(base).config()), plugin)
    if record is not None and record.weights == "shipped":
        if checkpoint is not None or download:
            raise ValueError(f"{name} is a built-in model: do not pass checkpoint or download")
        if record.shipped_plugin is not None:
            if plugin is not None:
                raise ValueError(f"{name} has its built-in plugin: do not pass plugin")
            record, plugin = model_record(record.plugin_of), record.shipped_plugin_path()
        name, checkpoint = None, record.shipped_path()
        for path in (checkpoint, record.shipped_plugin_path()):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"built-in weights missing from the installation: {path}")
    elif record is not None and checkpoint is None:
        if record.plugin_of is not None and plugin is None:
            raise CheckpointError(
                f"no published weights exist for {name} (Stable-SAM's authors released none): "
                f"pass a plugin trained by RTS (plugin=FILE, CLI --plugin FILE) on "
                f"{record.plugin_of}'s weights, or random_init=True"
            )
        checkpoint = weights_file(name, download)
    elif download:
        raise ValueError("download applies to a model name alone, not with a checkpoint")
    # The architecture the file must be: a plugin file adds the plugin to its base afterwards.
    arch = None if record is None else (record.plugin_of or name) if plugin else name
    state, config, _ = load_checkpoint(checkpoint, trusted=trusted, architecture=arch)
    if plugin is not None:
        config, state = with_plugin(config, state, plugin)
    model = build_sam(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # load_checkpoint checked keys/shapes; this is a safety net
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: {e}") from e
    return model.eval()
