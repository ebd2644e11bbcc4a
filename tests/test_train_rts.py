"""Stable-SAM robust training (stage rts): only the plugin trains, prompts come from
``prompts.rts_prompt`` inside the valid image area, BCE + Dice on uncertainty-sampled points,
epochs -> iterations, plugin-only export, exact resume and DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROCESS_TIMEOUT, free_port, randomize_
from test_train_support import (
    CONFIGS,
    REPO,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.cli import main as cli_main
from steadysam.models.build import build_sam
from steadysam.models.stable_plugin import is_plugin_key
from steadysam.train.build import build_train_model
from steadysam.train.config import ConfigError, load_config
from steadysam.train.data import ImageSpec, TrainSamples, build_sources, collate
from steadysam.train.loop import TrainStep, _iteration_rngs, epoch_iters, rts_num_points, train
from steadysam.train.losses import (
    bce_dice_loss,
    point_sample,
    sampled_mask_loss,
    uncertain_points,
)
from steadysam.weights.factory import build_model
from steadysam.weights.files import save_checkpoint

RECIPE = CONFIGS / "demo_tiny_rts.yaml"


def rts_overrides(out, data, **extra: str) -> list[str]:
    """The demo RTS recipe on the tiny test SAM (+ plugin), without cache or checkpoint."""
    ov = tiny_overrides(
        out,
        **{
            "epochs": "null",
            "iters": "2",
            "model.checkpoint": "null",
            "data.cache": "null",
            "model.arch.plugin": "{}",
            **extra,
        },
    )
    return ov + folder_dataset_override(0, data)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data"), n=6)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    """A tiny trained-looking SAM (no plugin) in the steadysam format."""
    cfg = load_config(CONFIGS / "demo_tiny.yaml", tiny_overrides(tmp_path_factory.mktemp("x")))
    sam = randomize_(build_sam(cfg.arch()), seed=4)
    return save_checkpoint(sam, tmp_path_factory.mktemp("sam") / "sam.safetensors")


# -- configuration ----------------------------------------------------------------------------
def test_recipes_load_with_their_rts_settings():
    full = load_config(CONFIGS / "stablesam_rts.yaml")
    assert full.stage == "rts" and full.model.trainable == ["plugin"]
    assert full.arch().plugin is not None and full.arch().encoder_depth == 24  # ViT-L
    assert (full.optim.lr, full.optim.weight_decay, full.optim.warmup_iters) == (1e-3, 0.0, 0)
    assert full.optim.decay is False and full.epochs == 1 and full.data.batch_size == 32
    assert full.rts.num_points == 12544 and full.rts.k_range == (1, 10)
    assert (full.rts.bce_weight, full.rts.dice_weight) == (1.0, 1.0)
    demo = load_config(RECIPE)
    assert demo.stage == "rts" and demo.model.trainable == ["plugin"] and demo.data.cache
    assert demo.arch().plugin is not None and demo.arch().refiner is None
    stage1 = load_config(CONFIGS / "demo_tiny.yaml")
    assert demo.arch().encoder_embed_dim == stage1.arch().encoder_embed_dim
    assert stage1.sim.box_prob == 0.5


def test_plugin_in_arch_and_validation(data, tmp_path):
    ov = rts_overrides(tmp_path, data)
    cfg = load_config(RECIPE, ov)
    assert cfg.arch().plugin.sites == ("layer1_t2i",)
    small = load_config(RECIPE, [*ov, "model.arch.plugin={drp_hidden: 8}"])
    assert small.arch().plugin.drp_hidden == 8
    with pytest.raises(ConfigError, match="stage rts needs a model with a Stable-SAM plugin"):
        load_config(RECIPE, [*ov, "model.arch.plugin=null"])
    with pytest.raises(ConfigError, match="lists 'plugin' but the model has none"):
        load_config(RECIPE, [*ov, "stage=sam", "model.arch.plugin=null"])
    with pytest.raises(ConfigError, match="export_plugin"):
        load_config(CONFIGS / "demo_tiny.yaml", ["run.export_plugin=x.safetensors"])
    with pytest.raises(ConfigError, match="plugin: unknown fields"):
        load_config(RECIPE, [*ov, "model.arch.plugin={bogus: 1}"])
    with pytest.raises(ConfigError, match="plugin.routing"):
        load_config(RECIPE, [*ov, "model.arch.plugin={routing: maybe}"])
    for bad in ("rts.probs=[-1,1,1]", "rts.k_range=[0,3]", "rts.noise_range=[0.5,0.1]",
                "epochs=0", "sim.box_prob=0.5"):  # fmt: skip
        with pytest.raises(ConfigError):
            load_config(RECIPE, [*ov, bad])


def test_only_the_plugin_is_trainable(sam_file, data, tmp_path):
    cfg = load_config(RECIPE, rts_overrides(tmp_path, data, **{"model.checkpoint": sam_file}))
    model = build_train_model(cfg)  # a checkpoint without plugin keys: identity-init plugin
    plugin = {id(p) for p in model.plugin_parameters()}
    assert plugin
    for name, p in model.named_parameters():
        assert p.requires_grad == is_plugin_key(name) == (id(p) in plugin), name
    base = build_model(checkpoint=sam_file).state_dict()
    state = model.state_dict()
    assert all(torch.equal(base[k], state[k]) for k in base)
    assert {k for k in state if k not in base} == {k for k in state if is_plugin_key(k)}
    # [mask_decoder] means SAM's decoder without the plugin
    cfg.model.trainable = ["mask_decoder"]
    from steadysam.train.build import set_trainable

    set_trainable(model, cfg.model.trainable)
    assert not any(p.requires_grad for p in model.plugin_parameters())
    assert any(p.requires_grad for p in model.mask_decoder.parameters())


def test_epochs_to_iterations(data, tmp_path, capsys):
    assert epoch_iters(1, 44320, 32) == 1385  # HQSeg-44K, one epoch (docs/training.md, RTS)
    assert epoch_iters(1, 800, 8) == 100 and epoch_iters(0.5, 801, 8) == 51
    assert epoch_iters(0.001, 10, 8) == 1
    ov = rts_overrides(tmp_path / "run", data, epochs="1.5", **{"data.batch_size": "4"})
    final = train(load_config(RECIPE, ov))  # 6 images x 1.5 / 4 -> 3 iterations
    assert "epochs 1.5 x 6 samples / batch 4 -> 3 iterations" in capsys.readouterr().out
    rows = list(csv.DictReader((final.parent / "log.csv").open()))
    assert [int(r["iter"]) for r in rows] == [1, 2, 3]
    assert "iters: 3" in (final.parent / "config.yaml").read_text()


# -- losses -----------------------------------------------------------------------------------
def test_bce_dice_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    bce, dice = bce_dice_loss(logits, labels)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    p = [sig(v) for v in (0.0, 2.0, -1.0, 3.0)]
    want_bce = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(1 - p[2]) + math.log(p[3])) / 4
    want_dice = 1 - (2 * (p[0] + p[3]) + 1) / (sum(p) + 2 + 1)
    assert float(bce) == pytest.approx(want_bce, rel=1e-6)
    assert float(dice) == pytest.approx(want_dice, rel=1e-6)
    # mean over masks: a perfect second mask halves both
    perfect = torch.full((1, 4), 50.0), torch.ones(1, 4)
    both = bce_dice_loss(torch.cat([logits, perfect[0]]), torch.cat([labels, perfect[1]]))
    assert float(both[0]) == pytest.approx(want_bce / 2, rel=1e-5)
    assert float(both[1]) == pytest.approx(want_dice / 2, rel=1e-5)


def test_point_sample_reads_pixel_centres_and_mixed_resolutions():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    centres = torch.tensor([[[0.125, 0.125], [0.625, 0.375], [0.875, 0.875]]])  # (x, y)
    assert point_sample(x, centres)[0, 0].tolist() == [0.0, 6.0, 15.0]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1  # top half
    pts = torch.tensor([[[0.3, 0.2], [0.7, 0.8]]])
    assert point_sample(mask, pts)[0, 0].tolist() == [1.0, 0.0]


def test_uncertain_points_are_deterministic_and_uncertain():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16) * 5
    a = uncertain_points(logits, 40, 3.0, 0.75, torch.Generator().manual_seed(1))
    b = uncertain_points(logits, 40, 3.0, 0.75, torch.Generator().manual_seed(1))
    c = uncertain_points(logits, 40, 3.0, 0.75, torch.Generator().manual_seed(2))
    assert a.shape == (2, 40, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # the 30 importance points are the most uncertain of the 120 oversampled ones
    g = torch.Generator().manual_seed(1)
    over = torch.rand(2, 120, 2, generator=g)
    u = point_sample(logits, over)[:, 0].abs()
    picked = point_sample(logits, a[:, :30])[:, 0].abs()
    assert torch.allclose(picked.sort(1).values, u.sort(1).values[:, :30])
    assert torch.equal(a[:, 30:], torch.rand(2, 10, 2, generator=g))  # then 10 random ones


def test_sampled_mask_loss_small_for_a_good_prediction():
    gt = torch.zeros(1, 64, 64, dtype=torch.bool)
    gt[:, 16:48, 16:48] = True
    good = (gt[:, None, ::4, ::4].float() * 2 - 1) * 20  # 16 x 16 low-res logits
    g = torch.Generator().manual_seed(0)
    bce, dice = sampled_mask_loss(good, gt, 64, generator=g)
    bad_bce, bad_dice = sampled_mask_loss(-good, gt, 64, generator=g)
    assert float(dice) < 0.2 < float(bad_dice) and float(bce) < float(bad_bce)
    assert rts_num_points(12544, 256, 256) == 12544 and rts_num_points(12544, 64, 64) == 784


# -- the training step ------------------------------------------------------------------------
def _batch(cfg, model, n=4):
    c = model.config
    spec = ImageSpec(c.image_size, c.preprocess, c.pixel_mean, c.pixel_std)
    samples = TrainSamples(build_sources(cfg.data), [1.0], spec, cfg.seed, False)
    return collate([samples[i] for i in range(n)])


def test_rts_prompts_are_valid_and_ungrouped_by_padding(data, tmp_path, monkeypatch):
    import steadysam.train.loop as loop

    cfg = load_config(RECIPE, rts_overrides(tmp_path, data))
    model = build_train_model(cfg)
    batch = _batch(cfg, model, n=6)
    calls, targets = [], []  # per iteration: the prompt encoder's calls, the loss's masks
    hook = model.prompt_encoder.register_forward_hook(
        lambda m, args, kwargs, out: calls[-1].append(kwargs), with_kwargs=True
    )
    loss = loop.sampled_mask_loss
    monkeypatch.setattr(
        loop, "sampled_mask_loss", lambda lg, gt, *a: targets.append(gt) or loss(lg, gt, *a)
    )
    step = TrainStep(model, cfg)
    try:
        for it in range(4):
            calls.append([])
            out = step(batch, *_iteration_rngs(cfg.seed, it, 0))
            assert set(out) == {"loss", "bce", "dice", "iou"}
            v = {k: float(t.detach()) for k, t in out.items()}
            assert v["loss"] == pytest.approx(v["bce"] + v["dice"])
    finally:
        hook.remove()
    assert len(targets) == len(calls) == 4
    kinds = set()
    for it_calls, gt in zip(calls, targets, strict=True):
        row = 0  # the decoded prompts, group after group, line up with the loss's masks
        for kw in it_calls:
            assert kw["masks"] is None  # no mask input, no iterative rounds
            if kw["boxes"] is not None:
                assert kw["points"] is None
                kinds.add("box")
                row += len(kw["boxes"])
                continue
            coords, labels = kw["points"]
            assert bool((labels == 1).all())  # positive points only, no padding
            kinds.add(coords.shape[1])
            # points lie on the object: every point of a prompt hits its own sample's mask
            xy = coords.long()
            own = gt[row : row + len(xy)]
            hit = own[torch.arange(len(xy))[:, None], xy[..., 1], xy[..., 0]]
            assert bool(hit.all()), hit
            row += len(xy)
        assert row == len(gt) == 6  # every sample prompted once
    assert "box" in kinds and len(kinds) > 2  # boxes and several point counts


def test_rts_prompts_stay_inside_the_image(data, tmp_path):
    noisy = {"rts.probs": "[0, 1, 0]", "rts.noise_range": "[2, 2]"}  # boxes only, very noisy
    cfg = load_config(RECIPE, rts_overrides(tmp_path, data, **noisy))
    model = build_train_model(cfg)
    batch = _batch(cfg, model, n=6)
    sizes = batch["size"]
    assert bool((sizes < model.image_size).any())  # some images are padded
    boxes = []
    hook = model.prompt_encoder.register_forward_hook(
        lambda m, a, kw, o: boxes.append(kw["boxes"]), with_kwargs=True
    )
    try:
        TrainStep(model, cfg)(batch, *_iteration_rngs(cfg.seed, 0, 0))
    finally:
        hook.remove()
    (b,) = boxes
    assert b.shape == (6, 4)
    h, w = sizes[:, 0].float(), sizes[:, 1].float()
    assert bool((b >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all())


def test_rts_run_trains_the_plugin_exports_it_and_resumes(sam_file, data, tmp_path, capsys):
    cache = tmp_path / "cache"
    ov = rts_overrides(tmp_path / "run", data, iters="4", **{
        "model.checkpoint": sam_file, "data.cache": cache,
        "run.export": tmp_path / "w" / "merged.safetensors",
        "run.export_plugin": tmp_path / "w" / "plugin.safetensors"})  # fmt: skip
    emb = ["embed", str(RECIPE), *ov, "--out", str(cache), "--fp16", "--no-progress"]
    assert cli_main([*emb, "--measure", "0"]) == 0
    cfg = load_config(RECIPE, ov)
    final = train(cfg)
    out = final.parent
    merged = build_model(checkpoint=final).state_dict()
    base = build_model(checkpoint=sam_file).state_dict()
    assert all(torch.equal(base[k], merged[k]) for k in base)  # SAM stays frozen
    init = build_train_model(cfg).state_dict()
    assert any(not torch.equal(init[k], merged[k]) for k in merged if is_plugin_key(k))
    # the plugin file on the base SAM is the merged model
    combined = build_model(checkpoint=sam_file, plugin=out / "plugin.safetensors").state_dict()
    assert combined.keys() == merged.keys()
    assert all(torch.equal(combined[k], merged[k]) for k in merged)
    # The exported copy holds the same tensors and metadata (safetensors does not fix the order
    # of its JSON header, so the bytes may differ).
    assert _safetensors(tmp_path / "w" / "plugin.safetensors") == _safetensors(
        out / "plugin.safetensors"
    )
    assert (tmp_path / "w" / "merged.safetensors").is_file()
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert all(float(r["loss"]) == pytest.approx(float(r["bce"]) + float(r["dice"]), rel=1e-5)
               for r in rows) and all(r["nfl"] == "" for r in rows)  # fmt: skip
    # resume from iteration 2: bit-identical end
    (out / "checkpoints" / "iter_0000004.pt").unlink()
    final.unlink()
    capsys.readouterr()
    again = build_model(checkpoint=train(cfg)).state_dict()
    assert "(iteration 2 of 4)" in capsys.readouterr().out  # resumed, not started over
    assert all(torch.equal(again[k], merged[k]) for k in merged)


@pytest.mark.multiprocess
def test_two_process_rts_stays_in_sync(data, tmp_path):
    out = tmp_path / "run"
    ov = rts_overrides(out, data, iters="2", **{"data.batch_size": "4"})
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "steadysam", "train", str(RECIPE), *ov,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    res = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ranks[0]["first_keys"] != ranks[1]["first_keys"]
    # In sync because the plugin learned the same steps on both ranks, not because it did not
    # move: the plugin file holds trained, non-initial weights.
    init = build_train_model(load_config(RECIPE, ov)).state_dict()
    trained = build_model(checkpoint=out / "final.safetensors").state_dict()
    plugin = [k for k in trained if is_plugin_key(k)]
    assert plugin and any(not torch.equal(init[k], trained[k]) for k in plugin)
    assert all(torch.equal(init[k], trained[k]) for k in trained if not is_plugin_key(k))
    assert (out / "plugin.safetensors").is_file()


def _safetensors(path: Path) -> tuple[dict, dict]:
    """(metadata, name -> tensor as bytes) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}
        return f.metadata(), tensors
