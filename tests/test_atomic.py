"""atomic_path: the target changes only when the write completes; no temporary file remains."""

from __future__ import annotations

import os

import pytest

from steadysam import build_model, save_checkpoint
from steadysam.atomic import atomic_path, atomic_write_text


def test_atomic_write_replaces_and_cleans_up(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path):
    """mkstemp creates 0600 files: shipped weights written that way were unreadable to others."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp, open(tmp, "wb") as f:
            f.write(b"x")
        with open(tmp_path / "b.bin", "wb") as f:
            f.write(b"x")
        save_checkpoint(build_model("sam_tiny", random_init=True), tmp_path / "c.safetensors")
    finally:
        os.umask(old)
    for name in ("a.bin", "c.safetensors"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644, name
