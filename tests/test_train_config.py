"""Recipes: YAML files load, carry the paper's defaults, overrides are type-checked, the LR
schedule matches mmengine's LinearLR + PolyLR closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_support import CONFIGS

from steadysam.train.build import lr_factor
from steadysam.train.config import ConfigError, TrainConfig, load_config

PAPER_RECIPES = {"focsam_stage1.yaml": 320_000, "focsam_stage2.yaml": 160_000}


@pytest.mark.parametrize(
    "name",
    [
        "focsam_stage1.yaml",
        "focsam_stage2.yaml",
        "sam_finetune.yaml",
        "demo_tiny.yaml",
        "demo_tiny_stage2.yaml",
    ],
)
def test_recipes_load(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, TrainConfig)
    if not name.startswith("demo"):  # the demo documents its own (from-scratch) settings
        o = cfg.optim
        assert (o.lr, o.betas, o.weight_decay) == (1e-4, (0.9, 0.999), 0.05)
        assert (o.warmup_iters, o.warmup_start_factor, o.grad_clip) == (1500, 1e-6, None)
        assert cfg.data.batch_size == 16
        assert cfg.iters == PAPER_RECIPES.get(name, 320_000)
        text = (CONFIGS / name).read_text()
        assert "paper" in text.lower()  # the YAML says where its defaults come from


def test_stage_recipes_match_the_spec():
    s1 = load_config(CONFIGS / "focsam_stage1.yaml")
    assert s1.stage == "sam" and s1.model.trainable == ["mask_decoder"]
    assert s1.arch().refiner is None and s1.arch().encoder_norm_eps == 1e-5
    assert s1.loss.ptl_weight == 0.0 and s1.loss.nfl_alpha == 0.5 and s1.loss.nfl_gamma == 2.0
    assert [(d.type, d.gamma) for d in s1.data.datasets] == [("coco", 0.6), ("lvis", 0.9)]
    s2 = load_config(CONFIGS / "focsam_stage2.yaml")
    assert s2.stage == "refiner" and s2.model.trainable == ["refiner"]
    assert s2.loss.ptl_weight == 1.0
    assert s2.arch().refiner.depth == 12 and s2.arch().refiner.window_size == 16
    assert [d.refine_gamma for d in s2.data.datasets] == [0.6, 0.35]
    assert s2.sim.expand_ratio == (1.0, 1.4) and s2.sim.inner_k == 1.7
    assert s2.data.cache == s1.data.cache  # both stages read one cache (docs/focsam.md §7.2)


def test_overrides_are_typed():
    cfg = load_config(
        CONFIGS / "focsam_stage1.yaml",
        [
            "optim.lr=3e-4",
            "data.batch_size=4",
            "optim.betas=[0.8, 0.9]",
            "data.datasets.1.gamma=0.5",
            "optim.grad_clip=1",
            "model.arch.encoder_depth=4",
            "data.cache=null",
        ],
    )
    assert cfg.optim.lr == 3e-4 and cfg.data.batch_size == 4
    assert cfg.optim.betas == (0.8, 0.9) and cfg.optim.grad_clip == 1.0
    assert cfg.data.datasets[1].gamma == 0.5 and cfg.arch().encoder_depth == 4
    assert cfg.data.cache is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("data.batch_size=four", "data.batch_size: expected int"),
        ("data.batch_size=1.5", "data.batch_size: expected int"),
        ("optim.lr=fast", "optim.lr: expected float"),
        ("run.plot=3", "run.plot: expected true/false"),
        ("optim.betas=[0.9]", "expected a list of 2 values"),
        ("data.datasets.5.gamma=1", "index out of range"),
        ("model.arch.encoder_dept=4", "unknown SamConfig fields ['encoder_dept']"),
        ("model.trainable=[decoder]", "unknown parts ['decoder']"),
        ("stage=stage3", "stage must be one of"),
        ("optim.lr", "must look like key=value"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(CONFIGS / "focsam_stage1.yaml", [override])


def test_inconsistent_settings_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="needs a frozen image encoder"):
        load_config(
            CONFIGS / "focsam_stage1.yaml", ["model.trainable=[image_encoder, mask_decoder]"]
        )
    with pytest.raises(ConfigError, match="needs a model with a refiner"):
        load_config(CONFIGS / "focsam_stage1.yaml", ["stage=refiner"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 1e-4, momentum: 0.9}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*unknown config key optim.momentum"):
        load_config(bad)


def test_base_inheritance(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {CONFIGS / 'demo_tiny.yaml'}\niters: 7\noptim: {{lr: 0.5}}\n")
    cfg = load_config(child)
    demo = load_config(CONFIGS / "demo_tiny.yaml")
    assert cfg.iters == 7 and cfg.optim.lr == 0.5
    assert cfg.optim.warmup_iters == demo.optim.warmup_iters  # merged, not replaced
    assert cfg.model.arch == demo.model.arch


def test_lr_schedule_closed_form():
    # LinearLR(start 1e-6) over 1500 iterations, then PolyLR(power 1) to 0 at 320k.
    assert lr_factor(0, 320_000, 1500, 1e-6) == pytest.approx(1e-6)
    assert lr_factor(750, 320_000, 1500, 1e-6) == pytest.approx(1e-6 + (1 - 1e-6) / 2)
    assert lr_factor(1500, 320_000, 1500, 1e-6) == 1.0
    assert lr_factor(160_750, 320_000, 1500, 1e-6) == pytest.approx(0.5)
    assert lr_factor(320_000, 320_000, 1500, 1e-6) == 0.0


def test_sincos_position_init_for_from_scratch_runs(tmp_path):
    from test_train_support import tiny_overrides

    from steadysam.train.build import build_train_model, sincos_2d

    table = sincos_2d(8, 2, 3)  # dim 8: rows use channels 0..3, columns 4..7; 2 frequencies
    # channel layout per axis: [sin(p w0), sin(p w1), cos(p w0), cos(p w1)], w0 = 1, w1 = 1/100
    assert table[1, 2].tolist() == pytest.approx(
        [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
         math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)], abs=1e-6
    )  # fmt: skip
    ov = tiny_overrides(tmp_path)
    model = build_train_model(load_config(CONFIGS / "demo_tiny.yaml", ov))
    pos = model.image_encoder.pos_embed
    assert torch.allclose(pos[0], sincos_2d(pos.shape[-1], pos.shape[1], pos.shape[2]))
    zeros = build_train_model(
        load_config(CONFIGS / "demo_tiny.yaml", [*ov, "model.pos_embed_init=zeros"])
    )
    assert not zeros.image_encoder.pos_embed.any()
    with pytest.raises(ConfigError, match="pos_embed_init"):
        load_config(CONFIGS / "demo_tiny.yaml", ["model.pos_embed_init=learned"])
