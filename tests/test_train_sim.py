"""Training click simulation: first click, padding, refine placement, eval mode, no grad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steadysam.clicks import Click
from steadysam.models.build import build_sam
from steadysam.train.simulate import click_tensors, simulate
from steadysam.weights.registry import sam_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(sam_config("focsam_tiny"))  # 256 px, 16 x 16 grid, refiner window 8


def _gts(n=2, size=256):
    gts = []
    for i in range(n):
        g = np.zeros((size, size), bool)
        g[40 + 10 * i : 121 + 10 * i, 60:181] = True  # 81 x 121 rectangle
        gts.append(g)
    return gts


def test_click_tensors_pad_with_minus_one():
    coords, labels = click_tensors(
        [[Click(3, 4, True), Click(5, 6, False)], [Click(7, 8, True)]], torch.device("cpu")
    )
    assert coords.tolist() == [[[3, 4], [5, 6]], [[7, 8], [0, 0]]]
    assert labels.tolist() == [[1, 0], [1, -1]]


def test_first_click_is_the_interior_most_pixel(model):
    gts = _gts()
    emb = torch.randn(2, 64, 16, 16)
    sim = simulate(model, emb, gts, rounds=0, rng=np.random.default_rng(0))
    assert sim.prev_logits is None and sim.labels.tolist() == [[1], [1]]
    # the rectangle rows 40..120, cols 60..180: the maxima of the padded DT are on its centre row
    x, y = sim.coords[0, 0].tolist()
    assert y == 80 and 60 + 40 <= x <= 180 - 40


def test_rounds_add_clicks_and_keep_the_mode(model):
    gts = _gts()
    emb = torch.randn(2, 64, 16, 16)
    model.train()
    sim = simulate(model, emb, gts, rounds=3, rng=np.random.default_rng(1))
    assert model.training  # restored after the eval-mode simulation
    assert sim.coords.shape[:2] == sim.labels.shape
    assert sim.prev_logits.shape == (2, 1, 64, 64) and not sim.prev_logits.requires_grad
    # the first click and one per round (a random model leaves errors to correct every time)
    assert (sim.labels >= 0).sum(1).tolist() == [4, 4]
    for b in range(2):  # real clicks never repeat a pixel
        pairs = zip(sim.coords[b].tolist(), sim.labels[b].tolist(), strict=True)
        real = [tuple(c) for c, lab in pairs if lab >= 0]
        assert len(set(real)) == len(real)
    model.eval()


@pytest.mark.parametrize("rounds, step", [(0, 0), (3, 0), (3, 2), (3, 3)])
def test_refiner_runs_once_at_the_drawn_step(model, rounds, step):
    """The decoder calls and the refiner call in order: before round ``step`` (after ``step``
    rounds, so with step + 1 clicks) the coarse pass and the refiner run, once."""
    events = []

    def clicks(m, args, kwargs, out):  # the real clicks of each decode, per sample
        events.append(tuple((kwargs["points"][1] >= 0).sum(1).tolist()))

    hooks = [
        model.refiner.register_forward_hook(lambda m, i, o: events.append("refine")),
        model.prompt_encoder.register_forward_hook(clicks, with_kwargs=True),
    ]
    try:
        sim = simulate(
            model,
            torch.randn(2, 64, 16, 16),
            _gts(),
            rounds,
            np.random.default_rng(2),
            refine_step=step,
            expand_ratio=(1.1, 1.3),
        )
    finally:
        for h in hooks:
            h.remove()
    # rounds 0 .. step - 1, the coarse pass, the refiner, then rounds step .. rounds - 1
    before = [(n, n) for n in range(1, step + 2)]
    after = [(n, n) for n in range(step + 1, rounds + 1)]
    assert events == [*before, "refine", *after]
    assert sim.coarse_logits.shape == (2, 1, 64, 64) and sim.query_token.shape == (2, 1, 64)
    assert (sim.prev_logits is None) == (rounds == 0)
