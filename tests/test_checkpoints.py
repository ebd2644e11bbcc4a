"""Checkpoint reading / writing, format detection, architecture inference, strict errors."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_

import steadysam
from steadysam.models.build import build_sam
from steadysam.models.config import PluginConfig, RefinerConfig, SamConfig
from steadysam.weights.files import (
    CONFIG_METADATA_KEY,
    AmbiguousArchitecture,
    CheckpointError,
    describe_checkpoint,
    detect_format,
    infer_config,
    load_checkpoint,
    save_checkpoint,
    undetermined_fields,
)
from steadysam.weights.registry import sam_config


# -- official layouts, written independently of steadysam.weights.files (docs/focsam.md §2.2, §4.10)
def focsam_layout(state: dict) -> dict:
    """Our (= official SAM) keys -> FocSAM keys, by the converter's rules plus refine_head."""
    prefixes = {
        "image_encoder.": "backbone.",
        "prompt_encoder.": "neck.",
        "mask_decoder.": "decode_head.",
        "refiner.": "refine_head.",
    }
    out = collections.OrderedDict()
    for key, value in state.items():
        ours = next(p for p in prefixes if key.startswith(p))
        rest = key[len(ours) :]
        if ours == "prompt_encoder.":
            rest = rest.replace("pe_layer.", "pos_embed_layer.")
            rest = rest.replace("point_embeddings.", "point_embeds.")
        out[prefixes[ours] + rest] = value
    return out


class HistoryBuffer:
    """Stands for mmengine's logging class: unknown to the reader, pickled in message_hub."""

    def __init__(self) -> None:
        self.values = np.arange(3.0)


def _side_effect(path: str) -> None:
    Path(path).write_text("code from the checkpoint ran")


class Malicious:
    """Unpickling this would call _side_effect: the reader must never do that."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_side_effect, (self.path,))


def write_focsam_mmengine(model: torch.nn.Module, path: Path, extra_meta=None) -> dict:
    """An mmengine-style FocSAM checkpoint: meta, state_dict (FocSAM keys), optimizer."""
    state = focsam_layout(model.state_dict())
    torch.save(
        {
            "meta": {
                "iter": 160000,
                "mmengine_version": "0.8.4",
                "seed": np.int64(42),
                **(extra_meta or {}),
            },
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "message_hub": {"log_scalars": {"loss": HistoryBuffer()}},
        },
        path,
    )
    return state


@pytest.fixture(scope="module")
def focsam_tiny() -> torch.nn.Module:
    return randomize_(build_sam(sam_config("focsam_tiny")), seed=1)


def assert_same_tensors(loaded: dict, model: torch.nn.Module) -> None:
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k


# -- official SAM ------------------------------------------------------------------------------
def test_official_segment_anything_checkpoint_round_trip(tmp_path):
    from official_sam import build_official_sam

    official = randomize_(
        build_official_sam(
            embed_dim=64,
            depth=2,
            num_heads=2,
            global_attn_indexes=(1,),
            window_size=8,
            image_size=256,
            prompt_embed_dim=64,
            decoder_mlp_dim=128,
            iou_head_hidden_dim=64,
        ),
        seed=3,
    )
    path = tmp_path / "sam_official.pth"
    torch.save(official.state_dict(), path)
    # Not a published size: segment-anything's conventions are not implied, the name gives them.
    with pytest.raises(AmbiguousArchitecture, match="encoder_norm_eps, preprocess, decoder_num"):
        load_checkpoint(path)
    state, config, fmt = load_checkpoint(path, architecture="sam_tiny")
    assert fmt == "sam"
    assert config == sam_config("sam_tiny")
    assert_same_tensors(state, official)

    # The same names must mean the same computation: compare the encoders and a decode.
    model = steadysam.build_model("sam_tiny", checkpoint=path)
    assert model.config.preprocess == "sam" and model.config.encoder_norm_eps == 1e-6
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.image_encoder(x), official.image_encoder(x)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        pts = (torch.tensor([[[100.0, 80.0]]]), torch.tensor([[1]]))
        sparse, dense = official.prompt_encoder(points=pts, boxes=None, masks=None)
        m_theirs, _ = official.mask_decoder(
            theirs, official.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
        m_ours, _ = model.decode(ours, pts)
        torch.testing.assert_close(m_ours, m_theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_sam_state_dict(tmp_path, wrapper):
    model = build_sam(sam_config("sam_tiny"))
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: model.state_dict(), "epoch": 3}, path)
    state, config, fmt = load_checkpoint(path, architecture="sam_tiny")
    assert (fmt, config) == ("sam", sam_config("sam_tiny"))
    assert_same_tensors(state, model)


# -- official FocSAM ---------------------------------------------------------------------------
def test_focsam_mmengine_checkpoint(tmp_path, focsam_tiny):
    path = tmp_path / "iter_160000.pth"
    flag = tmp_path / "ran.txt"
    file_state = write_focsam_mmengine(focsam_tiny, path, {"evil": Malicious(str(flag))})
    # The layout really is FocSAM's, including the renamed prompt-encoder members.
    assert "neck.pos_embed_layer.positional_encoding_gaussian_matrix" in file_state
    assert "neck.point_embeds.3.weight" in file_state
    assert "backbone.neck.0.weight" in file_state and "refine_head.embed_proj.weight" in file_state

    with pytest.raises(AmbiguousArchitecture, match="refiner.num_heads, refiner.window_size"):
        load_checkpoint(path)  # a tiny FocSAM: FocSAM's code defines no such size
    state, config, fmt = load_checkpoint(path, architecture="focsam_tiny")  # meta is inert
    assert not flag.exists()
    assert fmt == "focsam"
    assert config == sam_config("focsam_tiny")
    assert config.encoder_norm_eps == 1e-5 and config.preprocess == "focsam"
    assert_same_tensors(state, focsam_tiny)

    model = steadysam.build_model("focsam_tiny", checkpoint=path)
    assert model.refiner is not None and model.config.preprocess == "focsam"
    for k, v in focsam_tiny.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_focsam_converter_output_without_refiner(tmp_path):
    sam = randomize_(build_sam(sam_config("sam_tiny")), seed=2)
    path = tmp_path / "sam_pretrain_vit_tiny.pth"
    torch.save(focsam_layout(sam.state_dict()), path)  # flat, like samvit2mmclickseg.py
    custom = dataclasses.replace(sam_config("sam_tiny"), encoder_norm_eps=1e-5, preprocess="focsam")
    state, config, fmt = load_checkpoint(path, architecture=custom)
    assert fmt == "focsam" and config == custom
    assert_same_tensors(state, sam)
    # Named explicitly as plain SAM, the name's conventions win.
    assert steadysam.build_model("sam_tiny", checkpoint=path).config.preprocess == "sam"


def test_corrupted_checkpoint_lists_exactly_the_problems(tmp_path, focsam_tiny):
    state = focsam_layout(focsam_tiny.state_dict())
    del state["decode_head.transformer.norm_final_attn.bias"]
    state["decode_head.extra_head.weight"] = torch.zeros(3)
    state["neck.no_mask_embed.weight"] = torch.zeros(1, 63)
    path = tmp_path / "bad.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    e = info.value
    assert e.missing == ["decode_head.transformer.norm_final_attn.bias"]
    assert e.unexpected == ["decode_head.extra_head.weight"]
    assert e.mismatched == ["neck.no_mask_embed.weight (1, 63) vs (1, 64)"]
    msg = str(e)
    for text in ("1 missing keys", "1 unexpected keys", "1 shape mismatches", "bad.pth"):
        assert text in msg
    assert "\n" not in msg
    with pytest.raises(CheckpointError):
        steadysam.build_model(checkpoint=path)


def test_focsam_file_without_backbone_names_the_gap(tmp_path, focsam_tiny):
    state = focsam_layout(focsam_tiny.state_dict())
    state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    path = tmp_path / "decoder_only.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"'backbone\.patch_embed.* \(no backbone\.\* keys"):
        load_checkpoint(path)


def test_many_missing_keys_are_abbreviated(tmp_path):
    state = build_sam(sam_config("sam_tiny")).state_dict()
    state = {k: v for k, v in state.items() if "output_hypernetworks_mlps" not in k}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"\(\+\d+ more\)") as info:
        load_checkpoint(path)
    assert len(info.value.missing) > 20


@pytest.mark.parametrize(
    "content, match",
    [
        ({"meta": {"x": 1}}, "not a state dict"),
        ({"image_encoder.pos_embed": torch.zeros(1), "note": "hi"}, "not a state dict"),
        ({"backbone_x.weight": torch.zeros(1)}, "unrecognised key layout"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 32)
    with pytest.raises(CheckpointError, match="junk.pth.*not a PyTorch checkpoint"):
        load_checkpoint(junk)
    for name, content in (("notes.pth", b"hi, not weights"), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"cannot read .*{name}.*not a PyTorch"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


# -- our own format ----------------------------------------------------------------------------
def test_safetensors_round_trip_keeps_the_exact_config(tmp_path):
    # Non-default values that shapes cannot reveal: the JSON config must carry them.
    config = dataclasses.replace(
        sam_config("focsam_tiny"),
        decoder_num_heads=4,
        preprocess="sam",
        refiner=RefinerConfig(depth=2, num_heads=4, window_size=4, expand_ratio=1.2),
    )
    model = randomize_(build_sam(config), seed=4)
    path = save_checkpoint(model, tmp_path / "sub" / "mine.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["mine.safetensors"]  # no temp left
    state, loaded, fmt = load_checkpoint(path)
    assert fmt == "steadysam" and loaded == config
    assert_same_tensors(state, model)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert CONFIG_METADATA_KEY in f.metadata()
    rebuilt = steadysam.build_model(checkpoint=path)
    assert rebuilt.config == config
    with pytest.raises(CheckpointError, match="decoder_num_heads"):
        steadysam.build_model("focsam_tiny", checkpoint=path)


# -- architecture inference --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h", "focsam_vit_h"])
def test_infer_official_sizes_on_meta_device(name):
    with torch.device("meta"):
        state = build_sam(sam_config(name)).state_dict()
    assert infer_config(state) == sam_config(name)
    if name.startswith("focsam"):
        assert detect_format(focsam_layout(state)) == "focsam"
        assert infer_config(focsam_layout(state)) == sam_config(name)


CUSTOM = SamConfig(
    encoder_embed_dim=96,
    encoder_depth=5,
    encoder_num_heads=3,
    encoder_global_attn_indexes=(0, 3),
    encoder_window_size=3,
    encoder_mlp_ratio=2.0,
    image_size=128,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=1,
    decoder_mlp_dim=48,
    num_multimask_outputs=2,
    iou_head_depth=2,
    iou_head_hidden_dim=40,
    refiner=RefinerConfig(depth=3, num_heads=1, mlp_ratio=2.0, window_size=4),
    encoder_norm_eps=1e-5,
    preprocess="focsam",
)


def test_infer_custom_architecture(tmp_path):
    model = build_sam(CUSTOM)
    assert infer_config(model.state_dict()) == CUSTOM
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": focsam_layout(model.state_dict())}, path)
    with pytest.raises(AmbiguousArchitecture, match="refiner.num_heads, refiner.window_size"):
        load_checkpoint(path)
    state, config, fmt = load_checkpoint(path, architecture=CUSTOM)
    assert (config, fmt) == (CUSTOM, "focsam")
    assert_same_tensors(state, model)
    with pytest.raises(CheckpointError, match="encoder_embed_dim: checkpoint 96, 'focsam_tiny' 64"):
        steadysam.build_model("focsam_tiny", checkpoint=path)
    with pytest.raises(CheckpointError, match="refiner: checkpoint has one, 'sam_tiny' has none"):
        steadysam.build_model("sam_tiny", checkpoint=path)


def test_info_summary(tmp_path, focsam_tiny):
    path = tmp_path / "f.pth"
    write_focsam_mmengine(focsam_tiny, path)
    info = describe_checkpoint(path)
    assert info["open_fields"] == [
        "encoder_norm_eps",
        "preprocess",
        "decoder_num_heads",
        "refiner.num_heads",
        "refiner.window_size",
    ]
    assert info["format"] == "focsam" and info["refiner"] and info["preprocess"] == "focsam"
    assert info["matches"] == ["focsam_tiny"]
    counts = {
        p: sum(t.numel() for t in getattr(focsam_tiny, p).parameters()) for p in info["parameters"]
    }
    assert info["parameters"] == counts


# -- never a guessed architecture ----------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt", [("sam_vit_b", "sam"), ("sam_vit_h", "sam"), ("focsam_vit_h", "focsam")]
)
def test_published_sizes_in_official_layouts_are_determined(name, fmt):
    """Official files of published models: their code's conventions are facts, not guesses."""
    config = sam_config(name)
    assert undetermined_fields(config, fmt, stored=False) == ()
    # the same shapes in our layout without a stored config: anything could have made them
    assert "decoder_num_heads" in undetermined_fields(config, "steadysam", stored=False)
    with_plugin = dataclasses.replace(config, plugin=PluginConfig())
    assert undetermined_fields(with_plugin, fmt, stored=False) == (
        "plugin.pe_mode",
        "plugin.drp_token",
        "plugin.sample_source",
        "plugin.offset_range",
    )


HIDDEN = dataclasses.replace(
    sam_config("focsam_tiny"),
    decoder_num_heads=4,
    encoder_norm_eps=1e-6,
    preprocess="sam",
    refiner=RefinerConfig(depth=2, num_heads=4, window_size=4),
)


@pytest.mark.parametrize("layout", ["ours", "focsam", "sam-without-refiner"])
def test_bare_state_dicts_name_the_fields_they_leave_open(tmp_path, layout):
    """A plain torch.save(state_dict) of a model whose hidden fields differ from every rule:
    loading it alone names the open fields instead of building the wrong network; the right
    architecture given explicitly loads it exactly."""
    config = (
        HIDDEN if layout != "sam-without-refiner" else dataclasses.replace(HIDDEN, refiner=None)
    )
    model = randomize_(build_sam(config), seed=5)
    state = model.state_dict()
    path = tmp_path / "bare.pth"
    torch.save(focsam_layout(state) if layout == "focsam" else state, path)
    with pytest.raises(AmbiguousArchitecture) as info:
        steadysam.build_model(checkpoint=path)
    msg = str(info.value)
    assert "decoder_num_heads" in msg and "encoder_norm_eps" in msg and "--model NAME" in msg
    assert ("refiner.window_size" in msg) == (config.refiner is not None)
    _, got, _ = load_checkpoint(path, architecture=config)
    assert got == config


def test_training_checkpoints_store_their_config(tmp_path):
    """The project's training checkpoints ({"model": ..., "config": ...}) load exactly, hidden
    fields included, with no name."""
    model = randomize_(build_sam(HIDDEN), seed=6)
    path = tmp_path / "iter_0000010.pt"
    torch.save(
        {"iteration": 10, "model": model.state_dict(), "config": HIDDEN.to_dict(), "rng": {}},
        path,
    )
    loaded = steadysam.build_model(checkpoint=path)
    assert loaded.config == HIDDEN
    assert_same_tensors(loaded.state_dict(), model)
    # A name that disagrees with a stored hidden field is refused, not obeyed.
    with pytest.raises(CheckpointError, match="decoder_num_heads: checkpoint 4, 'focsam_tiny' 8"):
        steadysam.build_model("focsam_tiny", checkpoint=path)
