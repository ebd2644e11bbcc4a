"""Published weights: the verified, cached, atomic download (no network needed), and what a
name means when its weights are not there."""

from __future__ import annotations

import dataclasses
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import serve_weights

import steadysam
from steadysam.models.build import build_sam
from steadysam.weights import hub
from steadysam.weights.registry import REGISTRY, sam_config

PAYLOAD = b"not really weights " * 1000


@pytest.fixture
def home(weights_home) -> Path:
    return weights_home


def serve(monkeypatch, tmp_path: Path, payload: bytes, sha256: str | None = None) -> Path:
    """Point sam_vit_b at a file:// URL holding ``payload``."""
    extra = {"sha256": sha256} if sha256 else {}
    return serve_weights(monkeypatch, tmp_path, "sam_vit_b", payload, **extra)


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
    assert REGISTRY["sam_vit_h"].url in msg
    assert str(home / "sam_vit_h_4b8939.pth") in msg
    assert "--checkpoint PATH" in msg and "build_model('sam_vit_h', checkpoint=PATH)" in msg
    assert not home.exists() or list(home.iterdir()) == []


def test_manually_placed_file_is_verified_once(monkeypatch, tmp_path, home):
    serve(monkeypatch, tmp_path, PAYLOAD)
    monkeypatch.setattr(hub, "_urlopen", None)  # any network use would fail
    hashed = []
    sha256 = hub.file_sha256
    monkeypatch.setattr(hub, "file_sha256", lambda *a, **k: hashed.append(a) or sha256(*a, **k))
    home.mkdir()
    (home / "sam_vit_b_01ec64.pth").write_bytes(PAYLOAD)
    assert hub.download("sam_vit_b", progress=False).read_bytes() == PAYLOAD
    assert len(hashed) == 1
    assert hub.download("sam_vit_b", progress=False).read_bytes() == PAYLOAD
    assert len(hashed) == 1  # unchanged since it was verified: not hashed again
    (home / "sam_vit_b_01ec64.pth").write_bytes(b"tampered")
    with pytest.raises(hub.HubError, match="not the published sam_vit_b file"):
        hub.download("sam_vit_b", progress=False)
    assert len(hashed) == 2  # changed: hashed again, and refused


def test_focsam_needs_a_manual_step_and_unknown_names_fail():
    with pytest.raises(hub.ManualDownloadRequired) as info:
        hub.download("focsam_vit_h")
    msg = str(info.value)
    assert "drive.google.com" in msg and "iter_160000.pth" in msg and "--checkpoint" in msg
    with pytest.raises(ValueError, match="sam_tiny has no published weights"):
        hub.download("sam_tiny")
    with pytest.raises(ValueError, match="ships with steadysam"):
        hub.download("demo_sam")
    with pytest.raises(ValueError, match="plugin file"):
        hub.download("stable_sam_vit_b")
    with pytest.raises(KeyError, match="unknown model 'sam_vit_x'"):
        hub.download("sam_vit_x")


def test_a_name_means_its_published_weights(monkeypatch, tmp_path, home):
    """build_model(name) loads the cached file; a missing file is an error saying how to get
    it (never random weights); download=True fetches it first."""
    # A tiny model's official-layout weights stand in for the real ViT-B file.
    model = build_sam(sam_config("sam_tiny"))
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    serve(monkeypatch, tmp_path, weights.read_bytes())
    monkeypatch.setitem(
        REGISTRY, "sam_vit_b", dataclasses.replace(REGISTRY["sam_vit_b"], arch=sam_tiny_arch)
    )
    with pytest.raises(hub.WeightsNotCached) as info:
        steadysam.build_model("sam_vit_b")
    msg = str(info.value)
    assert "steadysam download sam_vit_b" in msg and str(home / "sam_vit_b_01ec64.pth") in msg
    assert "--random-init" in msg and "--checkpoint" in msg
    loaded = steadysam.build_model("sam_vit_b", download=True)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # Now cached: the name alone loads the same weights, without the network.
    monkeypatch.setattr(hub, "_urlopen", None)
    again = steadysam.build_model("sam_vit_b")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(hub.ManualDownloadRequired):
        steadysam.build_model("focsam_vit_h")


def sam_tiny_arch():
    return sam_config("sam_tiny")


def test_manual_weights_placed_in_the_cache_load_by_name(monkeypatch, tmp_path, home):
    """focsam_vit_h's file, copied by hand to the cache path the message names, loads by name."""
    from test_checkpoints import write_focsam_mmengine

    tiny = build_sam(sam_config("focsam_tiny"))
    monkeypatch.setitem(
        REGISTRY,
        "focsam_vit_h",
        dataclasses.replace(REGISTRY["focsam_vit_h"], arch=lambda: sam_config("focsam_tiny")),
    )
    with pytest.raises(hub.ManualDownloadRequired) as info:
        steadysam.build_model("focsam_vit_h")
    target = home / REGISTRY["focsam_vit_h"].cache_name
    assert str(target) in str(info.value)
    home.mkdir()
    write_focsam_mmengine(tiny, target)
    loaded = steadysam.build_model("focsam_vit_h")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in tiny.state_dict().items())
