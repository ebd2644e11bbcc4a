"""The one model registry, tested over every name it holds (as timm tests over list_models):
each name builds its architecture, says where its weights come from, and build_model / the CLI
treat it as its kind says (a name never silently means random weights)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import steadysam
from steadysam.cli import main
from steadysam.weights import hub
from steadysam.weights.files import CheckpointError, parameter_counts
from steadysam.weights.registry import REGISTRY, list_models, model_record

NAMES = list(REGISTRY)
KINDS = {"published", "manual", "shipped", "plugin", "none"}


def test_names_and_kinds():
    assert NAMES == list_models() and len(set(NAMES)) == len(NAMES)
    assert {REGISTRY[n].weights for n in NAMES} == KINDS
    assert {f"{m}_vit_{s}" for m in ("sam", "hq_sam") for s in "blh"} == set(
        list_models("published")
    )
    assert list_models("manual") == ["focsam_vit_h"]
    assert set(list_models("shipped")) == {
        "demo_sam",
        "demo_focsam",
        "demo_stable_sam",
        "demo_stable_focsam",
    }
    with pytest.raises(KeyError, match="unknown model 'vit_b'.*sam_vit_b"):
        model_record("vit_b")


@pytest.mark.parametrize("name", NAMES)
def test_record(name):
    r = REGISTRY[name]
    assert r.name == name and r.summary
    config = r.config()  # shipped models: read from the shipped file
    counts = parameter_counts(config)
    assert counts["image_encoder"] > 0 and counts["mask_decoder"] > 0
    assert ("refiner" in counts) == (config.refiner is not None)
    assert ("plugin" in counts) == (config.plugin is not None)
    if r.weights == "published":
        if r.config().hq is None:  # SAM: Meta's files, sha256 published in their model card
            assert r.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
            assert r.cache_name.startswith(name) and r.cache_name.endswith(".pth")
            assert re.fullmatch(r"[0-9a-f]{64}", r.sha256)
        else:  # HQ-SAM: the authors' Hugging Face files, no checksum published
            size = name.rsplit("_", 1)[1]
            assert r.url == f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_{size}.pth"
            assert r.cache_name == f"sam_hq_vit_{size}.pth"
            assert r.sha256 is None
    else:
        assert r.url is None and r.sha256 is None  # no checksum where none is published
    if r.weights == "manual":
        assert r.cache_name and "{cache}" in r.manual
    if r.weights == "shipped":
        for path in (r.shipped_path(), r.shipped_plugin_path()):
            assert path is None or path.is_file()
    if r.plugin_of is not None:
        assert config.plugin is not None and REGISTRY[r.plugin_of].config().plugin is None


@pytest.mark.parametrize("name", NAMES)
def test_build_model_by_name_follows_the_kind(name, weights_home):
    """With an empty cache: shipped names load, every other name is an error saying what to
    do; nothing falls back to random weights."""
    kind = REGISTRY[name].weights
    if kind == "shipped":
        model = steadysam.build_model(name)
        assert model.config == REGISTRY[name].config()
        return
    expected = {
        "published": (hub.WeightsNotCached, "steadysam download"),
        "manual": (hub.ManualDownloadRequired, "drive.google.com"),
        "none": (ValueError, "no published weights.*--random-init"),
        "plugin": (CheckpointError, "no published weights exist.*plugin"),
    }[kind]
    with pytest.raises(expected[0], match=expected[1]):
        steadysam.build_model(name)


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].arch is not None])
def test_random_init_only_when_asked(name):
    """random_init=True builds the name's architecture (meta device: nothing allocated)."""
    with torch.device("meta"):
        model = steadysam.build_model(name, random_init=True)
    assert model.config == REGISTRY[name].config()


def test_random_init_of_a_shipped_model_is_refused():
    with pytest.raises(ValueError, match="shipped"):
        steadysam.build_model("demo_sam", random_init=True)
    with pytest.raises(ValueError, match="needs a model name"):
        steadysam.build_model(random_init=True)


@pytest.mark.parametrize("name", NAMES)
def test_info_knows_every_name(name, capsys, weights_home):
    assert main(["info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == name and info["weights"] == REGISTRY[name].weights
    if REGISTRY[name].cache_name:
        assert info["cached"] is False and info["cache_path"].startswith(str(weights_home))


def test_models_lists_the_registry(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == NAMES


@pytest.mark.parametrize(
    "name, message", [("sam_tiny", "no published weights"), ("sam_vit_b", "steadysam download")]
)
def test_embed_by_name_never_encodes_with_random_weights(
    name, message, tmp_path, capsys, weights_home
):
    """`steadysam embed FOLDER --model NAME` encodes with the name's trained weights; without
    them it stops with the message that says how to get them (it once cached embeddings of a
    randomly initialised encoder)."""
    import numpy as np
    from PIL import Image

    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "data/images/a.png")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "data/masks/a.png")
    out = tmp_path / "emb"
    code = main(["embed", str(tmp_path / "data"), "--out", str(out), "--model", name])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_info_says_when_no_checksum_is_published(capsys, weights_home):
    assert main(["info", "hq_sam_vit_b"]) == 0
    assert "sha256:        none published" in capsys.readouterr().out
    assert main(["info", "sam_vit_b"]) == 0
    assert f"sha256:        {REGISTRY['sam_vit_b'].sha256}" in capsys.readouterr().out
