"""Box prompts in stage-sam training (``sim.box_prob``): SAM's jittered GT box replaces the
first click and stays a prompt in every simulated round and in the training forward; with
box_prob 0 training is exactly what it was before boxes existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_support import (
    CONFIGS,
    folder_dataset_override,
    make_folder_dataset,
    tiny_overrides,
)

from steadysam.models.build import build_sam
from steadysam.prompts import mask_box
from steadysam.train.build import build_train_model
from steadysam.train.config import load_config
from steadysam.train.data import ImageSpec, TrainSamples, build_sources, collate
from steadysam.train.loop import TrainStep, _iteration_rngs
from steadysam.train.simulate import jittered_box, simulate
from steadysam.weights.registry import sam_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder_dataset(tmp_path_factory.mktemp("data"), n=6)


def _setup(data, tmp_path, box_prob: str):
    ov = tiny_overrides(tmp_path, **{"sim.box_prob": box_prob}) + folder_dataset_override(0, data)
    cfg = load_config(CONFIGS / "demo_tiny.yaml", ov)
    model = build_train_model(cfg)
    c = model.config
    spec = ImageSpec(c.image_size, c.preprocess, c.pixel_mean, c.pixel_std)
    samples = TrainSamples(build_sources(cfg.data), [1.0], spec, cfg.seed, cfg.data.color_aug)
    return cfg, model, samples


def _record_prompts(model):
    calls = []
    hook = model.prompt_encoder.register_forward_hook(
        lambda m, a, kw, o: calls.append(kw), with_kwargs=True
    )
    return calls, hook


def test_jittered_box_follows_sams_training_noise():
    mask = np.zeros((200, 256), bool)
    mask[50:151, 20:61] = True  # box (20, 50, 60, 150): 40 wide, 100 high
    x0, y0, x1, y1 = mask_box(mask)
    rng = np.random.default_rng(0)
    boxes = np.array([jittered_box(mask, rng, image_size=1024) for _ in range(400)])
    d = np.abs(boxes - [x0, y0, x1, y1])
    assert d[:, [0, 2]].max() <= 4.0 + 1e-9 and d[:, [0, 2]].max() > 3.5  # 0.1 x 40
    assert d[:, [1, 3]].max() <= 10.0 + 1e-9 and d[:, [1, 3]].max() > 9.0  # 0.1 x 100
    # the 20 px cap is set at 1024 px: a 256 px model caps at 5 px
    small = np.array([jittered_box(mask, rng, image_size=256) for _ in range(400)])
    assert np.abs(small - [x0, y0, x1, y1])[:, [1, 3]].max() <= 5.0 + 1e-9
    # clamped to the mask's frame, order kept
    edge = np.zeros((50, 60), bool)
    edge[:, :] = True
    b = np.array([jittered_box(edge, rng, 1024) for _ in range(50)])
    assert b.min() >= 0 and (b[:, 2] <= 59).all() and (b[:, 3] <= 49).all()
    assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
    a = jittered_box(mask, np.random.default_rng(5), 1024)
    assert a == jittered_box(mask, np.random.default_rng(5), 1024)


@pytest.mark.parametrize("rounds", [0, 2])
def test_simulation_keeps_the_box_in_every_round(rounds):
    torch.manual_seed(0)
    model = build_sam(sam_config("sam_tiny"))
    gts = []
    for i in range(2):
        g = np.zeros((256, 256), bool)
        g[40 + 10 * i : 121, 60:181] = True
        gts.append(g)
    boxes = torch.tensor([mask_box(g) for g in gts])
    calls, hook = _record_prompts(model)
    try:
        sim = simulate(model, torch.randn(2, 64, 16, 16), gts, rounds, np.random.default_rng(0),
                       boxes=boxes)  # fmt: skip
    finally:
        hook.remove()
    assert len(calls) == rounds and all(torch.equal(kw["boxes"], boxes) for kw in calls)
    if rounds == 0:  # the box alone: no click, no padding point, no previous logits
        assert sim.points is None and sim.prev_logits is None
    else:  # round 0 decodes the box alone, each round then adds a corrective click
        assert calls[0]["points"] is None
        for r, kw in enumerate(calls[1:], 1):  # round r decodes the box and r clicks
            assert kw["points"] is not None, f"round {r} decodes the box alone"
            assert (kw["points"][1] >= 0).sum(1).tolist() == [r, r]
        assert (sim.labels >= 0).sum(1).tolist() == [rounds, rounds]
    assert torch.equal(sim.boxes, boxes)


def test_box_prob_1_prompts_every_forward_with_a_box(data, tmp_path):
    cfg, model, samples = _setup(data, tmp_path, "1.0")
    step = TrainStep(model, cfg)
    for it in range(3):
        batch = collate([samples[i] for i in range(4 * it, 4 * it + 4)])
        calls, hook = _record_prompts(model)
        try:
            out = step(batch, *_iteration_rngs(cfg.seed, it, 0))
        finally:
            hook.remove()
        assert calls and all(kw["boxes"] is not None for kw in calls)
        assert calls[-1]["boxes"].shape == (4, 4)  # the training forward: every sample
        h, w = batch["size"][:, 0], batch["size"][:, 1]
        b = calls[-1]["boxes"]
        assert bool((b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all())
        assert torch.isfinite(out["loss"])


def test_box_prob_mixes_boxes_and_clicks(data, tmp_path):
    cfg, model, samples = _setup(data, tmp_path, "0.5")
    step = TrainStep(model, cfg)
    batch = collate([samples[i] for i in range(6)])
    calls, hook = _record_prompts(model)
    try:
        step(batch, *_iteration_rngs(cfg.seed, 0, 0))
    finally:
        hook.remove()
    sizes = {kw["boxes"].shape[0] if kw["boxes"] is not None else -1 for kw in calls}
    assert -1 in sizes and len(sizes) > 1  # click-only and box groups


def test_box_prob_0_is_the_click_recipe_unchanged(data, tmp_path):
    # NFL and IoU of three iterations as computed before box prompts existed
    want = [(0.3507007956504822, 0.07251942157745361), (0.349924772977829, 0.03972775489091873),
            (0.3502365052700043, 0.09678657352924347)]  # fmt: skip
    cfg, model, samples = _setup(data, tmp_path, "0.0")
    step = TrainStep(model, cfg)
    calls, hook = _record_prompts(model)
    try:
        for it, (nfl, iou) in enumerate(want):
            batch = collate([samples[i] for i in range(4 * it, 4 * it + 4)])
            out = step(batch, *_iteration_rngs(cfg.seed, it, 0))
            assert float(out["nfl"].detach()) == pytest.approx(nfl, rel=1e-5)
            assert float(out["iou"]) == pytest.approx(iou, rel=1e-5)
    finally:
        hook.remove()
    assert all(kw["boxes"] is None for kw in calls)
