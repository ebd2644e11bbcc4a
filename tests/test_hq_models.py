"""HQ-SAM as a model like the others: registry names, official files (strict loading, the
architecture inferred from the file), the encoder's early feature, the predictor's caches,
the Stable-SAM plugin on HQ-SAM, and ``eval`` / ``eval-prompts`` end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import randomize_, serve_weights
from official_hq import build_official_hq_sam, segment_anything_hq
from test_eval_support import DATA, strip_timing

import steadysam
from steadysam import Predictor, build_sam, sam_config
from steadysam.cli import main
from steadysam.eval import read_records
from steadysam.eval.prompt_report import read_prompt_records
from steadysam.models.config import HQConfig, PluginConfig, RefinerConfig
from steadysam.models.image_encoder import ImageEncoderViT
from steadysam.weights import hub
from steadysam.weights.files import (
    CheckpointError,
    describe_checkpoint,
    load_checkpoint,
    parameter_counts,
    save_checkpoint,
    undetermined_fields,
)
from steadysam.weights.inference import infer_config
from steadysam.weights.registry import REGISTRY

HQ_NAMES = ("hq_sam_vit_b", "hq_sam_vit_l", "hq_sam_vit_h")
# segment-anything-hq's tiny test network in the shapes of hq_sam_tiny (256 px, 16x16 grid).
TINY = dict(
    embed_dim=64,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    window_size=8,
    image_size=256,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    iou_head_hidden_dim=64,
)


@pytest.fixture(scope="module")
def official_tiny():
    torch.manual_seed(0)
    return randomize_(build_official_hq_sam(**TINY), std=0.1, seed=7)


@pytest.fixture
def official_tiny_file(tmp_path, official_tiny):
    """hq_sam_tiny's weights as an official sam_hq_*.pth: a flat torch.save(state_dict)."""
    path = tmp_path / "sam_hq_tiny.pth"
    torch.save(official_tiny.state_dict(), path)
    return path


# -- registry and files ------------------------------------------------------------------------
def test_registry_records():
    for name in HQ_NAMES:
        r = REGISTRY[name]
        size = name.rsplit("_", 1)[1]
        assert r.weights == "published"
        assert r.url == f"https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_{size}.pth"
        assert r.cache_name == f"sam_hq_vit_{size}.pth"  # the published file name
        assert r.sha256 is None  # the authors publish none: none is made up
        config = r.config()
        base = sam_config(f"sam_vit_{size}")
        assert config.hq == HQConfig(token_only=False)  # the official predictor's default
        assert dataclasses.replace(config, hq=None) == base  # SAM's architecture plus HQ
    # HQ-SAM's learnable parameters as computed from the sam-hq code (spec §5).
    hq = {n: parameter_counts(sam_config(n))["hq"] for n in HQ_NAMES}
    assert hq == {"hq_sam_vit_b": 1_071_104, "hq_sam_vit_l": 1_333_248, "hq_sam_vit_h": 1_595_392}
    assert parameter_counts(sam_config("hq_sam_vit_b"))["mask_decoder"] == 4_058_340


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_official_sizes_are_inferred_and_determined(size):
    """segment-anything-hq's own builders (meta device): their state dicts infer to the
    registered architecture, every key matches, and no field is left open."""
    build = segment_anything_hq.sam_model_registry[f"vit_{size}"]
    with torch.device("meta"):
        state = build().state_dict()
        expected = build_sam(sam_config(f"hq_sam_vit_{size}")).state_dict()
    config = infer_config(state)
    assert config == sam_config(f"hq_sam_vit_{size}")
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    assert undetermined_fields(config, "sam", stored=False) == ()


def test_official_vit_b_file_loads_strictly_by_itself(tmp_path):
    """A full-size official-layout file: architecture from the file alone, every tensor in
    its place (each filled with its own index, so a swapped key would show)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in segment_anything_hq.build_sam_vit_b().state_dict().items()}
    state = {k: torch.full(s, float(i)) for i, (k, s) in enumerate(shapes.items())}
    path = tmp_path / "sam_hq_vit_b.pth"
    torch.save(state, path)
    del state
    model = steadysam.build_model(checkpoint=path)
    assert model.config == sam_config("hq_sam_vit_b") and model.is_hq
    loaded = model.state_dict()
    assert set(loaded) == set(shapes)
    for i, key in enumerate(shapes):
        assert loaded[key].flatten()[0].item() == float(i), key
    assert describe_checkpoint(path)["matches"] == ["hq_sam_vit_b"]


def test_official_tiny_file_loads_with_its_name_and_mismatches_are_errors(
    tmp_path, official_tiny_file, official_tiny
):
    # Not a published size: the name supplies the conventions, as for SAM.
    model = steadysam.build_model("hq_sam_tiny", checkpoint=official_tiny_file)
    for k, v in official_tiny.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="hq: checkpoint has one, 'sam_tiny' has none"):
        steadysam.build_model("sam_tiny", checkpoint=official_tiny_file)
    sam_file = tmp_path / "sam.pth"
    torch.save(build_sam(sam_config("sam_tiny")).state_dict(), sam_file)
    with pytest.raises(CheckpointError, match="hq: checkpoint has none, 'hq_sam_tiny' has one"):
        steadysam.build_model("hq_sam_tiny", checkpoint=sam_file)
    # A file with an HQ part missing names exactly that key.
    state = official_tiny.state_dict()
    del state["mask_decoder.compress_vit_feat.0.weight"]
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError, match="1 missing keys: mask_decoder.compress_vit_feat.0."):
        load_checkpoint(broken, architecture="hq_sam_tiny")


def test_safetensors_round_trip_keeps_hq_and_its_setting(tmp_path):
    config = dataclasses.replace(sam_config("hq_sam_tiny"), hq=HQConfig(token_only=True))
    model = randomize_(build_sam(config), seed=2)
    path = save_checkpoint(model, tmp_path / "hq.safetensors")
    loaded = steadysam.build_model(checkpoint=path)
    assert loaded.config == config and loaded.config.hq.token_only is True
    with pytest.raises(ValueError, match="hq.token_only must be True or False"):
        HQConfig(token_only="yes")


def test_download_without_a_published_checksum(tmp_path, monkeypatch, weights_home):
    """No sha256 is published for HQ-SAM: the file is downloaded, not compared with a made-up
    checksum, and then checked by its architecture (strict loading) like every file."""
    model = randomize_(build_sam(sam_config("hq_sam_tiny")), seed=4)
    buf = tmp_path / "payload.pth"
    torch.save(model.state_dict(), buf)
    arch = REGISTRY["hq_sam_tiny"].arch
    serve_weights(monkeypatch, tmp_path, "hq_sam_vit_b", buf.read_bytes(), sha256=None, arch=arch)
    with pytest.raises(hub.WeightsNotCached, match="steadysam download hq_sam_vit_b"):
        steadysam.build_model("hq_sam_vit_b")
    got = steadysam.build_model("hq_sam_vit_b", download=True)
    assert torch.equal(got.mask_decoder.hf_token.weight, model.mask_decoder.hf_token.weight)
    cached = weights_home / "sam_hq_vit_b.pth"
    assert cached.is_file() and not cached.with_name(cached.name + ".sha256.json").exists()
    assert steadysam.build_model("hq_sam_vit_b").config == sam_config("hq_sam_tiny")
    # A cached file that is not this architecture is an error, never a wrong model.
    torch.save(build_sam(sam_config("sam_tiny")).state_dict(), cached)
    with pytest.raises(CheckpointError, match="hq: checkpoint has none"):
        steadysam.build_model("hq_sam_vit_b")


def test_unsupported_combinations_are_errors():
    with pytest.raises(ValueError, match="HQ-SAM with a FocSAM refiner"):
        build_sam(dataclasses.replace(sam_config("hq_sam_tiny"), refiner=RefinerConfig(depth=2)))
    model = build_sam(sam_config("sam_tiny"))
    emb = torch.zeros(1, 64, 16, 16)
    with pytest.raises(ValueError, match="not HQ-SAM"):
        model.decode(emb, hq_token_only=True)
    hq = build_sam(sam_config("hq_sam_tiny"))
    with pytest.raises(ValueError, match="needs the encoder's early features"):
        hq.decode(emb)
    with pytest.raises(ValueError, match="returns no tokens"):
        hq.decode(emb, return_tokens=True, early_features=torch.zeros(1, 16, 16, 64))


# -- the encoder's early feature ---------------------------------------------------------------
def test_early_feature_is_the_first_global_block_output_itself():
    """No extra copy: the returned tensor is that block's output object; the embedding is
    unchanged by asking for it."""
    config = dataclasses.replace(
        sam_config("hq_sam_tiny"), encoder_depth=5, encoder_global_attn_indexes=(2, 4)
    )
    model = randomize_(build_sam(config), seed=1)
    enc = model.image_encoder
    assert enc.early_index == 2
    seen = {}
    enc.blocks[2].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    x = torch.randn(1, 3, 256, 256)
    with torch.inference_mode():
        emb, early = model.encode(x, early_features=True)
        plain = model.encode(x)
    assert early is seen["out"] and early.shape == (1, 16, 16, 64)
    assert torch.equal(emb, plain)
    with pytest.raises(ValueError, match="no global-attention block"):
        ImageEncoderViT(img_size=256, embed_dim=64, depth=1, num_heads=2)(x, early_features=True)


# -- predictor ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image():
    from PIL import Image

    path = sorted((DATA / "GrabCut" / "images").iterdir())[0]
    return np.array(Image.open(path).convert("RGB"))


def _hq_pair(seed: int = 3):
    """An HQ-SAM model and the plain SAM whose weights it shares (HQ-SAM keeps SAM frozen)."""
    hq = randomize_(build_sam(sam_config("hq_sam_tiny")), seed=seed, std=0.1)
    sam = build_sam(sam_config("sam_tiny"))
    sam.load_state_dict({k: v for k, v in hq.state_dict().items() if k in sam.state_dict()})
    return hq, sam


def test_disk_cache_keeps_early_features_apart_from_sam_embeddings(tmp_path, image):
    hq, sam = _hq_pair()
    pc, pl = np.array([[100, 120]]), np.array([1])
    p_sam = Predictor(sam, cache_dir=tmp_path)
    p_sam.set_image(image)
    assert p_sam.early_features is None
    p_hq = Predictor(hq, cache_dir=tmp_path)
    p_hq.set_image(image)  # same encoder weights and image: must not take SAM's entry
    assert p_hq.last_encoder_seconds > 0 and p_hq.early_features.shape == (1, 16, 16, 64)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    fresh = p_hq.predict(pc, pl, return_logits=True)
    again = Predictor(hq, cache_dir=tmp_path)
    again.set_image(image)
    assert again.last_encoder_seconds == 0.0  # from the disk cache
    assert torch.equal(again.early_features, p_hq.early_features)
    for a, b in zip(fresh, again.predict(pc, pl, return_logits=True), strict=True):
        np.testing.assert_array_equal(a, b)
    # A SAM entry under the HQ key (or any other damage) is recomputed, not misread.
    (entry,) = [p for p in tmp_path.glob("*-early.pt")]
    torch.save(p_sam.features, entry)
    third = Predictor(hq, cache_dir=tmp_path)
    third.set_image(image)
    assert third.last_encoder_seconds > 0
    np.testing.assert_array_equal(third.predict(pc, pl, return_logits=True)[2], fresh[2])


def test_memory_cache_and_hq_features_follow_the_image(image):
    hq, _ = _hq_pair()
    pred = Predictor(hq, cache_size=2)
    other = np.ascontiguousarray(image[::-1])
    pc, pl = np.array([[100, 120]]), np.array([1])
    pred.set_image(image)
    a = pred.predict(pc, pl, return_logits=True)[2]
    early_a = pred.early_features
    pred.set_image(other)
    b = pred.predict(pc, pl, return_logits=True)[2]
    assert np.abs(a - b).max() > 1e-3  # the fusion was recomputed for the new image
    pred.set_image(image)  # from the in-memory cache, with its early feature
    assert pred.last_encoder_seconds == 0.0 and pred.early_features is early_a
    np.testing.assert_array_equal(pred.predict(pc, pl, return_logits=True)[2], a)


def test_set_embedding_needs_the_early_features(image):
    hq, sam = _hq_pair()
    pred = Predictor(hq)
    pred.set_image(image)
    emb, early, size = pred.features, pred.early_features, pred.original_size
    pc, pl = np.array([[50, 60]]), np.array([1])
    ref = pred.predict(pc, pl, return_logits=True)[2]
    other = Predictor(hq)
    with pytest.raises(ValueError, match="also needs early_features"):
        other.set_embedding(emb, size)
    with pytest.raises(ValueError, match=r"early_features must have shape \(1, 16, 16, 64\)"):
        other.set_embedding(emb, size, early[..., :8])
    assert not other.is_image_set
    other.set_embedding(emb, size, early.numpy())
    np.testing.assert_array_equal(other.predict(pc, pl, return_logits=True)[2], ref)
    p_sam = Predictor(sam)
    with pytest.raises(ValueError, match="not HQ-SAM"):
        p_sam.set_embedding(emb, size, early)
    p_sam.set_embedding(emb, size)
    with pytest.raises(ValueError, match="hq_token_only=True: this model is not HQ-SAM"):
        p_sam.predict(pc, pl, hq_token_only=True)
    with pytest.raises(TypeError, match="hq_token_only must be True, False or None"):
        pred.predict(pc, pl, hq_token_only="yes")


def test_sessions_use_the_models_hq_token_only_default(image):
    hq, _ = _hq_pair()
    only = build_sam(dataclasses.replace(hq.config, hq=HQConfig(token_only=True)))
    only.load_state_dict(hq.state_dict())
    results = {}
    for name, model in (("both", hq), ("hq", only)):
        pred = Predictor(model)
        pred.set_image(image)
        obj = pred.new_object(mode="sam-best")
        obj.click(100, 120)
        obj.click(30, 40, False)
        results[name] = obj.logits
        pc, pl = np.array([[100, 120], [30, 40]]), np.array([1, 0])
        # The same as predict with the model's default, the previous logits fed back.
        first = pred.predict(pc[:1], pl[:1], multimask_output=True, return_logits=True)[2]
        second = pred.predict(pc, pl, mask_input=first, multimask_output=True, return_logits=True)
        np.testing.assert_array_equal(second[2], obj.logits[0].numpy())
    assert (results["both"] - results["hq"]).abs().max() > 1e-3


# -- Stable-SAM plugin on HQ-SAM ---------------------------------------------------------------
def test_stable_plugin_composes_with_hq(image):
    """A fresh plugin is the identity on HQ-SAM too; its router counts the HQ token among the
    output tokens (the ``mean`` routing token)."""
    hq, _ = _hq_pair()
    stable = build_sam(dataclasses.replace(hq.config, plugin=PluginConfig(drp_token="mean")))
    stable.load_state_dict(hq.state_dict(), strict=False)
    (plugin,) = stable.plugins()
    assert plugin.num_output_tokens == 1 + 4 + 1
    assert steadysam.build_model("stable_hq_sam_tiny", random_init=True).config.hq is not None
    pc, pl = np.array([[100, 120]]), np.array([1])
    outs = []
    for model in (hq, stable):
        pred = Predictor(model)
        pred.set_image(image)
        outs.append(pred.predict(pc, pl, return_logits=True)[2])
    np.testing.assert_array_equal(outs[0], outs[1])


# -- eval and eval-prompts ---------------------------------------------------------------------
def test_eval_and_eval_prompts_end_to_end(tmp_path, official_tiny_file, official_tiny):
    """HQ-SAM by name plus an official-layout file, through both CLIs on 2 GrabCut images."""
    net = ["--model", "hq_sam_tiny", "--checkpoint", str(official_tiny_file), "--device", "cpu"]
    common = ["--dataset", "GrabCut", "--data-root", str(DATA), "--limit", "2", "--no-progress"]
    out = tmp_path / "clicks"
    argv = ["eval", *net, *common, "--clicks", "3", "--protocol", "sam-best", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_samples"] == 2 and summary["num_errors"] == 0
    records = read_records(out)
    for r in records:
        assert len(r["ious"]) == 3 and all(0.0 <= v <= 1.0 for v in r["ious"])
    assert len({tuple(r["ious"]) for r in records}) == 2  # a real model, not a constant
    prompts = ["--prompts", "gt-box,noisy-box:0.4,points:1,points:3", "--draws", "2"]
    for name in ("p1", "p2"):
        argv = ["eval-prompts", *net, *common, *prompts, "--out", str(tmp_path / name)]
        assert main(argv) == 0
    s = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert s["num_samples"] == 2 and s["num_errors"] == 0
    for m in s["settings"].values():
        assert 0.0 <= m["miou"] <= 1.0 and m["n"] == 2
    # Deterministic: the same command gives the same records.
    r1, r2 = (read_prompt_records(tmp_path / n) for n in ("p1", "p2"))
    assert strip_timing(r1) == strip_timing(r2)
