"""Published weights: the cache, and verified downloads of the files the registry names.

Files are cached in ``$STEADYSAM_HOME`` (default ``~/.cache/steadysam``) under their published
file names, written atomically (temporary file + ``os.replace``) only after the sha256 matched.
A file placed there by hand (e.g. downloaded on another machine) is verified once and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_path
from .digest import file_sha256
from .registry import ModelRecord, list_models, model_record

# Indirection so tests can serve files without a network.
_urlopen = urllib.request.urlopen

_CHUNK = 1 << 20


class HubError(RuntimeError):
    """A download that failed (network, checksum) or needs a manual step."""


class ManualDownloadRequired(HubError):
    """Weights that must be downloaded by hand; the message says how."""


class WeightsNotCached(HubError):
    """Published weights that are not in the cache yet; the message says how to get them."""


class NoPublishedWeights(ValueError):
    """A name without trained weights (an architecture only): give a checkpoint or ask for
    random initialisation."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name} has no published weights: pass its weights with --checkpoint PATH "
            f"(Python: build_model({name!r}, checkpoint=PATH)), or --random-init "
            "(random_init=True) for a randomly initialised network"
        )


def cache_dir() -> Path:
    """``$STEADYSAM_HOME`` or ``~/.cache/steadysam``."""
    return Path(os.environ.get("STEADYSAM_HOME") or Path.home() / ".cache" / "steadysam")


def _published(name: str) -> ModelRecord:
    """The record of ``name`` if its weights can be downloaded; otherwise the error that says
    what to do instead."""
    record = model_record(name)
    if record.weights == "published":
        return record
    if record.weights == "manual":
        raise ManualDownloadRequired(record.manual.format(cache=cache_dir() / record.cache_name))
    if record.weights == "shipped":
        raise ValueError(f"{name} ships with steadysam: nothing to download, use --model {name}")
    if record.weights == "plugin":
        raise ValueError(
            f"no published weights exist for {name} (Stable-SAM's authors released none): its "
            f"weights are {record.plugin_of}'s plus a plugin file trained with RTS "
            "(configs/stablesam_rts.yaml); download the base and pass --plugin FILE"
        )
    known = ", ".join(list_models("published") + list_models("manual"))
    raise ValueError(f"{name} has no published weights; downloadable: {known}")


def weights_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Where ``name``'s published (or manually downloaded) file is, or would be, cached."""
    record = model_record(name)
    if record.cache_name is None:
        _published(name)  # raises the error that explains
    return Path(directory or cache_dir()) / record.cache_name


def cached_weights(name: str, fetch: bool = False, progress: bool = True) -> Path:
    """The file of ``name``'s trained weights: from the cache (verified), downloaded first when
    ``fetch`` is set, else an error saying how to get it."""
    record = model_record(name)
    if record.weights == "manual":
        path = weights_path(name)
        if path.is_file():
            return path
        raise ManualDownloadRequired(record.manual.format(cache=path))
    if record.weights == "none":
        raise NoPublishedWeights(name)
    if record.weights != "published":
        _published(name)  # raises with advice (shipped and plugin names)
    path = weights_path(name)
    if path.is_file() or fetch:
        return download(name, progress=progress)
    raise WeightsNotCached(
        f"{name}'s published weights are not in the cache ({path}): run `steadysam download "
        f"{name}` (Python: build_model({name!r}, download=True)), or place {record.url} there, "
        f"or pass the file with --checkpoint PATH. For a randomly initialised {name}, pass "
        "--random-init (Python: random_init=True)"
    )


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(path: Path, sha256: str | None, progress: bool) -> bool:
    """Is the cached file the published one? Hashing GBs takes seconds, so a verified file gets
    a stamp (size, mtime, sha256) next to it and is only re-hashed when it changes. Without a
    published sha256 (HQ-SAM) there is nothing to compare: loading checks the architecture."""
    if sha256 is None:
        return True
    stamp_file = _stamp_path(path)
    try:
        stamp = json.loads(stamp_file.read_text())
        if stamp == {**_stamp(path), "sha256": sha256}:
            return True
    except (OSError, ValueError):
        pass
    if file_sha256(path, progress) != sha256:
        return False
    stamp_file.write_text(json.dumps({**_stamp(path), "sha256": sha256}))
    return True


def download(name: str, directory: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Path of ``name``'s verified weights file, downloading it first if it is not cached."""
    entry = _published(name)
    dest = weights_path(name, directory)
    if dest.is_file():
        if _verified(dest, entry.sha256, progress):
            return dest
        raise HubError(
            f"{str(dest)!r} is not the published {name} file (sha256 differs from "
            f"{entry.sha256}); delete it or replace it with a download of {entry.url}"
        )
    # A failed or corrupt download raises inside atomic_path: nothing is kept.
    with atomic_path(dest, suffix=".part") as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            try:
                response = _urlopen(entry.url, timeout=60)
            except (urllib.error.URLError, OSError) as e:
                raise HubError(_offline_message(name, entry, dest, e)) from e
            with (
                response,
                tqdm(
                    total=int(response.headers.get("Content-Length") or 0) or None,
                    unit="B",
                    unit_scale=True,
                    desc=entry.cache_name,
                    disable=not progress,
                ) as bar,
            ):
                try:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
                except OSError as e:  # connection dropped mid-file
                    raise HubError(_offline_message(name, entry, dest, e)) from e
        if entry.sha256 is not None and h.hexdigest() != entry.sha256:
            raise HubError(
                f"download of {entry.url} is corrupt: sha256 {h.hexdigest()}, expected "
                f"{entry.sha256}; nothing was kept, try again"
            )
    if entry.sha256 is not None:
        _stamp_path(dest).write_text(json.dumps({**_stamp(dest), "sha256": entry.sha256}))
    return dest


def _offline_message(name: str, entry: ModelRecord, dest: Path, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"cannot download {name} from {entry.url} ({reason}). Without network access, download "
        f"that file elsewhere and place it at {dest}, or pass its path with --checkpoint PATH "
        f"(Python: build_model({name!r}, checkpoint=PATH))"
    )


__all__ = [
    "HubError",
    "ManualDownloadRequired",
    "NoPublishedWeights",
    "WeightsNotCached",
    "cache_dir",
    "cached_weights",
    "download",
    "weights_path",
]
