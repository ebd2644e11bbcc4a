"""Click simulator: hand-made masks with known answers and the RITM/FocSAM quirks."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from steadysam.clicks import Click, Clicker, next_click, padded_distance_transform


def brute_dt(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance to the nearest background pixel of the 1-pixel zero-padded mask."""
    p = np.pad(mask.astype(bool), 1)
    bg = np.argwhere(~p)
    out = np.zeros(mask.shape, np.float64)
    for y, x in np.argwhere(mask):
        out[y, x] = np.sqrt(((bg - (y + 1, x + 1)) ** 2).sum(1).min())
    return out


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_first_click_is_interior_most_pixel_positive():
    gt = rect(12, 12, 2, 9, 3, 10)  # 7 x 7 square, centre (row 5, col 6)
    c = next_click(gt, np.zeros_like(gt))
    assert c == Click(x=6, y=5, positive=True)


def test_first_max_in_raster_order():
    # 3 rows x 7 cols: the middle row has 5 pixels at distance 2; RITM takes the first one.
    gt = rect(9, 13, 3, 6, 3, 10)
    c = next_click(gt, np.zeros_like(gt))
    assert (c.x, c.y) == (4, 4)
    # Two identical squares side by side: the left one wins (raster order: same row, smaller x).
    gt2 = rect(11, 24, 2, 7, 2, 7) | rect(11, 24, 2, 7, 14, 19)
    assert next_click(gt2, np.zeros_like(gt2)) == Click(4, 4, True)
    # ... and one above the other: the upper one wins even though it is to the right.
    gt3 = rect(20, 20, 1, 6, 12, 17) | rect(20, 20, 10, 15, 2, 7)
    assert next_click(gt3, np.zeros_like(gt3)) == Click(14, 3, True)


def test_padding_makes_the_image_border_a_boundary():
    # The object fills the whole 5 x 9 image: without padding there would be no background at
    # all; with it, the centre row (2) is 3 px from the top/bottom border.
    gt = np.ones((5, 9), bool)
    assert next_click(gt, np.zeros_like(gt)) == Click(2, 2, True)
    # Object touching the left border: the border counts as boundary, so the click is not at
    # column 0 but 3 px inside; a clicker without padding would go to column 0.
    gt = rect(15, 20, 0, 15, 0, 7)
    c = next_click(gt, np.zeros_like(gt))
    assert (c.x, c.y) == (3, 3) and c.positive


def test_ties_go_negative():
    gt = rect(20, 20, 2, 7, 2, 7)  # FN square (max distance 3)
    pred = rect(20, 20, 12, 17, 12, 17)  # FP square of the same size
    c = next_click(gt, pred)
    assert c == Click(14, 14, False)
    c = next_click(gt, pred, rule="focsam")
    assert c == Click(14, 14, False)
    # One pixel thicker FN region -> positive.
    gt = rect(20, 20, 1, 8, 1, 8)
    assert next_click(gt, pred).positive


def test_no_error_no_click():
    gt = rect(10, 10, 2, 8, 2, 8)
    assert next_click(gt, gt.copy()) is None
    assert next_click(gt, gt.copy(), rule="focsam") is None
    # Only ignored errors left -> no click either.
    pred = gt.copy()
    pred[0, 0] = True
    ign = np.zeros_like(gt)
    ign[0, 0] = True
    assert next_click(gt, pred, ignore=ign) is None


def test_clicked_pixels_excluded_ritm_after_dt_focsam_before():
    gt = rect(11, 11, 1, 10, 1, 10)  # 9 x 9, centre (5, 5) at distance 5
    empty = np.zeros_like(gt)
    first = next_click(gt, empty)
    assert first == Click(5, 5, True)
    # RITM: DT unchanged, the clicked pixel's value is zeroed -> next max is 4 at the first
    # raster pixel with distance 4.
    c = next_click(gt, empty, [first])
    dt = brute_dt(gt)
    dt[5, 5] = 0
    ys, xs = np.nonzero(dt == dt.max())
    assert (c.y, c.x) == (ys[0], xs[0]) and dt.max() == 4
    # FocSAM: the pixel is removed before the DT, which changes its neighbours' distances.
    f = next_click(gt, empty, [first], rule="focsam", rng=np.random.default_rng(0))
    gt_removed = gt.copy()
    gt_removed[5, 5] = False
    dtf = brute_dt(gt_removed)
    assert dtf[f.y, f.x] == dtf.max() and (f.x, f.y) != (5, 5)
    # A Clicker never repeats a pixel, even if the prediction ignores its clicks.
    clk = Clicker(gt)
    seen = {(k.x, k.y) for k in (clk.make_next_click(empty) for _ in range(30))}
    assert len(seen) == 30 and len(clk) == 30


def test_ignore_band_excluded_from_error_maps():
    gt = rect(30, 30, 2, 28, 2, 14) | rect(30, 30, 10, 15, 20, 25)
    ign = np.zeros_like(gt)
    ign[:, :16] = True  # the big region is entirely "ignore"
    c = next_click(gt, np.zeros_like(gt), ignore=ign)
    assert (c.x, c.y, c.positive) == (22, 12, True)
    with pytest.raises(ValueError, match="no ignore label"):
        next_click(gt, np.zeros_like(gt), ignore=ign, rule="focsam")


def test_focsam_random_tie_break_is_seeded_and_among_maxima():
    gt = rect(9, 40, 2, 7, 2, 38)  # middle row: many pixels at the max distance 3
    empty = np.zeros_like(gt)
    dt = brute_dt(gt)
    picks = set()
    for seed in range(20):
        c = next_click(gt, empty, rule="focsam", rng=np.random.default_rng(seed))
        assert dt[c.y, c.x] == dt.max() and c.positive
        assert c == next_click(gt, empty, rule="focsam", rng=np.random.default_rng(seed))
        picks.add(c)
    assert len(picks) > 5  # really random, not the first maximum
    # random.Random works as in the official code (random.choice over row-major candidates).
    c = next_click(gt, empty, rule="focsam", rng=random.Random(42))
    cand = np.argwhere(dt > dt.max() / (1 + 1.1920929e-07))
    assert tuple(cand[random.Random(42).randrange(len(cand))]) == (c.y, c.x)


def test_focsam_inner_k_widens_the_candidate_region():
    gt = rect(31, 31, 1, 30, 1, 30)
    empty = np.zeros_like(gt)
    dt = brute_dt(gt)
    rng = np.random.default_rng(1)
    ds = [
        dt[c.y, c.x]
        for c in (next_click(gt, empty, rule="focsam", inner_k=1.7, rng=rng) for _ in range(50))
    ]
    assert min(ds) > dt.max() / 1.7 and len(set(ds)) > 1
    c = next_click(gt, empty, rule="focsam", inner_k=-1, rng=rng)  # whole error region
    assert gt[c.y, c.x]
    with pytest.raises(ValueError):
        next_click(gt, empty, rule="focsam", inner_k=0.5)


@pytest.mark.parametrize("seed", range(6))
def test_bbox_dt_equals_full_padded_dt(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, 2)
    m = np.zeros((h, w), np.uint8)
    for _ in range(3):  # random blobs, some touching the border
        cv2.circle(
            m, tuple(int(v) for v in rng.integers(0, (w, h))), int(rng.integers(1, 15)), 1, -1
        )
    full = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    mine = padded_distance_transform(m.astype(bool))
    # Same exact distances (OpenCV's float32 output may be off by one ulp, see clicks.py) ...
    np.testing.assert_array_equal(np.rint(mine.astype(np.float64) ** 2), np.rint(full**2.0))
    np.testing.assert_allclose(mine, brute_dt(m), atol=1e-5)
    # ... and the helper returns the correctly rounded float32 of sqrt(integer).
    np.testing.assert_array_equal(mine, np.sqrt(np.rint(brute_dt(m) ** 2)).astype(np.float32))


@pytest.mark.parametrize("seed", range(8))
def test_ritm_rule_on_exact_distances(seed):
    """First exact maximum in raster order, exact sign comparison: brute-force reference."""
    rng = np.random.default_rng(100 + seed)
    h, w = rng.integers(8, 40, 2)
    gt = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    for m in (gt, pred):
        for _ in range(2):
            c = tuple(int(v) for v in rng.integers(0, (w, h)))
            cv2.circle(m, c, int(rng.integers(2, 12)), 1, -1)
    gt, pred = gt.astype(bool), pred.astype(bool)
    fn = np.rint(brute_dt(gt & ~pred) ** 2)
    fp = np.rint(brute_dt(pred & ~gt) ** 2)
    if fn.max() == 0 and fp.max() == 0:
        assert next_click(gt, pred) is None
        return
    pos = fn.max() > fp.max()
    d = fn if pos else fp
    y, x = np.argwhere(d == d.max())[0]
    assert next_click(gt, pred) == Click(int(x), int(y), bool(pos))


@pytest.mark.parametrize("seed", range(4))
def test_ritm_rule_matches_reference_implementation(seed):
    """Compare with a transcription of RITM's Clicker._get_next_click on random masks (maxima
    compared on exact squared distances, like clicks.py, instead of OpenCV's float32 bits)."""
    rng = np.random.default_rng(seed)
    h, w = 40, 50
    gt = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    cv2.circle(gt, (int(rng.integers(10, 40)), int(rng.integers(10, 30))), 12, 1, -1)
    cv2.circle(pred, (int(rng.integers(10, 40)), int(rng.integers(10, 30))), 10, 1, -1)
    ignore = rng.random((h, w)) < 0.05
    clicks = [Click(int(rng.integers(w)), int(rng.integers(h)), True) for _ in range(5)]
    got = next_click(gt.astype(bool), pred.astype(bool), clicks, ignore=ignore)

    not_ignore = ~ignore
    not_clicked = np.ones((h, w), bool)
    for c in clicks:
        not_clicked[c.y, c.x] = False
    fn = np.pad(gt.astype(bool) & ~pred.astype(bool) & not_ignore, 1).astype(np.uint8)
    fp = np.pad(~gt.astype(bool) & pred.astype(bool) & not_ignore, 1).astype(np.uint8)
    fn_dt = np.rint(cv2.distanceTransform(fn, cv2.DIST_L2, 0)[1:-1, 1:-1] ** 2.0) * not_clicked
    fp_dt = np.rint(cv2.distanceTransform(fp, cv2.DIST_L2, 0)[1:-1, 1:-1] ** 2.0) * not_clicked
    pos = fn_dt.max() > fp_dt.max()
    ys, xs = np.where(fn_dt == fn_dt.max()) if pos else np.where(fp_dt == fp_dt.max())
    assert got == Click(int(xs[0]), int(ys[0]), bool(pos))


def test_input_validation():
    with pytest.raises(ValueError, match="shape"):
        next_click(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="rule"):
        next_click(np.zeros((4, 4)), np.zeros((4, 4)), rule="nope")


@pytest.mark.parametrize("seed", range(10))
def test_erosion_fast_path_equals_transform_path(seed, monkeypatch):
    """Small maxima are found with erosions; forcing the transform everywhere changes nothing."""
    import steadysam.clicks as clicks_mod

    rng = np.random.default_rng(seed)
    h, w = 30, 40
    gt = np.zeros((h, w), np.uint8)
    for _ in range(4):  # thin bars and small blobs: maxima below and above the cap
        x, y = int(rng.integers(w)), int(rng.integers(h))
        cv2.rectangle(
            gt, (x, y), (x + int(rng.integers(1, 20)), y + int(rng.integers(1, 8))), 1, -1
        )
    pred = np.roll(gt, int(rng.integers(-3, 4)), axis=int(rng.integers(2))).astype(bool)
    gt = gt.astype(bool)
    clicks = [Click(int(rng.integers(w)), int(rng.integers(h)), True) for _ in range(3)]

    def run():
        out = [next_click(gt, pred, clicks)]
        for k in (1.0, 1.7, -1.0):
            out.append(
                next_click(
                    gt, pred, clicks, rule="focsam", inner_k=k, rng=np.random.default_rng(seed)
                )
            )
        return out

    fast = run()
    monkeypatch.setattr(clicks_mod, "_CAP", 1)  # every map goes through the transform
    assert run() == fast
