"""NoC / NoF conventions, IoU with ignore, mIoU curves, stability and SPC on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from steadysam.eval.metrics import (
    delta_ious,
    iou,
    noc,
    sample_metrics,
    stability,
    summarize,
    worst_drop,
)


def rec(sid, ious, enc=0.5, dec=0.1, ref=0.0, image=None, n_clicks=None):
    return {
        "id": sid,
        "image": image or sid,
        "ious": ious,
        "num_clicks": len(ious) if n_clicks is None else n_clicks,
        **sample_metrics(ious),
        "timing": {"encoder": enc, "decoder": dec, "refiner": ref, "harness": 0.01, "wall": 1.0},
    }


def test_iou_plain_ignore_and_empty():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True  # 8 px, 4 shared
    assert iou(pred, gt) == pytest.approx(4 / 12)
    ign = np.zeros((4, 4), bool)
    ign[2] = True  # the FP row is ignored -> 4 / 8
    assert iou(pred, gt, ign) == pytest.approx(0.5)
    assert iou(np.zeros_like(gt), np.zeros_like(gt)) == 0.0


def test_noc_first_index_reaching_threshold_else_budget():
    ious = [0.5, 0.86, 0.91, 0.96]
    assert [noc(ious, t) for t in (0.85, 0.90, 0.95)] == [2, 3, 4]
    assert noc([0.1, 0.2, 0.3], 0.9) == 3  # never reached -> budget
    assert noc([0.95, 0.1, 0.1], 0.9) == 1  # a later drop does not matter
    assert noc([0.1] * 19 + [0.9], 0.9) == 20
    # Prefix budget: the 20-click NoC of a 100-click run.
    assert noc([0.1] * 30 + [0.99] * 70, 0.9, budget=20) == 20


def test_nof_conventions_differ_on_last_click():
    never = rec("a", [0.1, 0.2, 0.3, 0.4])
    last = rec("b", [0.1, 0.2, 0.3, 0.97])  # reaches every threshold exactly on click 4
    early = rec("c", [0.99, 0.99, 0.99, 0.99])
    s = summarize([never, last, early], budget=4)
    assert s["noc"] == {
        "85": pytest.approx(3.0),
        "90": pytest.approx(3.0),
        "95": pytest.approx(3.0),
    }
    assert s["nof"] == {"85": 1, "90": 1, "95": 1}  # only "never" failed
    assert s["nof_ritm"] == {"85": 2, "90": 2, "95": 2}  # RITM also counts "last"


def test_miou_curve_and_budget_specials():
    rs = [rec("a", [0.2, 0.4, 0.6]), rec("b", [0.4, 0.6, 1.0])]
    s = summarize(rs, budget=3)
    assert s["miou"] == pytest.approx([0.3, 0.5, 0.8])
    assert s["miou_at"] == {
        "1": pytest.approx(0.3),
        "2": pytest.approx(0.5),
        "3": pytest.approx(0.8),
    }
    assert "at20" not in s and "noc100_95" not in s
    long = [rec("a", [0.5] * 30 + [0.96] * 70), rec("b", [0.91] * 100)]
    s = summarize(long, budget=100)
    assert s["noc100_95"] == pytest.approx((31 + 100) / 2)
    assert s["at20"]["noc"]["90"] == pytest.approx((20 + 1) / 2)
    assert s["at20"]["nof"]["90"] == 1
    assert set(s["miou_at"]) == {"1", "2", "3", "4", "5", "10", "15", "20"}


def test_stability_drops_histogram_and_worst_drop():
    ious = [0.5, 0.9, 0.85, 0.95, 0.2, 0.195]
    np.testing.assert_allclose(delta_ious(ious), [0.4, -0.05, 0.1, -0.75, -0.005])
    assert worst_drop(ious) == pytest.approx(-0.75)
    assert worst_drop([0.1, 0.2]) == 0.0
    st = stability([ious, [0.1, 0.5, 0.9]])
    assert st["num_deltas"] == 7
    assert st["num_drops"] == 2  # -0.005 is not "worse than -1 %"
    assert st["samples_with_drop"] == 1
    assert st["worst_drop_min"] == pytest.approx(-0.75)
    counts, edges = np.array(st["histogram"]["counts"]), np.array(st["histogram"]["edges"])
    assert counts.sum() == 2
    hit = np.nonzero(counts)[0]
    assert all(
        edges[i] <= d < edges[i + 1] + 1e-9 for i, d in zip(hit, (-0.75, -0.05), strict=True)
    )
    assert sample_metrics(ious)["num_drops"] == 2


def test_spc_paper_and_decoder_only():
    # Two objects on one image (encoder 2 s), 4 clicks each, 0.1 s decoder per object.
    rs = [
        rec("a", [0.1] * 4, enc=2.0, dec=0.1, image="img"),
        rec("b", [0.1] * 4, enc=2.0, dec=0.1, ref=0.2, image="img"),
    ]
    t = summarize(rs, budget=4)["timing"]
    assert t["spc"] == pytest.approx((2.0 + 0.1 + 2.0 + 0.1 + 0.2) / 8)  # paper: per object
    assert t["spc_decoder"] == pytest.approx(0.2 / 8)
    assert t["spc_refiner"] == pytest.approx(0.2 / 8)
    assert t["encoder_per_image"] == pytest.approx(2.0)
    assert t["spc_wall"] == pytest.approx((1.0 + 1.0 + 2.0) / 8)  # encoder once per image


def test_empty_run_summary_does_not_crash():
    s = summarize([], budget=20)
    assert s["num_samples"] == 0 and s["stability"]["num_drops"] == 0 and s["timing"] == {}
