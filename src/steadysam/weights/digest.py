"""The one weights hash: which weights made a result (run folders, caches, DDP sync checks)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch

_CHUNK = 1 << 20


def state_digest(weights: torch.nn.Module | Mapping[str, torch.Tensor], length: int = 32) -> str:
    """Hex sha256 over a module's (or a state dict's) tensors: names, dtypes, shapes and bytes,
    in sorted name order, so equal weights give equal digests whatever their origin (a name, a
    ``.pth``, a ``.safetensors``) and any changed value gives another."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.contiguous().reshape(-1)  # 1-D: 0-dim tensors cannot be viewed as bytes
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.hexdigest()[:length]


def file_sha256(path: str | os.PathLike, progress: bool = False) -> str:
    """Hex sha256 of a file's bytes, read in chunks (published checksums are of files)."""
    from tqdm import tqdm

    h = hashlib.sha256()
    size = os.path.getsize(path)
    with (
        open(path, "rb") as f,
        tqdm(total=size, unit="B", unit_scale=True, desc="sha256", disable=not progress) as bar,
    ):
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()
