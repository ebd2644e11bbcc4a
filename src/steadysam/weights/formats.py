"""Key layouts of SAM / FocSAM / steadysam weight files: telling them apart and mapping them
onto our model's keys. Pure name handling; no model is built and no file is read here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..models.config import PARTS

# Its presence in safetensors metadata marks our own format (the config is stored as JSON there).
CONFIG_METADATA_KEY = "steadysam.config"

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


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the architecture exactly."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()) -> None:
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched = list(mismatched)


def abbrev(items: list[str], limit: int = 20) -> str:
    """Long key lists stay readable: the first ``limit`` and a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


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


def file_key(key: str, fmt: str) -> str:
    """Our key as a file of format ``fmt`` names it, so errors quote the file's own keys."""
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
                f"non-tensor entries: {abbrev(odd)}"
            )
        obj = inner
    odd = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"state dict entries that are not tensors: {abbrev(odd)}")
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
        f"FocSAM's backbone./neck./decode_head./refine_head.); first keys: {abbrev(keys, 5)}"
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
