"""Every recipe runs a few iterations on tiny models; frozen parts stay put, trainable ones
move; the embedding cache (fp16, resumable, checked) feeds the FocSAM stages; the final
checkpoint loads with build_model; the CLI reports bad input in one line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import randomize_
from test_train_support import (
    CONFIGS,
    TINY_REFINER,
    folder_dataset_override,
    make_coco,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.cli import main as cli_main
from steadysam.models.build import build_sam
from steadysam.train.build import build_train_model
from steadysam.train.config import load_config
from steadysam.train.embed_cache import CacheError
from steadysam.train.loop import train
from steadysam.weights.factory import build_model
from steadysam.weights.files import save_checkpoint

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "refiner")


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, bool]:
    """Per part: did any tensor change?"""
    a, b = before.state_dict(), after.state_dict()
    out = {}
    for part in PARTS:
        keys = [k for k in a if k.startswith(part + ".")]
        if keys:
            out[part] = any(not torch.equal(a[k], b[k]) for k in keys)
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("coco"), n=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("folder"), n=6)


def _coco_overrides(coco) -> list[str]:
    return [
        f"data.datasets.0.images={coco['images']}",
        f"data.datasets.0.annotations={coco['panoptic']}",
        f"data.datasets.0.masks={coco['panoptic_pngs']}",
        f"data.datasets.1.images={coco['root']}",
        f"data.datasets.1.annotations={coco['lvis']}",
    ]


@pytest.fixture(scope="module")
def focsam_stages(tmp_path_factory, coco):
    """The paper pipeline on tiny data: SAM checkpoint -> embed (fp16) -> stage 1 -> stage 2."""
    tmp = tmp_path_factory.mktemp("focsam")
    cache = tmp / "cache"
    ov1 = tiny_overrides(tmp / "s1", iters="3") + _coco_overrides(coco) + [f"data.cache={cache}"]
    cfg1 = load_config(CONFIGS / "focsam_stage1.yaml", ov1)
    sam = randomize_(build_sam(cfg1.arch()), seed=3)
    init = save_checkpoint(sam, tmp / "sam_init.safetensors")
    ov1.append(f"model.checkpoint={init}")
    cfg1 = load_config(CONFIGS / "focsam_stage1.yaml", ov1)
    rc = cli_main(
        ["embed", str(CONFIGS / "focsam_stage1.yaml"), *ov1, "--out", str(cache), "--fp16",
         "--measure", "2", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    final1 = train(cfg1)
    ov2 = (
        tiny_overrides(tmp / "s2", iters="3")
        + _coco_overrides(coco)
        + [
            f"data.cache={cache}",
            f"model.checkpoint={final1}",
            f"model.arch.refiner={TINY_REFINER}",
        ]
    )
    cfg2 = load_config(CONFIGS / "focsam_stage2.yaml", ov2)
    final2 = train(cfg2)
    return {"cfg1": cfg1, "cfg2": cfg2, "final1": final1, "final2": final2, "cache": cache,
            "init": init, "ov1": ov1}  # fmt: skip


def test_stage1_trains_only_the_decoder(focsam_stages):
    cfg1 = focsam_stages["cfg1"]
    before = build_train_model(cfg1)
    after = build_model(checkpoint=focsam_stages["final1"])
    assert after.refiner is None and after.config.preprocess == "focsam"
    assert _changed(before, after) == {
        "image_encoder": False,
        "prompt_encoder": False,
        "mask_decoder": True,
    }
    rows = list(csv.DictReader((focsam_stages["final1"].parent / "log.csv").open()))
    assert [int(r["iter"]) for r in rows] == [1, 2, 3] and all(r["ptl"] == "" for r in rows)
    assert (focsam_stages["final1"].parent / "loss.png").stat().st_size > 1000


def test_stage2_trains_only_the_refiner(focsam_stages):
    stage1 = build_model(checkpoint=focsam_stages["final1"])
    stage2 = build_model(checkpoint=focsam_stages["final2"])
    assert stage2.refiner is not None
    changed = _changed(stage1, stage2)
    assert changed == {"image_encoder": False, "prompt_encoder": False, "mask_decoder": False}
    init_refiner = build_train_model(focsam_stages["cfg2"]).refiner.state_dict()
    trained = stage2.refiner.state_dict()
    assert any(not torch.equal(init_refiner[k], trained[k]) for k in trained)
    rows = list(csv.DictReader((focsam_stages["final2"].parent / "log.csv").open()))
    assert all(float(r["ptl"]) >= 0 and r["iou_coarse"] != "" for r in rows)
    assert all(float(r["loss"]) == pytest.approx(float(r["nfl"]) + float(r["ptl"])) for r in rows)


def test_embedding_cache_fp16_resumable_and_checked(focsam_stages, capsys, tmp_path):
    cache = focsam_stages["cache"]
    entries = sorted((cache / "embeds").glob("*.npy"))
    assert len(entries) == 4  # COCO and LVIS name the same 4 files: one entry each
    e = np.load(entries[0])
    assert e.dtype == np.float16 and e.shape == (32, 8, 8)
    ov1 = focsam_stages["ov1"]
    args = ["embed", str(CONFIGS / "focsam_stage1.yaml"), *ov1, "--out", str(cache), "--fp16"]
    assert cli_main([*args, "--measure", "0", "--no-progress"]) == 0
    assert "0 written, 4 already there" in capsys.readouterr().out
    # other settings into the same folder, or a cache of another encoder, are refused
    assert cli_main([*args, "--no-color-aug", "--no-progress"]) == 2
    assert "made with other settings (color_aug)" in capsys.readouterr().err
    other = randomize_(build_sam(focsam_stages["cfg1"].arch()), seed=9)
    ckpt = save_checkpoint(other, tmp_path / "other.safetensors")
    ov = [*ov1, f"model.checkpoint={ckpt}", f"run.out_dir={tmp_path / 'run'}"]  # a new run
    cfg = load_config(CONFIGS / "focsam_stage1.yaml", ov)
    with pytest.raises(CacheError, match="different image encoder"):
        train(cfg)


def test_fp16_loss_effect_is_reported(focsam_stages, capsys, tmp_path):
    ov1 = focsam_stages["ov1"]
    args = ["embed", str(CONFIGS / "focsam_stage1.yaml"), *ov1, "--out", str(tmp_path / "c")]
    assert cli_main([*args, "--fp16", "--measure", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fp16 effect on the loss (2 samples, same prompts): fp32 " in out


@pytest.mark.parametrize("recipe", ["demo_tiny.yaml", "sam_finetune.yaml"])
def test_folder_recipes_run(recipe, folder, tmp_path):
    overrides = tiny_overrides(tmp_path / "run", iters="2") + folder_dataset_override(0, folder)
    overrides.append("model.checkpoint=null")
    if recipe == "sam_finetune.yaml":
        overrides.append("model.trainable=[prompt_encoder, mask_decoder]")
    cfg = load_config(CONFIGS / recipe, overrides)
    final = train(cfg)
    after = build_model(checkpoint=final)
    changed = _changed(build_train_model(cfg), after)
    want = set(cfg.model.trainable)
    assert {k for k, v in changed.items() if v} == want  # trainable moved, frozen did not


def test_sam_finetune_is_deterministic(folder, tmp_path):
    def run(name):
        ov = tiny_overrides(tmp_path / name, iters="2", **{"run.checkpoint_every": "5"})
        cfg = load_config(CONFIGS / "sam_finetune.yaml", ov + folder_dataset_override(0, folder))
        cfg.model.checkpoint = None
        return build_model(checkpoint=train(cfg)).state_dict()

    a, b = run("a"), run("b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_one_line_errors(capsys, tmp_path):
    assert cli_main(["train", str(CONFIGS / "demo_tiny.yaml"), "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    ov = [f"run.out_dir={tmp_path}", "data.datasets.0.images=/nonexistent/images"]
    assert cli_main(["train", str(CONFIGS / "demo_tiny.yaml"), *ov]) == 2
    assert "'/nonexistent/images': no such folder" in capsys.readouterr().err
    assert cli_main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert cli_main(["train", str(CONFIGS / "demo_tiny.yaml"), "--print-config"]) == 0
    assert "encoder_embed_dim: 128" in capsys.readouterr().out


def test_demo_stage2_recipe_runs_on_its_cache(focsam_stages, folder, tmp_path):
    # the demo's second stage: refiner on top of a stage-1 SAM, embeddings from steadysam embed
    ov = (
        tiny_overrides(tmp_path / "run", iters="2")
        + folder_dataset_override(0, folder)
        + [f"model.checkpoint={focsam_stages['final1']}", f"model.arch.refiner={TINY_REFINER}",
           f"data.cache={tmp_path / 'cache'}"]
    )  # fmt: skip
    recipe = str(CONFIGS / "demo_tiny_stage2.yaml")
    assert cli_main(["embed", recipe, *ov, "--out", str(tmp_path / "cache"), "--no-progress"]) == 0
    final = train(load_config(recipe, ov))
    changed = _changed(
        build_model(checkpoint=focsam_stages["final1"]), build_model(checkpoint=final)
    )
    assert not any(changed.values())  # everything but the refiner is frozen
    assert build_model(checkpoint=final).refiner is not None


def test_refiner_starts_from_the_spec_init(focsam_stages):
    # docs/focsam.md §4.9: gammas 1, P-DyReLU scales / biases 0, cls_scale_proj (w 1, b 0),
    # DCN weight ~ N(0, sqrt(2 / (fan_in + fan_out))); the stage-1 weights load around it.
    model = build_train_model(focsam_stages["cfg2"])
    state = model.refiner.state_dict()
    for k, v in state.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf.startswith("gamma"):
            assert torch.all(v == 1), k
        if leaf in ("pixel_scale", "pixel_bias", "channel_scale", "channel_bias"):
            assert torch.all(v == 0), k
        if "cls_scale_proj" in k:
            assert torch.all(v == (1 if leaf == "weight" else 0)), k
    w = torch.cat([v.flatten() for k, v in state.items() if k.endswith("dcn.weight")])
    c = model.config.prompt_embed_dim
    assert float(w.std()) == pytest.approx((2 / (9 * c + c)) ** 0.5, rel=0.1)
    stage1 = build_model(checkpoint=focsam_stages["final1"]).state_dict()
    assert all(torch.equal(stage1[k], model.state_dict()[k]) for k in stage1)


def test_embed_cache_shards_over_ranks(coco, tmp_path):
    from steadysam.train.data import build_sources
    from steadysam.train.embed_cache import build_cache, unique_images

    ov = tiny_overrides(tmp_path / "x") + _coco_overrides(coco)
    cfg = load_config(
        CONFIGS / "focsam_stage1.yaml", [*ov, "data.cache=null", "model.checkpoint=null"]
    )
    model, sources = build_train_model(cfg), build_sources(cfg.data)
    out = tmp_path / "cache"
    kw = dict(world=2, progress=False, batch_size=3)
    r1 = build_cache(model, sources, out, rank=1, **kw)  # rank 1 finishes first
    assert r1 == {"written": 2, "skipped": 0, "total": 4}
    assert not (out / "index.json").exists()
    r0 = build_cache(model, sources, out, rank=0, **kw)
    assert r0["written"] == 2
    index = json.loads((out / "index.json").read_text())
    assert sorted(index["keys"]) == sorted(k for k, _, _ in unique_images(sources))
    assert index["meta"]["dtype"] == "float32" and index["meta"]["color_aug"] is True
