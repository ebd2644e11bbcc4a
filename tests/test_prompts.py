"""Synthetic prompts (steadysam.prompts): boxes, noisy boxes, points, settings, RTS sampler."""

from __future__ import annotations

import numpy as np
import pytest

from steadysam.prompts import (
    Prompt,
    PromptSetting,
    draw_prompt,
    mask_box,
    noisy_box,
    parse_settings,
    random_points,
    rts_prompt,
)


def _mask(h: int = 20, w: int = 30, rows=slice(4, 9), cols=slice(10, 17)) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


def _masks_to_boxes(mask: np.ndarray) -> tuple[float, ...]:
    """torchvision.ops.masks_to_boxes, written out."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


# -- boxes --------------------------------------------------------------------------------------
def test_mask_box_is_tight_and_matches_masks_to_boxes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random((15, 25)) > 0.9
        if not m.any():
            continue
        assert mask_box(m) == _masks_to_boxes(m)
    m = _mask()
    x0, y0, x1, y1 = mask_box(m)
    assert (x0, y0, x1, y1) == (10, 4, 16, 8)
    ys, xs = np.nonzero(m)
    assert (xs >= x0).all() and (xs <= x1).all() and (ys >= y0).all() and (ys <= y1).all()


def test_mask_box_rejects_empty_and_bad_shape():
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_box(np.ones((2, 4, 4), bool))


def test_noise_scale_zero_is_identity():
    box = (3.0, 4.0, 10.0, 12.0)
    assert noisy_box(box, 0.0, np.random.default_rng(1), (20, 30)) == box


def test_noisy_box_advances_the_generator_alike_for_every_scale():
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    noisy_box((3.0, 4.0, 10.0, 12.0), 0.0, a, (20, 30))
    noisy_box((3.0, 4.0, 10.0, 12.0), 0.7, b, (20, 30))
    assert a.random() == b.random()


def test_noisy_box_follows_box_noise_formula():
    box, scale = (10.0, 20.0, 50.0, 40.0), 0.3
    u = np.random.default_rng(7).uniform(-1, 1, 4)
    cx, cy, w, h = (
        30 + u[0] * 20 * scale,
        30 + u[1] * 10 * scale,
        40 * (1 + u[2] * scale),
        20 * (1 + u[3] * scale),
    )
    got = noisy_box(box, scale, np.random.default_rng(7), (100, 100))
    np.testing.assert_allclose(got, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))


@pytest.mark.parametrize(
    "mask",
    [
        _mask(),
        _mask(rows=slice(0, 1), cols=slice(0, 1)),  # one pixel in a corner
        _mask(rows=slice(19, 20), cols=slice(29, 30)),  # one pixel in the other corner
        _mask(rows=slice(0, 20), cols=slice(0, 30)),  # the whole image
        _mask(rows=slice(5, 6), cols=slice(0, 30)),  # a one-pixel-high line
        _mask(2, 2, rows=slice(0, 1), cols=slice(1, 2)),  # the smallest image
    ],
)
@pytest.mark.parametrize("scale", [0.1, 0.4, 1.0, 2.0])
def test_noisy_boxes_stay_in_the_image_and_non_empty(mask, scale):
    H, W = mask.shape
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = noisy_box(mask_box(mask), scale, rng, (H, W))
        assert 0 <= x0 < x1 <= W - 1 and 0 <= y0 < y1 <= H - 1


def test_noisy_box_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="scale"):
        noisy_box((0, 0, 1, 1), -0.1, rng, (4, 4))
    with pytest.raises(ValueError, match="too small"):
        noisy_box((0, 0, 0, 0), 0.1, rng, (1, 4))


# -- points -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 35])
def test_points_lie_inside_the_mask_and_are_distinct(k):
    m = _mask()  # 35 pixels
    pts = random_points(m, k, np.random.default_rng(k))
    assert pts.shape == (k, 2) and pts.dtype == np.float64
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert m[ys, xs].all()
    assert len({(x, y) for x, y in zip(xs, ys, strict=True)}) == k


def test_points_repeat_only_when_the_object_is_too_small():
    m = _mask(rows=slice(2, 3), cols=slice(2, 4))  # 2 pixels
    pts = random_points(m, 5, np.random.default_rng(0))
    assert pts.shape == (5, 2) and m[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()


def test_points_reject_bad_k_and_empty_mask():
    rng = np.random.default_rng(0)
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="number of points"):
            random_points(_mask(), k, rng)
    with pytest.raises(ValueError, match="empty"):
        random_points(np.zeros((3, 3)), 1, rng)


# -- settings -----------------------------------------------------------------------------------
def test_parse_settings_round_trips():
    text = "gt-box,noisy-box:0.4,points:1,points:3"
    settings = parse_settings(text)
    assert settings == [
        PromptSetting("gt-box"),
        PromptSetting("noisy-box", 0.4),
        PromptSetting("points", 1),
        PromptSetting("points", 3),
    ]
    assert ",".join(map(str, settings)) == text
    assert [str(s) for s in parse_settings(" noisy-box:0.40 , points:03")] == [
        "noisy-box:0.4",
        "points:3",
    ]
    assert parse_settings(",".join(map(str, settings))) == settings
    assert PromptSetting("noisy-box", 1) == PromptSetting("noisy-box", 1.0)
    assert PromptSetting("gt-box").deterministic and not PromptSetting("points", 1).deterministic


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("box", "'box'"),
        ("noisy-box", "'noisy-box'"),
        ("noisy-box:0", "'noisy-box:0'"),
        ("noisy-box:2.5", "'noisy-box:2.5'"),
        ("noisy-box:nan", "'noisy-box:nan'"),
        ("points:0", "'points:0'"),
        ("points:101", "'points:101'"),
        ("points:1.5", "'points:1.5'"),
        ("gt-box:1", "'gt-box:1'"),
        ("gt-box,,points:1", "empty item"),
        ("", "no prompt settings"),
        ("points:3,points:3", "twice"),
    ],
)
def test_parse_settings_errors_name_the_item(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_settings(text)
    assert fragment in str(info.value)
    if "twice" not in fragment:
        assert "accepted forms" in str(info.value)


def test_setting_constructor_validates():
    with pytest.raises(ValueError, match="accepted forms"):
        PromptSetting("points", 0)
    with pytest.raises(ValueError, match="accepted forms"):
        PromptSetting("scribble")


# -- prompts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["gt-box", "noisy-box:0.4", "points:3"])
def test_same_seed_same_draw_and_json_round_trip(text):
    (setting,) = parse_settings(text)
    m = _mask()
    a = draw_prompt(setting, m, np.random.default_rng(3))
    b = draw_prompt(setting, m, np.random.default_rng(3))
    assert a.to_json() == b.to_json()
    back = Prompt.from_json(a.to_json())
    assert back.to_json() == a.to_json()
    if setting.kind == "points":
        assert a.box is None and a.labels.tolist() == [1, 1, 1] and a.points.shape == (3, 2)
    else:
        assert a.points is None and len(a.box) == 4
    if setting.kind == "gt-box":
        assert a.box == mask_box(m)


def test_rts_prompt_mixes_the_three_kinds_reproducibly():
    m = _mask()
    rng = np.random.default_rng(0)
    drawn = [rts_prompt(m, rng) for _ in range(300)]
    gt = sum(p.box == mask_box(m) for p in drawn)
    noisy = sum(p.box is not None and p.box != mask_box(m) for p in drawn)
    points = [p for p in drawn if p.points is not None]
    assert 70 < gt < 130 and 70 < noisy < 130 and 70 < len(points) < 130
    assert {len(p.points) for p in points} == set(range(1, 11))
    rng2 = np.random.default_rng(0)
    assert [p.to_json() for p in drawn] == [rts_prompt(m, rng2).to_json() for _ in range(300)]
    only_points = rts_prompt(m, rng, k_range=(2, 2), probs=(0, 0, 1))
    assert len(only_points.points) == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"noise_range": (0.5, 0.1)}, {"k_range": (0, 3)}, {"probs": (0.5, 0.5, 0.5)}],
)
def test_rts_prompt_rejects_bad_ranges(kwargs):
    with pytest.raises(ValueError):
        rts_prompt(_mask(), np.random.default_rng(0), **kwargs)
