"""Training-state checkpoints: model (+ its architecture config), optimizer, scheduler,
iteration and every RNG state, written atomically (temporary file + ``os.replace``) so a run
killed at any point leaves either the previous or the new checkpoint, never half a file.
Loadable with ``weights_only=True``; ``steadysam.weights.files.load_checkpoint`` reads the
``model`` weights with the ``config`` beside them.

A checkpoint can still be damaged from outside (a copy of the run folder killed half-way, a full
disk): :func:`load_latest` then falls back to the previous intact checkpoint, moving the
damaged one aside to ``<name>.corrupt``.
"""

from __future__ import annotations

import random
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path

_NAME = re.compile(r"^iter_(\d+)\.pt$")
# Entries every training checkpoint has; a file without them is not one (or is damaged).
REQUIRED = ("iteration", "model", "optimizer", "scheduler", "rng")


class ResumeError(ValueError):
    """No checkpoint of a run folder can be resumed from (all of them damaged)."""


def rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global) and torch RNG states in tensor / plain form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(folder: Path, iteration: int) -> Path:
    return folder / f"iter_{iteration:07d}.pt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_state(
    folder: Path,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``iter_<n>.pt`` atomically, then drop all but the newest ``keep``.

    ``model`` is a steadysam ``Sam`` (or a DDP wrapper of one): its weights go to ``model`` and
    its architecture (``SamConfig.to_dict()``) to ``config``, so the file loads as a model on
    its own. ``extra`` adds entries (the training config as ``train_config``, the world size);
    it cannot replace these."""
    module = getattr(model, "module", model)  # DistributedDataParallel -> the model
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, iteration)
    state = {
        **extra,
        "iteration": iteration,
        "model": module.state_dict(),
        "config": module.config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(folder)[: -max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; ValueError (with a one-line reason) when the file cannot be
    read or lacks a training checkpoint's entries."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("an empty file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its index comes last
        raise ValueError(f"truncated or not a torch checkpoint: no zip index in its {size} bytes")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch / zipfile / pickle raise many types for a damaged file
        raise ValueError(_reason(e)) from e
    if not isinstance(state, dict):
        raise ValueError(f"not a training checkpoint (a {type(state).__name__})")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"not a training checkpoint (no {', '.join(missing)})")
    return state


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def load_latest(
    folder: Path, move_aside: bool = True, warn=_warn
) -> tuple[int, Path, dict[str, Any]] | None:
    """(iteration, path, state) of the newest checkpoint in ``folder`` that can be read; None
    when there is none.

    A newer checkpoint that cannot be read (truncated by a killed copy, a full disk) is reported
    through ``warn`` with the reason, and renamed to ``<name>.corrupt`` when ``move_aside`` (so
    the run's checkpoint rotation and later resumes ignore it; it is kept for inspection). When
    no checkpoint can be read, ResumeError names each with its reason and nothing is moved."""
    found = list_checkpoints(folder)
    bad: list[tuple[Path, str]] = []
    for iteration, path in reversed(found):
        try:
            state = load_state(path)
        except (ValueError, OSError) as e:
            bad.append((path, str(e)))
            continue
        for old, why in bad:
            where = old.with_name(old.name + ".corrupt")
            if move_aside:
                try:
                    old.replace(where)
                except OSError:  # another rank moved it first, or a read-only folder
                    where = old
            warn(
                f"warning: checkpoint {str(old)!r} cannot be read ({why}); "
                + (f"moved aside to {where.name!r}; " if where != old else "")
                + f"resuming from the previous one, {str(path)!r}"
            )
        return iteration, path, state
    if bad:
        listing = "; ".join(f"{p.name}: {why}" for p, why in bad)
        raise ResumeError(
            f"none of the {len(bad)} checkpoints in {str(folder)!r} can be read ({listing}); "
            "start over with --no-resume (deletes them) or choose another run.out_dir"
        )
    return None
