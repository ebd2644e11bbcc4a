"""Read and write SAM / FocSAM weights: file formats, key layouts, strict loading.

Three formats are read, detected automatically (:func:`detect_format`):

``sam``        official segment-anything ``.pth``: a flat state dict with ``image_encoder.``,
               ``prompt_encoder.``, ``mask_decoder.`` keys (also wrapped in ``model`` /
               ``state_dict``). Our key layout *is* this layout.
``focsam``     official FocSAM files (docs/focsam.md §2.2, §2.3, §4.10): an mmengine dict whose
               ``state_dict`` uses ``backbone.`` / ``neck.`` (the prompt encoder) /
               ``decode_head.`` / ``refine_head.``; or the flat output of FocSAM's SAM converter
               (no ``refine_head.``: SAM weights in FocSAM layout). ``meta``, ``optimizer`` etc.
               are ignored.
``steadysam``  our own safetensors files with the :class:`SamConfig` as JSON in the metadata
               (:func:`save_checkpoint`); also any state dict in our layout with ``refiner.``.

Stable-SAM plugins are also written alone (:func:`save_plugin_checkpoint`): the plugin's tensors
under their model keys and its :class:`PluginConfig` in the metadata. Such a file goes on top of
any SAM / FocSAM checkpoint whose decoder it fits (:func:`load_plugin_checkpoint`,
``build_model(..., plugin=FILE)``); a merged model is an ordinary steadysam file.

Loading is strict: a missing key, an unexpected key or a shape mismatch raises
:class:`CheckpointError` listing them. Format detection and the only key renames
(:data:`FOCSAM_KEY_MAP`) live in :mod:`steadysam.weights.formats`; files without a stored config get
theirs from tensor shapes (:mod:`steadysam.weights.inference`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..models.build import attach_plugin, build_sam
from ..models.config import PARTS, PLUGIN_PART, PluginConfig, SamConfig
from ..models.hq_mask_decoder import HQ_PART, hq_parameters
from ..models.sam import Sam
from ..models.stable_plugin import is_plugin_key
from .formats import (
    CONFIG_METADATA_KEY,
    CheckpointError,
    abbrev,
    detect_format,
    file_key,
    to_model_layout,
    unwrap_state_dict,
)
from .inference import infer_config
from .registry import architecture_names, sam_config

# Fields an architecture can be told apart by from tensor shapes alone (see infer_config).
SHAPE_FIELDS = tuple(
    """encoder_embed_dim encoder_depth encoder_num_heads encoder_global_attn_indexes
    encoder_window_size encoder_mlp_ratio image_size patch_size prompt_embed_dim mask_in_chans
    decoder_depth decoder_mlp_dim num_multimask_outputs iou_head_depth iou_head_hidden_dim
    refiner.depth refiner.mlp_ratio plugin.sites plugin.drp_hidden plugin.kernel_size""".split()
)
# Architecture fields invisible in shapes. A file that stores its config fixes them; official
# files imply their authors' conventions; anything else needs the caller to name them.
HIDDEN_FIELDS = (
    "encoder_norm_eps",
    "preprocess",
    "decoder_num_heads",
    "refiner.num_heads",
    "refiner.window_size",
    "plugin.pe_mode",
    "plugin.drp_token",
    "plugin.sample_source",
    "plugin.offset_range",
)
# Metadata key of plugin-only files: {"plugin": PluginConfig, "decoder": what it must sit on}.
PLUGIN_METADATA_KEY = "steadysam.plugin"


# -- architecture comparison ---------------------------------------------------------------
def _field(config: SamConfig, name: str) -> Any:
    part, _, sub = name.partition(".")
    if sub:
        inner = getattr(config, part)
        return None if inner is None else getattr(inner, sub)
    return getattr(config, name)


def config_differences(a: SamConfig, b: SamConfig, names: Iterable[str]) -> list[tuple]:
    """(field, value in a, value in b) for each differing field; refiner / plugin / HQ-SAM
    presence first."""
    for part in ("refiner", "plugin", "hq"):
        if (getattr(a, part) is None) != (getattr(b, part) is None):
            return [(part, getattr(a, part) is not None, getattr(b, part) is not None)]
    return [(n, _field(a, n), _field(b, n)) for n in names if _field(a, n) != _field(b, n)]


# The published models whose authors' code fixes the hidden fields of their official layouts.
OFFICIAL = {
    "sam": ("sam_vit_b", "sam_vit_l", "sam_vit_h"),
    "focsam": ("focsam_vit_h",),
    # segment-anything-hq builds HQ-SAM ViT-B/L/H with SAM's conventions (docs/hq-sam.md).
    "hq": ("hq_sam_vit_b", "hq_sam_vit_l", "hq_sam_vit_h"),
}


def undetermined_fields(config: SamConfig, fmt: str, stored: bool) -> tuple[str, ...]:
    """The hidden fields of ``config`` (inferred from a file) that the file does not determine.

    A stored config determines everything. A file in an official layout with the shapes of a
    published model is that model: segment-anything builds SAM ViT-B/L/H with 8 decoder heads,
    LayerNorm eps 1e-6 and its preprocessing; FocSAM's code ViT-H with eps 1e-5, its
    preprocessing and a refiner of 8 heads, window 16 (FocSAM's SAM converter writes SAM
    ViT-B/L/H in its layout: FocSAM's conventions, no refiner). Neither defines the Stable-SAM
    plugin. Anything else (other sizes, our layout without a stored config: ``torch.save`` of a
    steadysam model) may come from any config: every hidden field of it is open."""
    if stored:
        return ()
    applicable = [
        f for f in HIDDEN_FIELDS if "." not in f or getattr(config, f.split(".")[0]) is not None
    ]
    published = OFFICIAL.get(fmt, ())
    if fmt == "focsam" and config.refiner is None:
        published = OFFICIAL["sam"]
    if fmt == "sam" and config.hq is not None:  # official HQ-SAM files use SAM's key layout
        published = OFFICIAL["hq"]
    bare = dataclasses.replace(config, plugin=None)
    if any(not config_differences(bare, sam_config(n), SHAPE_FIELDS) for n in published):
        return tuple(f for f in applicable if f.startswith("plugin."))
    return tuple(applicable)


def reconcile_config(
    named: SamConfig, inferred: SamConfig, fmt: str, open_fields: tuple[str, ...], label: str
) -> SamConfig:
    """The config for loading a file as the architecture ``named``: every field the file
    determines must agree (shapes always; hidden fields when the file stores its config). For
    official files a name overrides the format's conventions (e.g. sam_vit_h conventions for SAM
    weights in FocSAM layout); fields the file leaves open come from the name."""
    stored = fmt == "steadysam" and not open_fields
    checked = SHAPE_FIELDS + (HIDDEN_FIELDS if stored else ())
    diff = config_differences(inferred, named, checked)
    if diff:
        has = {True: "has one", False: "has none"}
        what = "; ".join(
            f"{f}: checkpoint {has[x]}, {label} {has[y]}"
            if f in ("refiner", "plugin", "hq")
            else f"{f}: checkpoint {x!r}, {label} {y!r}"
            for f, x, y in diff
        )
        if diff[0][0] == "plugin" and not diff[0][1]:
            what += " (a plugin file goes on top: plugin=FILE, CLI --plugin FILE)"
        raise CheckpointError(f"checkpoint architecture differs from {label}: {what}")
    return inferred if stored else named


class AmbiguousArchitecture(CheckpointError):
    """A file whose architecture is not fully determined by its tensors and metadata."""


def _ambiguous(path: str, config: SamConfig, open_fields: tuple[str, ...]) -> CheckpointError:
    names = matching_names(config)
    hint = f"; registered names with its shapes: {', '.join(names)}" if names else ""
    return AmbiguousArchitecture(
        f"cannot tell the architecture of {path!r}: it stores no config and "
        f"{', '.join(open_fields)} cannot be read from tensor shapes. Name the architecture it "
        f"was built with: --model NAME (Python: build_model(NAME, checkpoint=PATH), or "
        f"load_checkpoint(PATH, architecture=NAME or SamConfig)){hint}. Files written by "
        "steadysam (save_checkpoint, training) store their config."
    )


def matching_names(config: SamConfig) -> list[str]:
    """Registered model names whose shape-visible architecture equals ``config``."""
    return [
        n
        for n in architecture_names()
        if not config_differences(config, sam_config(n), SHAPE_FIELDS)
    ]


def describe(config: SamConfig) -> str:
    """One-line summary of an architecture."""
    c = config
    ref = "none"
    if c.refiner is not None:
        r = c.refiner
        ref = f"depth {r.depth}, {r.num_heads} heads, window {r.window_size}"
    plugin = f"; Stable-SAM plugin: {describe_plugin(c.plugin)}" if c.plugin is not None else ""
    if c.hq is not None:
        plugin = f"; HQ-SAM (hq_token_only {c.hq.token_only})" + plugin
    return (
        f"ViT width {c.encoder_embed_dim}, depth {c.encoder_depth}, {c.encoder_num_heads} heads, "
        f"window {c.encoder_window_size}, global blocks {list(c.encoder_global_attn_indexes)}, "
        f"{c.image_size}px input (patch {c.patch_size}); prompt width {c.prompt_embed_dim}; "
        f"decoder depth {c.decoder_depth}, MLP {c.decoder_mlp_dim}, "
        f"{c.num_multimask_outputs} multimask outputs; refiner: {ref}{plugin}"
    )


def describe_plugin(p: PluginConfig) -> str:
    """One-line summary of a Stable-SAM plugin config."""
    bound = "unbounded" if p.offset_range is None else f"tanh x {p.offset_range:g} cells"
    return (
        f"sites {list(p.sites)}, PE {p.pe_mode}, router on {p.drp_token} (width "
        f"{p.drp_hidden}, {p.routing}), {p.kernel_size}x{p.kernel_size} depthwise, samples "
        f"{p.sample_source} features, offsets {bound}"
    )


# -- validation ----------------------------------------------------------------------------
def _meta_model(config: SamConfig) -> torch.nn.Module:
    # Shapes only: the meta device allocates nothing, so even ViT-H costs no memory.
    with torch.device("meta"):
        return build_sam(config)


def expected_shapes(config: SamConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``config``'s model and its shape."""
    return {k: tuple(v.shape) for k, v in _meta_model(config).state_dict().items()}


def parameter_counts(config: SamConfig) -> dict[str, int]:
    """Learnable parameters per part (image_encoder, prompt_encoder, mask_decoder, refiner, the
    Stable-SAM plugin and HQ-SAM's additions, the last two counted apart from the decoder they
    sit in)."""
    model = _meta_model(config)
    counts = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in PARTS
        if getattr(model, part, None) is not None
    }
    plugin = sum(p.numel() for p in model.plugin_parameters())
    if plugin:
        counts["mask_decoder"] -= plugin
        counts[PLUGIN_PART] = plugin
    if config.hq is not None:
        hq = sum(p.numel() for p in hq_parameters(model.mask_decoder))
        counts["mask_decoder"] -= hq
        counts[HQ_PART] = hq
    return counts


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    config: SamConfig,
    fmt: str = "sam",
    origin: Mapping[str, str] | None = None,
    source: str = "checkpoint",
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` (our layout) has exactly the keys and
    shapes of ``config``'s model. Keys are reported under their names in the file."""
    origin = origin or {}
    expected = expected_shapes(config)
    missing = [file_key(k, fmt) for k in expected if k not in state]
    unexpected = [origin.get(k, k) for k in state if k not in expected]
    mismatched = [
        f"{origin.get(k, k)} {tuple(v.shape)} vs {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {label}: {abbrev(items)}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", mismatched),
            )
            if items
        ]
        raise CheckpointError(
            f"{source} ({fmt} layout) does not match the architecture ({describe(config)}): "
            + "; ".join(parts),
            missing,
            unexpected,
            mismatched,
        )


# -- files ---------------------------------------------------------------------------------
class _Inert:
    """Stand-in for a pickled class or function outside the tensor whitelist (mmengine's
    HistoryBuffer in ``message_hub``, numpy scalars in ``meta``): it accepts any arguments and
    does nothing, so such entries load as placeholders and no code from the file ever runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _reason(e: BaseException) -> str:
    """The informative line of torch.load's long multi-line messages."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Check the documentation")]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _torch_load(path: Path, trusted: bool) -> Any:
    zipped = zipfile.is_zipfile(path)
    if not zipped:
        with open(path, "rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive, or (legacy format) a pickle stream, whose first
        # byte is the PROTO opcode 0x80; anything else fails deep in the unpickler.
        if head[:1] != b"\x80":
            what = "an empty file" if not head else "neither a zip archive nor a pickle stream"
            raise CheckpointError(f"cannot read {str(path)!r}: not a PyTorch checkpoint ({what})")
    # mmap keeps multi-GB files out of RAM until copied into the model; zip format only.
    kw: dict[str, Any] = dict(map_location="cpu", mmap=zipped)
    if trusted:
        return torch.load(path, weights_only=False, **kw)
    try:
        return torch.load(path, weights_only=True, **kw)
    except pickle.UnpicklingError as e:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path) if zipped else []
        if not names:
            hint = (
                ""
                if zipped
                else (
                    "; an old-format (non-zip) checkpoint from a source you trust can be read with "
                    "trusted=True (CLI: --trust-checkpoint)"
                )
            )
            raise CheckpointError(
                f"cannot read {str(path)!r} as a torch checkpoint: {_reason(e)}{hint}"
            ) from e
    stand_ins = [(type(f"Inert[{n}]", (_Inert,), {}), n) for n in names]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, weights_only=True, **kw)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"cannot read {str(path)!r} safely: it holds pickled Python objects besides tensors "
            f"({_reason(e)}). Loading it fully runs code from the file; only if you trust its "
            "source, pass trusted=True (CLI: --trust-checkpoint)"
        ) from e


def read_checkpoint(
    path: str | os.PathLike, trusted: bool = False
) -> tuple[Any, dict[str, str] | None]:
    """The raw loaded object (a state dict or a wrapping dict) and safetensors metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
            return load_file(str(path)), metadata
        except SafetensorError as e:
            raise CheckpointError(f"cannot read {str(path)!r}: {e}") from e
    try:
        return _torch_load(path, trusted), None
    except CheckpointError:
        raise
    # A file that is not a checkpoint makes the unpickler fail in many ways (a text file: a
    # KeyError on its memo table); each is the same answer for the user.
    except (
        RuntimeError,
        EOFError,
        ValueError,
        ImportError,
        AttributeError,
        OSError,
        KeyError,
        IndexError,
        TypeError,
    ) as e:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a torch checkpoint: {_reason(e)}"
        ) from e


def _stored_config(raw: Any, metadata: Mapping[str, str] | None, path: str) -> SamConfig | None:
    """The config a file stores: safetensors metadata (save_checkpoint) or the ``config`` entry
    beside ``model`` in a training checkpoint; None when it stores none."""
    text = metadata.get(CONFIG_METADATA_KEY) if metadata else None
    entry = raw.get("config") if isinstance(raw, Mapping) and "model" in raw else None
    if not isinstance(entry, Mapping) or "encoder_embed_dim" not in entry:
        entry = None  # training checkpoints from before they stored the model's config
    if text is None and entry is None:
        return None
    try:
        return SamConfig.from_dict(json.loads(text) if text is not None else dict(entry))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path!r}: invalid stored config: {e}") from e


def stored_config(path: str | os.PathLike) -> SamConfig:
    """The config stored in a steadysam ``.safetensors`` file, read from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {str(path)!r}: {e}") from e
    config = _stored_config(None, metadata, str(path))
    if config is None:
        raise CheckpointError(f"{str(path)!r} stores no steadysam config")
    return config


def _read_weights(path: str | os.PathLike, trusted: bool) -> tuple:
    """(state in our layout, config, format, fields left open, our key -> file key)."""
    raw, metadata = read_checkpoint(path, trusted)
    if metadata and PLUGIN_METADATA_KEY in metadata:
        raise CheckpointError(
            f"{str(path)!r} is a Stable-SAM plugin file (plugin weights only): load it on top "
            "of SAM / FocSAM weights with plugin=PATH (CLI: --plugin PATH)"
        )
    fmt = detect_format(raw, metadata)
    state, origin = to_model_layout(raw, fmt)
    stored = _stored_config(raw, metadata, str(path))
    if stored is not None:
        return state, stored, "steadysam", (), origin
    config = infer_config(state, fmt)
    return state, config, fmt, undetermined_fields(config, fmt, stored=False), origin


def load_checkpoint(
    path: str | os.PathLike,
    trusted: bool = False,
    architecture: str | SamConfig | None = None,
) -> tuple[dict[str, torch.Tensor], SamConfig, str]:
    """(state dict in our key layout, its architecture, format) of a checkpoint file, checked
    strictly against the architecture.

    Arguments:
        path: an official SAM / FocSAM ``.pth``, a steadysam ``.safetensors`` or training
            checkpoint, or a bare ``torch.save(state_dict)``.
        trusted: allow full unpickling of ``.pth`` files the safe loader refuses.
        architecture: what the caller means to load (a registered name or a SamConfig). The
            file must agree with it in every field the file determines; it supplies the fields
            the file leaves open. Without it, a file that leaves fields open (no stored config,
            settings invisible in tensor shapes) is an :class:`AmbiguousArchitecture` error
            naming them: the architecture is never guessed.
    """
    state, config, fmt, open_fields, origin = _read_weights(path, trusted)
    label = str(path)
    if architecture is not None:
        named = sam_config(architecture) if isinstance(architecture, str) else architecture
        name = repr(architecture) if isinstance(architecture, str) else "the given SamConfig"
        config = reconcile_config(named, config, fmt, open_fields, name)
    check_state_dict(state, config, fmt, origin, source=f"checkpoint {label!r}")
    if architecture is None and open_fields:  # after the key check: broken files say so first
        raise _ambiguous(label, config, open_fields)
    return state, config, fmt


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and config as safetensors (the ``steadysam`` format), atomically:
    a temporary file in the same folder, then ``os.replace``, so readers never see half a file."""
    config: SamConfig = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return _write_safetensors(path, state, {CONFIG_METADATA_KEY: json.dumps(config.to_dict())})


def _write_safetensors(
    path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"format": "pt", **metadata})
    return path


# -- Stable-SAM plugin files -----------------------------------------------------------------
def _plugin_fit(config: SamConfig) -> dict[str, int]:
    """What a plugin file needs of the model it goes on: decoder width, depth, mask tokens."""
    return {
        "prompt_embed_dim": config.prompt_embed_dim,
        "decoder_depth": config.decoder_depth,
        "num_multimask_outputs": config.num_multimask_outputs,
    }


def save_plugin_checkpoint(model: Sam, path: str | os.PathLike) -> Path:
    """Write only ``model``'s Stable-SAM plugin (tensors under their model keys, the
    :class:`PluginConfig` and the decoder it fits in the metadata) as safetensors, atomically."""
    config: SamConfig = model.config
    if config.plugin is None:
        raise ValueError("the model has no Stable-SAM plugin to save")
    state = {
        k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if is_plugin_key(k)
    }
    meta = {"plugin": dataclasses.asdict(config.plugin), "decoder": _plugin_fit(config)}
    return _write_safetensors(path, state, {PLUGIN_METADATA_KEY: json.dumps(meta)})


def read_plugin_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, torch.Tensor], PluginConfig, dict[str, int]]:
    """(plugin tensors, their PluginConfig, the decoder they fit) of a plugin-only file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"plugin file not found: {str(path)!r}")
    raw, metadata = read_checkpoint(path)
    if not metadata or PLUGIN_METADATA_KEY not in metadata:
        what = "a full model checkpoint" if metadata or isinstance(raw, dict) else "not one"
        raise CheckpointError(
            f"{str(path)!r} is not a Stable-SAM plugin file ({what}; plugin files are written by "
            "save_plugin_checkpoint / RTS training as plugin.safetensors)"
        )
    try:
        meta = json.loads(metadata[PLUGIN_METADATA_KEY])
        plugin = PluginConfig.from_dict(meta["plugin"])
        fit = {k: int(v) for k, v in meta["decoder"].items()}
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{str(path)!r}: invalid plugin metadata: {e}") from e
    return unwrap_state_dict(raw), plugin, fit


def with_plugin(
    config: SamConfig, state: dict[str, torch.Tensor], path: str | os.PathLike
) -> tuple[SamConfig, dict[str, torch.Tensor]]:
    """A base model's (config, state) extended by the plugin file at ``path``, checked strictly:
    the base must have no plugin, its decoder must be the one the plugin was trained on, and the
    file must hold exactly the plugin's tensors."""
    pstate, plugin, fit = read_plugin_checkpoint(path)
    if config.plugin is not None:
        raise CheckpointError(
            f"cannot add plugin {str(path)!r}: the model already has a Stable-SAM plugin"
        )
    have = _plugin_fit(config)
    diff = [f"{k}: plugin {v}, model {have.get(k)}" for k, v in fit.items() if have.get(k) != v]
    if diff:
        raise CheckpointError(
            f"plugin {str(path)!r} was made for another mask decoder: " + "; ".join(diff)
        )
    foreign = [k for k in pstate if not is_plugin_key(k)]
    if foreign:
        raise CheckpointError(
            f"plugin {str(path)!r} holds tensors that are not the plugin's: {abbrev(foreign)}",
            [],
            foreign,
        )
    merged = dataclasses.replace(config, plugin=plugin)
    full = {**state, **pstate}
    check_state_dict(full, merged, source=f"plugin {str(path)!r} on its model")
    return merged, full


def load_plugin_checkpoint(model: Sam, path: str | os.PathLike) -> Sam:
    """Attach the plugin in ``path`` to ``model`` (SAM or FocSAM without a plugin) in place,
    strictly (see :func:`with_plugin`)."""
    config, merged = with_plugin(model.config, model.state_dict(), path)
    attach_plugin(model, config.plugin)
    plugin_state = {k: merged[k] for k in merged if is_plugin_key(k)}
    model.load_state_dict(plugin_state, strict=False)
    return model


def describe_checkpoint(path: str | os.PathLike, trusted: bool = False) -> dict[str, Any]:
    """Everything ``steadysam info`` shows about a checkpoint (or a plugin file), as plain
    data."""
    _, metadata = read_checkpoint(path, trusted)
    if metadata and PLUGIN_METADATA_KEY in metadata:
        pstate, plugin, fit = read_plugin_checkpoint(path)
        return {
            "path": str(path),
            "format": "plugin",
            "summary": describe_plugin(plugin),
            "plugin": dataclasses.asdict(plugin),
            "decoder": fit,
            "tensors": len(pstate),
            "total_parameters": sum(v.numel() for v in pstate.values()),
            "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in pstate.values()}),
        }
    state, config, fmt, open_fields, origin = _read_weights(path, trusted)
    check_state_dict(state, config, fmt, origin, source=f"checkpoint {str(path)!r}")
    counts = parameter_counts(config)
    return {
        "path": str(path),
        "format": fmt,
        "summary": describe(config),
        "matches": matching_names(config),
        "open_fields": list(open_fields),
        "config": config.to_dict(),
        "parameters": counts,
        "total_parameters": sum(counts.values()),
        "tensors": len(state),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in state.values()}),
        "refiner": config.refiner is not None,
        "preprocess": config.preprocess,
        "encoder_norm_eps": config.encoder_norm_eps,
    }
