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
:class:`CheckpointError` listing them. Format detection and the only key renames
(:data:`FOCSAM_KEY_MAP`) live in :mod:`steadysam.key_layouts`; files without a stored config get
theirs from tensor shapes (:mod:`steadysam.arch_inference`).
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

# Names imported "as" themselves are re-exported: callers have always imported them from here.
from .arch_inference import infer_config as infer_config
from .key_layouts import CONFIG_METADATA_KEY as CONFIG_METADATA_KEY
from .key_layouts import FOCSAM_KEY_MAP as FOCSAM_KEY_MAP
from .key_layouts import PARTS as PARTS
from .key_layouts import WRAPPER_KEYS as WRAPPER_KEYS
from .key_layouts import CheckpointError as CheckpointError
from .key_layouts import abbrev, file_key
from .key_layouts import detect_format as detect_format
from .key_layouts import from_focsam_key as from_focsam_key
from .key_layouts import to_focsam_key as to_focsam_key
from .key_layouts import to_model_layout as to_model_layout
from .key_layouts import unwrap_state_dict as unwrap_state_dict
from .models.build import MODEL_CONFIGS, build_sam, sam_config
from .models.config import SamConfig

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
