from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA_ROOT = Path(
    os.environ.get("STEADYSAM_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def _first(folder: str, n: int) -> list[Path]:
    d = DATA_ROOT / folder / "images"
    if not d.is_dir():
        pytest.fail(f"real data not found at {d}: set STEADYSAM_DATA to the shared data folder")
    return sorted(p for p in d.iterdir() if p.is_file())[:n]


@pytest.fixture(scope="session")
def data_root() -> Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def real_images() -> list[tuple[str, np.ndarray]]:
    """A few real RGB images of different sizes and sources."""
    paths = _first("GrabCut", 1) + _first("Berkeley", 1) + _first("DAVIS345", 1)
    return [(p.name, np.array(Image.open(p).convert("RGB"))) for p in paths]


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every saved tensor so no weight sits at a trivial initial value (non-persistent
    buffers such as pixel_mean are left alone: checkpoints do not carry them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * std)
    return module


def free_port() -> int:
    """An unused local TCP port (for torchrun rendezvous in the multi-process tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_weights(monkeypatch, tmp_path: Path, name: str, payload: bytes, **record_fields):
    """Point registered ``name`` at a file:// URL holding ``payload`` (no network needed); its
    sha256 is the payload's unless given. ``record_fields`` replace more of the record (e.g.
    ``arch=`` a tiny architecture standing in for the real one). Returns the served file."""
    import dataclasses
    import hashlib

    from steadysam.weights.registry import REGISTRY

    record = REGISTRY[name]
    src = tmp_path / "served" / (record.cache_name or f"{name}.pth")
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    fields = {"url": src.as_uri(), "sha256": hashlib.sha256(payload).hexdigest(), **record_fields}
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(record, **fields))
    return src


@pytest.fixture
def weights_home(tmp_path, monkeypatch) -> Path:
    """An empty weights cache ($STEADYSAM_HOME) for the test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("STEADYSAM_HOME", str(folder))
    return folder
