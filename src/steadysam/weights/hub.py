"""Published weights: where they live, their checksums, and a verified, cached download.

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
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_path
from .digest import file_sha256


@dataclass(frozen=True)
class HubEntry:
    """One downloadable checkpoint."""

    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Official SAM checkpoints (github.com/facebookresearch/segment-anything#model-checkpoints).
# sha256 values as pinned by micro-sam (micro_sam/util.py, verified there by pooch on every
# download) and independently by many other projects. Note: the hex suffix in the file names is
# the start of the files' MD5 (e.g. 4b8939a8...), not of their sha256.
HUB: dict[str, HubEntry] = {
    "sam_vit_h": HubEntry(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "sam_vit_l": HubEntry(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_b": HubEntry(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}

FOCSAM_DRIVE_URL = "https://drive.google.com/file/d/1VOeMkY9LovfWYi66JMR8q79gFiC4n3Az/view"

# Weights that cannot be fetched by a script (a Google Drive zip, per the official FocSAM README
# at github.com/YouHuang67/focsam): how to get them by hand.
MANUAL_DOWNLOADS: dict[str, str] = {
    "focsam_vit_h": f"""\
FocSAM-ViT-H weights are published only as a Google Drive zip (see the README of
github.com/YouHuang67/focsam, "FocSAM Pre-trained Weights"); they cannot be downloaded
automatically. By hand:
  1. open {FOCSAM_DRIVE_URL} in a browser and download the zip;
  2. unzip it; it contains iter_160000.pth (an mmengine checkpoint);
  3. pass that file directly, no conversion needed:
       steadysam segment IMAGE --checkpoint /path/to/iter_160000.pth --click X,Y ...
       build_model("focsam_vit_h", checkpoint="/path/to/iter_160000.pth")
""",
}

# Indirection so tests can serve files without a network.
_urlopen = urllib.request.urlopen

_CHUNK = 1 << 20


class HubError(RuntimeError):
    """A download that failed (network, checksum) or needs a manual step."""


class ManualDownloadRequired(HubError):
    """Weights that must be downloaded by hand; the message says how."""


def cache_dir() -> Path:
    """``$STEADYSAM_HOME`` or ``~/.cache/steadysam``."""
    return Path(os.environ.get("STEADYSAM_HOME") or Path.home() / ".cache" / "steadysam")


def hub_entry(name: str) -> HubEntry:
    """The entry of ``name``; :class:`ManualDownloadRequired` for FocSAM, ValueError for names
    without published weights."""
    if name in HUB:
        return HUB[name]
    if name in MANUAL_DOWNLOADS:
        raise ManualDownloadRequired(MANUAL_DOWNLOADS[name])
    known = ", ".join(sorted(HUB) + sorted(MANUAL_DOWNLOADS))
    raise ValueError(f"no published weights for {name!r}; available: {known}")


def weights_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """Where ``name``'s file is (or would be) cached."""
    return Path(directory or cache_dir()) / hub_entry(name).filename


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verified(path: Path, sha256: str, progress: bool) -> bool:
    """Is the cached file the published one? Hashing GBs takes seconds, so a verified file gets
    a stamp (size, mtime, sha256) next to it and is only re-hashed when it changes."""
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
    entry = hub_entry(name)
    folder = Path(directory or cache_dir())
    dest = folder / entry.filename
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
                    desc=entry.filename,
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
        if h.hexdigest() != entry.sha256:
            raise HubError(
                f"download of {entry.url} is corrupt: sha256 {h.hexdigest()}, expected "
                f"{entry.sha256}; nothing was kept, try again"
            )
    _stamp_path(dest).write_text(json.dumps({**_stamp(dest), "sha256": entry.sha256}))
    return dest


def _offline_message(name: str, entry: HubEntry, dest: Path, error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return (
        f"cannot download {name} from {entry.url} ({reason}). Without network access, download "
        f"that file elsewhere and place it at {dest}, or pass its path with --checkpoint PATH "
        f"(Python: build_model({name!r}, checkpoint=PATH))"
    )


__all__ = [
    "HUB",
    "HubEntry",
    "HubError",
    "MANUAL_DOWNLOADS",
    "ManualDownloadRequired",
    "cache_dir",
    "download",
    "hub_entry",
    "weights_path",
]
