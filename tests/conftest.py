from __future__ import annotations

import os
import socket
import sys
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


# -- processes that stop at a chosen point (the kill-and-resume tests) -------------------------
# A run killed "after a while" passes or fails with the machine's speed: killed too late, it has
# already finished and the resume has nothing to do. Instead the child process wraps one method
# of the code under test (``module:Class.method``); once that method has returned ``after``
# times, the child writes ``marker`` and waits for its SIGKILL, at a known point of the run.
PROCESS_TIMEOUT = 600  # s: only a hang reaches it (the runs take seconds to a minute)

_PAUSE = """
import importlib, os, runpy, sys, time
target, after, marker, kind, main = sys.argv[1:6]
module, _, attr = target.partition(":")
owner_name, _, method = attr.rpartition(".")
owner = importlib.import_module(module)
for part in owner_name.split("."):
    owner = getattr(owner, part)
original = getattr(owner, method)
calls = [0]

def paused(*args, **kwargs):
    result = original(*args, **kwargs)
    calls[0] += 1
    if calls[0] == int(after):
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        while True:
            time.sleep(3600)
    return result

setattr(owner, method, paused)
sys.argv = [main, *sys.argv[6:]]
if kind == "module":
    runpy.run_module(main, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(main, run_name="__main__")
"""


def paused_command(
    target: str,
    after: int,
    marker: Path,
    argv: list[str],
    module: str | None = None,
    script: Path | None = None,
) -> list[str]:
    """``python -m module argv...`` (or ``python script argv...``) that stops for good right
    after the ``after``-th return of ``target`` ("module:Class.method"), once ``marker``
    exists."""
    kind, main = ("module", module) if module is not None else ("script", str(script))
    return [sys.executable, "-c", _PAUSE, target, str(after), str(marker), kind, main,
            *map(str, argv)]  # fmt: skip


def kill_when_paused(
    proc, marker: Path, log: Path | None = None, timeout: float = PROCESS_TIMEOUT
) -> None:
    """Wait (polling) until the child has written ``marker``, then SIGKILL it. Fails if the
    child ends first, or if nothing happens within ``timeout`` seconds (a hang, not slowness);
    ``log``: the file holding the child's output, quoted when it fails."""
    import signal
    import time

    def output() -> str:
        return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""

    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert proc.poll() is None, (
                f"the run ended (exit code {proc.returncode}) before the point where it is to "
                f"be killed:\n{output()}"
            )
            assert time.monotonic() < deadline, f"no {marker} after {timeout} s:\n{output()}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, output()


def sigkill_at(
    target: str,
    after: int,
    folder: Path,
    argv: list[str],
    *,
    module: str | None = None,
    script: Path | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
) -> None:
    """Run :func:`paused_command` in a child process and SIGKILL it at its pause (its output
    goes to ``folder``/child.log; the pause marker is ``folder``/paused)."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    marker, log = folder / "paused", folder / "child.log"
    cmd = paused_command(target, after, marker, argv, module=module, script=script)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    kill_when_paused(proc, marker, log)
