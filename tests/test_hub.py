"""Published-weights table and the verified, cached, atomic download (no network needed)."""

from __future__ import annotations

import hashlib
import re
import urllib.error
from pathlib import Path

import pytest
import torch

import steadysam
from steadysam.models.build import build_sam, sam_config
from steadysam.weights import hub

PAYLOAD = b"not really weights " * 1000


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("STEADYSAM_HOME", str(folder))
    return folder


def serve(monkeypatch, tmp_path: Path, payload: bytes, sha256: str | None = None) -> Path:
    """Point sam_vit_b at a file:// URL holding ``payload``."""
    src = tmp_path / "served" / "sam_vit_b_01ec64.pth"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(payload)
    entry = hub.HubEntry(src.as_uri(), sha256 or hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(hub.HUB, "sam_vit_b", entry)
    return src


def test_table_of_official_checkpoints():
    assert set(hub.HUB) == {"sam_vit_b", "sam_vit_l", "sam_vit_h"}
    for name, entry in hub.HUB.items():
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert entry.filename.startswith(name) and entry.filename.endswith(".pth")
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("STEADYSAM_HOME", raising=False)
    assert hub.cache_dir() == Path.home() / ".cache" / "steadysam"
    monkeypatch.setenv("STEADYSAM_HOME", str(tmp_path))
    assert hub.cache_dir() == tmp_path


def test_download_verifies_and_caches(monkeypatch, tmp_path, home):
    serve(monkeypatch, tmp_path, PAYLOAD)
    path = hub.download("sam_vit_b", progress=False)
    assert path == home / "sam_vit_b_01ec64.pth" and path.read_bytes() == PAYLOAD
    assert not [p for p in home.iterdir() if p.name.endswith(".part")]

    def no_network(*args, **kwargs):
        raise AssertionError("the cached file must be reused without opening the URL")

    monkeypatch.setattr(hub, "_urlopen", no_network)
    assert hub.download("sam_vit_b", progress=False) == path


def test_wrong_checksum_leaves_nothing(monkeypatch, tmp_path, home):
    serve(monkeypatch, tmp_path, PAYLOAD, sha256="0" * 64)
    with pytest.raises(hub.HubError, match="sha256"):
        hub.download("sam_vit_b", progress=False)
    assert list(home.iterdir()) == []


def test_offline_message_names_url_cache_path_and_alternatives(monkeypatch, home):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(hub, "_urlopen", offline)
    with pytest.raises(hub.HubError) as info:
        hub.download("sam_vit_h", progress=False)
    msg = str(info.value)
    assert hub.HUB["sam_vit_h"].url in msg
    assert str(home / "sam_vit_h_4b8939.pth") in msg
    assert "--checkpoint PATH" in msg and "build_model('sam_vit_h', checkpoint=PATH)" in msg
    assert not home.exists() or list(home.iterdir()) == []


def test_manually_placed_file_is_verified_once(monkeypatch, tmp_path, home):
    serve(monkeypatch, tmp_path, PAYLOAD)
    monkeypatch.setattr(hub, "_urlopen", None)  # any network use would fail
    home.mkdir()
    (home / "sam_vit_b_01ec64.pth").write_bytes(PAYLOAD)
    assert hub.download("sam_vit_b", progress=False).read_bytes() == PAYLOAD
    (home / "sam_vit_b_01ec64.pth").write_bytes(b"tampered")
    with pytest.raises(hub.HubError, match="not the published sam_vit_b file"):
        hub.download("sam_vit_b", progress=False)


def test_focsam_needs_a_manual_step_and_unknown_names_fail():
    with pytest.raises(hub.ManualDownloadRequired) as info:
        hub.download("focsam_vit_h")
    msg = str(info.value)
    assert "drive.google.com" in msg and "iter_160000.pth" in msg and "--checkpoint" in msg
    with pytest.raises(ValueError, match="no published weights for 'sam_tiny'"):
        hub.download("sam_tiny")


def test_build_model_pretrained_downloads_then_loads(monkeypatch, tmp_path, home):
    # A tiny model's official-layout weights stand in for the real ViT-B file.
    model = build_sam(sam_config("sam_tiny"))
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    serve(monkeypatch, tmp_path, weights.read_bytes())
    monkeypatch.setitem(
        steadysam.models.build.MODEL_CONFIGS, "sam_vit_b", lambda: sam_config("sam_tiny")
    )
    loaded = steadysam.build_model("sam_vit_b", pretrained=True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(hub.ManualDownloadRequired):
        steadysam.build_model("focsam_vit_h", pretrained=True)
