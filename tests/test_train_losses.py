"""NFL and PTL against values worked out by hand (docs/focsam.md §7.5), the detached normaliser, the
upsampling to the input size, and the truncated geometric laws of the simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steadysam.train.losses import mask_iou, normalized_focal_loss, point_loss
from steadysam.train.simulate import truncated_geometric

EPS = 1.19e-7


def test_nfl_two_pixels_by_hand():
    # logits [0, ln 3], y [1, 0]: p = [1/2, 3/4], p_t = [1/2, 1/4], beta = [1/4, 9/16],
    # sum beta = 13/16, alpha_t = 1/2 for both (alpha = 0.5), N = 2:
    # loss = Z * sum(-alpha_t beta log p_t) / N with Z = N / sum beta
    #      = 0.5 * (1/4 ln 2 + 9/16 ln 4) / (13/16) = 0.586509...
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])
    gt = torch.tensor([[[1.0, 0.0]]])
    expected = 0.5 * (0.25 * math.log(2) + 0.5625 * math.log(4)) / 0.8125
    assert expected == pytest.approx(0.5865085, abs=1e-6)
    got = normalized_focal_loss(logits, gt)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_nfl_alpha_weights_and_batch_mean():
    # alpha = 0.75: positive pixel weight 0.75, negative 0.25. Image 1: one positive pixel at
    # logit 0 -> p_t = 1/2, beta = 1/4, Z = 1 / (1/4 + eps); loss = 0.75 * ln 2 * (1/4) * Z.
    # Image 2: one negative pixel at logit 0 -> 0.25 * ln 2 * (1/4) * Z. Batch mean of the two.
    logits = torch.zeros(2, 1, 1, 1)
    gt = torch.tensor([[[1.0]], [[0.0]]])
    z = 1.0 / (0.25 + EPS)
    img1 = 0.75 * math.log(2.0) * 0.25 * z
    img2 = 0.25 * math.log(2.0) * 0.25 * z
    got = normalized_focal_loss(logits, gt, alpha=0.75, gamma=2.0)
    assert float(got) == pytest.approx((img1 + img2) / 2, rel=1e-6)


def test_nfl_gamma_zero_is_balanced_bce():
    # gamma = 0: beta = 1 everywhere, Z = N / (N + eps) ~ 1 -> alpha-weighted BCE mean.
    logits = torch.tensor([[[[2.0, -1.0, 0.5]]]])
    gt = torch.tensor([[[1.0, 1.0, 0.0]]])
    p = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-0.5))]
    bce = -(math.log(p[0]) + math.log(p[1]) + math.log(1 - p[2])) / 3
    got = normalized_focal_loss(logits, gt, alpha=0.5, gamma=0.0)
    assert float(got) == pytest.approx(0.5 * bce, rel=1e-5)


def test_nfl_normaliser_is_detached():
    # One positive pixel, logit x = 0: p = 1/2, beta = (1 - p)^2 = 1/4, Z = 1 / (beta + eps)
    # held constant. d/dx[-alpha Z beta log p] = -alpha Z (dbeta/dx log p + beta (1 - p)),
    # dbeta/dx = -2 p (1 - p)^2 = -1/4  ->  -0.5 * 4 * (1/4 ln 2 + 1/8) = -0.5965736.
    # (A normaliser with gradient would give -alpha (1 - p) = -0.25.)
    x = torch.zeros(1, 1, 1, 1, requires_grad=True)
    normalized_focal_loss(x, torch.ones(1, 1, 1)).backward()
    z = 1.0 / (0.25 + EPS)
    expected = -0.5 * z * (0.25 * math.log(2.0) + 0.125)
    assert float(x.grad) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(-0.5965736, abs=1e-5)


def test_nfl_upsamples_low_res_logits():
    # A constant low-res map upsamples to the same constant: the loss equals the full-size one.
    low = torch.full((1, 1, 2, 2), 0.7)
    gt = torch.zeros(1, 8, 8)
    gt[0, :4] = 1
    full = torch.full((1, 1, 8, 8), 0.7)
    assert float(normalized_focal_loss(low, gt)) == pytest.approx(
        float(normalized_focal_loss(full, gt)), rel=1e-6
    )


def test_ptl_by_hand_excludes_padding():
    # 2 x 2 logits (already at S = 2). Sample 0: positive click at (x=1, y=0) on logit 0
    # -> (1/2 - 1)^2 = 1/4; negative click at (x=0, y=1) on logit ln 3 -> (3/4 - 0)^2 = 9/16;
    # a padding click (label -1) on logit 100 is ignored. Sample 1: positive at (0, 0) on
    # logit -ln 3 -> (1/4 - 1)^2 = 9/16. Mean over 3 real clicks = (1/4 + 9/16 + 9/16) / 3.
    logits = torch.tensor(
        [[[[5.0, 0.0], [math.log(3.0), 100.0]]], [[[-math.log(3.0), 0.0], [0.0, 0.0]]]]
    )
    coords = torch.tensor([[[1, 0], [0, 1], [1, 1]], [[0, 0], [0, 0], [0, 0]]])
    labels = torch.tensor([[1, 0, -1], [1, -1, -1]])
    got = point_loss(logits, coords, labels, size=2)
    assert float(got) == pytest.approx((0.25 + 0.5625 + 0.5625) / 3, rel=1e-6)


def test_ptl_reads_the_upsampled_map():
    # low-res 1 x 2 logits [-2, 2] upsampled (bilinear, align_corners=False) to 4 x 4: column 0
    # keeps -2 (clamped edge), column 1 is -2 + 4 * 0.25 = -1.
    low = torch.tensor([[[[-2.0, 2.0], [-2.0, 2.0]]]])
    coords = torch.tensor([[[1, 2]]])
    labels = torch.tensor([[0]])
    p = 1 / (1 + math.exp(1.0))
    assert float(point_loss(low, coords, labels, size=4)) == pytest.approx(p * p, rel=1e-6)


def test_mask_iou_metric():
    logits = torch.tensor([[[[1.0, 1.0], [-1.0, -1.0]]]])
    gt = torch.tensor([[[1, 0], [1, 0]]])
    assert float(mask_iou(logits, gt)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("gamma, high", [(0.6, 20), (0.9, 20), (0.35, 3)])
def test_truncated_geometric_law(gamma, high):
    rng = np.random.default_rng(0)
    draws = np.array([truncated_geometric(gamma, high, rng) for _ in range(20000)])
    p = gamma ** np.arange(high + 1)
    p /= p.sum()
    freq = np.bincount(draws, minlength=high + 1) / draws.size
    assert draws.min() >= 0 and draws.max() <= high
    assert np.abs(freq - p).max() < 0.015
    assert draws.mean() == pytest.approx((p * np.arange(high + 1)).sum(), abs=0.1)
    if (gamma, high) == (0.6, 20):
        assert p[0] == pytest.approx(0.40, abs=0.01)  # docs/focsam.md §7.3: P(0) = 0.40 for COCO
