"""Read and write SAM / FocSAM weights: file formats, key layouts, strict loading.

Three formats are read, detected automatically (:func:`detect_format`):

``sam``        official segment-anything ``.pth``: a flat state dict with ``image_encoder.``,
               ``prompt_encoder.``, ``mask_decoder.`` keys (also wrapped in ``model`` /
               ``state_dict``). Our key layout *is* this layout.
``focsam``     official FocSAM files (spec §2.2, §2.3, §4.10): an mmengine dict whose
               ``state_dict`` uses ``backbone.`` / ``neck.`` (the prompt encoder) /
               ``decode_head.`` / ``refine_head.``; or the flat output of FocSAM's SAM converter
               (no ``refine_head.``: SAM weights in FocSAM layout). ``meta``, ``optimizer`` etc.
               are ignored.
``steadysam``  our own safetensors files with the :class:`SamConfig` as JSON in the metadata
               (:func:`save_checkpoint`); also any state dict in our layout with ``refiner.``.

Loading is strict: a missing key, an unexpected key or a shape mismatch raises
:class:`CheckpointError` listing them. The only key renames live in :data:`FOCSAM_KEY_MAP`.
Files without a stored config get theirs from tensor shapes (:mod:`steadysam.arch_inference`).
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

# infer_config is also re-exported: callers have always imported it from here.
from .arch_inference import infer_config
from .models.build import MODEL_CONFIGS, build_sam, sam_config
from .models.config import SamConfig

CONFIG_METADATA_KEY = "steadysam.config"
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "refiner")

# The one key-compatibility table: (our prefix, FocSAM prefix, renames of dotted name components
# inside that part). Official SAM needs no entry: its keys are ours (the refiner aside).
FOCSAM_KEY_MAP: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("image_encoder.", "backbone.", ()),
    (
        "prompt_encoder.",
        "neck.",
        (("pe_layer", "pos_embed_layer"), ("point_embeddings", "point_embeds")),
    ),
    ("mask_decoder.", "decode_head.", ()),
    ("refiner.", "refine_head.", ()),
)
# Entries of a checkpoint dict that may hold the weights (mmengine: state_dict; some SAM forks:
# model). Everything else next to them (meta, optimizer, message_hub, ...) is ignored.
WRAPPER_KEYS = ("state_dict", "model")

# Fields an architecture can be told apart by from tensor shapes alone (see infer_config).
SHAPE_FIELDS = tuple(
    """encoder_embed_dim encoder_depth encoder_num_heads encoder_global_attn_indexes
    encoder_window_size encoder_mlp_ratio image_size patch_size prompt_embed_dim mask_in_chans
    decoder_depth decoder_mlp_dim num_multimask_outputs iou_head_depth iou_head_hidden_dim
    refiner.depth refiner.mlp_ratio""".split()
)
# Architecture fields invisible in shapes; compared only against our own files' JSON config.
HIDDEN_FIELDS = (
    "encoder_norm_eps",
    "decoder_num_heads",
    "refiner.num_heads",
    "refiner.window_size",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the architecture exactly."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()) -> None:
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched = list(mismatched)


def _abbrev(items: list[str], limit: int = 20) -> str:
    """Long key lists stay readable: the first ``limit`` and a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# -- key layouts ---------------------------------------------------------------------------
def _map_key(key: str, reverse: bool) -> str | None:
    for ours, theirs, renames in FOCSAM_KEY_MAP:
        src, dst = (theirs, ours) if not reverse else (ours, theirs)
        if key.startswith(src):
            parts = key[len(src) :].split(".")
            table = {b: a for a, b in renames} if not reverse else dict(renames)
            return dst + ".".join(table.get(p, p) for p in parts)
    return None


def from_focsam_key(key: str) -> str | None:
    """A FocSAM key in our layout; None when it has none of FocSAM's prefixes."""
    return _map_key(key, reverse=False)


def to_focsam_key(key: str) -> str:
    """Our key in FocSAM's layout (e.g. to write FocSAM-compatible files)."""
    mapped = _map_key(key, reverse=True)
    if mapped is None:
        raise KeyError(f"{key!r} has no FocSAM equivalent")
    return mapped


def _file_key(key: str, fmt: str) -> str:
    return to_focsam_key(key) if fmt == "focsam" else key


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The flat name -> tensor dict inside a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            odd = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise CheckpointError(
                "not a state dict: neither all tensors nor a 'state_dict'/'model' entry; "
                f"non-tensor entries: {_abbrev(odd)}"
            )
        obj = inner
    odd = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"state dict entries that are not tensors: {_abbrev(odd)}")
    return dict(obj)


def detect_format(state: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> str:
    """``sam``, ``focsam`` or ``steadysam`` for a (possibly wrapped) state dict."""
    if metadata and CONFIG_METADATA_KEY in metadata:
        return "steadysam"
    keys = list(unwrap_state_dict(state))
    if any(from_focsam_key(k) is not None for k in keys):
        return "focsam"
    if any(k.startswith("refiner.") for k in keys):
        return "steadysam"
    if any(k.split(".", 1)[0] in PARTS for k in keys):
        return "sam"
    raise CheckpointError(
        "unrecognised key layout (expected image_encoder./prompt_encoder./mask_decoder. or "
        f"FocSAM's backbone./neck./decode_head./refine_head.); first keys: {_abbrev(keys, 5)}"
    )


def to_model_layout(state: Mapping[str, Any], fmt: str) -> tuple[dict, dict[str, str]]:
    """(state dict with our keys, our key -> the key's name in the file). Keys that match no
    rule keep their name, so they surface as unexpected keys instead of vanishing."""
    flat = unwrap_state_dict(state)
    if fmt != "focsam":
        return flat, {k: k for k in flat}
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in flat.items():
        ours = from_focsam_key(key) or key
        out[ours], origin[ours] = value, key
    return out, origin


# -- architecture comparison ---------------------------------------------------------------
def _field(config: SamConfig, name: str) -> Any:
    if name.startswith("refiner."):
        return None if config.refiner is None else getattr(config.refiner, name[8:])
    return getattr(config, name)


def config_differences(a: SamConfig, b: SamConfig, names: Iterable[str]) -> list[tuple]:
    """(field, value in a, value in b) for each differing field; refiner presence first."""
    if (a.refiner is None) != (b.refiner is None):
        return [("refiner", a.refiner is not None, b.refiner is not None)]
    return [(n, _field(a, n), _field(b, n)) for n in names if _field(a, n) != _field(b, n)]


def reconcile_config(name: str, inferred: SamConfig, fmt: str) -> SamConfig:
    """The config for ``build_model(name, checkpoint)``: the name's architecture must equal the
    checkpoint's. Fields invisible in shapes come from the name for official files (a name is an
    explicit request, e.g. sam_vit_h conventions for SAM weights in FocSAM layout) and from the
    file for our own files, whose JSON config is authoritative."""
    named = sam_config(name)
    checked = SHAPE_FIELDS + (HIDDEN_FIELDS if fmt == "steadysam" else ())
    diff = config_differences(inferred, named, checked)
    if diff:
        what = "; ".join(f"{f}: checkpoint {x!r}, {name} {y!r}" for f, x, y in diff)
        raise CheckpointError(f"checkpoint architecture differs from {name!r}: {what}")
    return inferred if fmt == "steadysam" else named


def matching_names(config: SamConfig) -> list[str]:
    """Registered model names whose shape-visible architecture equals ``config``."""
    return [n for n in MODEL_CONFIGS if not config_differences(config, sam_config(n), SHAPE_FIELDS)]


def describe(config: SamConfig) -> str:
    """One-line summary of an architecture."""
    c = config
    ref = "none"
    if c.refiner is not None:
        r = c.refiner
        ref = f"depth {r.depth}, {r.num_heads} heads, window {r.window_size}"
    return (
        f"ViT width {c.encoder_embed_dim}, depth {c.encoder_depth}, {c.encoder_num_heads} heads, "
        f"window {c.encoder_window_size}, global blocks {list(c.encoder_global_attn_indexes)}, "
        f"{c.image_size}px input (patch {c.patch_size}); prompt width {c.prompt_embed_dim}; "
        f"decoder depth {c.decoder_depth}, MLP {c.decoder_mlp_dim}, "
        f"{c.num_multimask_outputs} multimask outputs; refiner: {ref}"
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
    """Learnable parameters per part (image_encoder, prompt_encoder, mask_decoder, refiner)."""
    model = _meta_model(config)
    return {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in PARTS
        if getattr(model, part, None) is not None
    }


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
    missing = [_file_key(k, fmt) for k in expected if k not in state]
    unexpected = [origin.get(k, k) for k in state if k not in expected]
    mismatched = [
        f"{origin.get(k, k)} {tuple(v.shape)} vs {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {label}: {_abbrev(items)}"
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
    except (RuntimeError, EOFError, ValueError, ImportError, AttributeError, OSError) as e:
        raise CheckpointError(
            f"cannot read {str(path)!r} as a torch checkpoint: {_reason(e)}"
        ) from e


def load_checkpoint(
    path: str | os.PathLike, trusted: bool = False
) -> tuple[dict[str, torch.Tensor], SamConfig, str]:
    """(state dict in our key layout, its architecture, format) of a checkpoint file, checked
    strictly against the architecture. ``trusted`` allows full unpickling of ``.pth`` files."""
    raw, metadata = read_checkpoint(path, trusted)
    fmt = detect_format(raw, metadata)
    state, origin = to_model_layout(raw, fmt)
    if metadata and CONFIG_METADATA_KEY in metadata:
        try:
            config = SamConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{str(path)!r}: invalid config in metadata: {e}") from e
    else:
        config = infer_config(state, fmt)
    check_state_dict(state, config, fmt, origin, source=f"checkpoint {str(path)!r}")
    return state, config, fmt


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and config as safetensors (the ``steadysam`` format), atomically:
    a temporary file in the same folder, then ``os.replace``, so readers never see half a file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config: SamConfig = model.config
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        CONFIG_METADATA_KEY: json.dumps(config.to_dict()),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def describe_checkpoint(path: str | os.PathLike, trusted: bool = False) -> dict[str, Any]:
    """Everything ``steadysam info`` shows about a checkpoint, as plain data."""
    state, config, fmt = load_checkpoint(path, trusted)
    counts = parameter_counts(config)
    return {
        "path": str(path),
        "format": fmt,
        "summary": describe(config),
        "matches": matching_names(config),
        "config": config.to_dict(),
        "parameters": counts,
        "total_parameters": sum(counts.values()),
        "tensors": len(state),
        "dtypes": sorted({str(v.dtype).replace("torch.", "") for v in state.values()}),
        "refiner": config.refiner is not None,
        "preprocess": config.preprocess,
        "encoder_norm_eps": config.encoder_norm_eps,
    }
