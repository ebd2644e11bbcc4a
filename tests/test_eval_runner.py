"""Runner: known NoC with a fake predictor, outputs, bad input, resume, run-dir checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from test_eval_support import FakePredictor, make_folder, strip_timing

from steadysam.eval import EvalConfig, RunError, evaluate, read_records
from steadysam.eval.report import read_jsonl
from steadysam.eval.runner import NoResultsError


def cfg(tmp_path, data, **kw):
    base = dict(
        dataset="folder",
        data_root=str(data),
        model="fake",
        out=str(tmp_path / "run"),
        progress=False,
    )
    base.update(kw)
    return EvalConfig(**base)


def test_known_noc_full_budget_and_outputs(tmp_path):
    data = make_folder(tmp_path / "d", n=6)
    pred = FakePredictor(radius=10)
    s = evaluate(cfg(tmp_path, data), predictor=pred)
    # Even samples: one disk -> 1 click; odd samples: two equal disks -> 2 clicks.
    assert s["num_samples"] == 6 and s["num_errors"] == 0
    assert s["noc"] == {"85": 1.5, "90": 1.5, "95": 1.5}
    assert s["nof"]["95"] == 0 and s["nof_ritm"]["95"] == 0
    assert s["no_click_steps"] == 3 * 19 + 3 * 18  # no error left -> no click, IoU re-recorded
    recs = read_records(tmp_path / "run")
    odd = next(r for r in recs if r["id"] == "s001")
    assert odd["ious"][0] == pytest.approx(0.5) and odd["ious"][1:] == [1.0] * 19
    assert odd["clicks"] == [[15, 14, 1], [48, 33, 1]]  # upper disk first (raster order)
    assert odd["no_click_steps"] == list(range(2, 20)) and odd["num_clicks"] == 2
    assert odd["timing"]["encoder"] == 0.5 and odd["timing"]["refiner"] > 0
    assert s["timing"]["encoder_per_image"] == 0.5
    assert s["miou"][0] == pytest.approx(0.75) and s["miou"][-1] == 1.0
    run = tmp_path / "run"
    for f in (
        "config.json",
        "summary.json",
        "samples.jsonl",
        "results.md",
        "miou_curve.png",
        "delta_iou_hist.png",
    ):
        assert (run / f).is_file(), f
    conf = json.loads((run / "config.json").read_text())
    assert conf["config"]["clicks"] == 20 and "numpy" in conf["versions"]
    assert json.loads((run / "summary.json").read_text())["noc"]["90"] == 1.5
    assert "| fake [focsam/ritm] | folder | 6 | 1.50 |" in (run / "results.md").read_text()
    # Running the finished run again evaluates nothing and gives the same summary.
    again = evaluate(cfg(tmp_path, data), predictor=FakePredictor(radius=10))
    assert again["noc"] == s["noc"] and len(read_jsonl(run / "parts" / "rank-000.jsonl")) == 6


def test_embedding_computed_once_per_image(tmp_path):
    data = make_folder(tmp_path / "d", n=2)
    ids = np.zeros((48, 64), np.uint8)
    ids[5:20, 5:20], ids[25:45, 30:60], ids[30:40, 2:12] = 1, 2, 3
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "multi.png")
    Image.fromarray(ids).save(data / "masks" / "multi.png")
    pred = FakePredictor(radius=5)
    s = evaluate(cfg(tmp_path, data, clicks=3), predictor=pred)
    assert s["num_samples"] == 5 and pred.set_image_calls == 3


def test_bad_input_is_listed_not_fatal(tmp_path):
    data = make_folder(tmp_path / "d", n=3)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "nomask.png")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(data / "masks" / "empty.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "empty.png")
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(data / "masks" / "small.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(data / "images" / "small.png")
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(data / "masks" / "broken.png")
    (data / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    s = evaluate(cfg(tmp_path, data, clicks=2), predictor=FakePredictor(radius=10))
    errs = {e["id"]: e["error"] for e in s["errors"]}
    assert s["num_samples"] == 3 and s["num_errors"] == 4
    assert "no mask file" in errs["nomask"]
    assert "empty mask" in errs["empty"]
    assert "does not match image size 64x48" in errs["small"]
    assert "cannot decode image" in errs["broken"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "## Errors" in md and "nomask" in md
    # A predictor failure is recorded per sample too; a run where every sample failed is an
    # error (NoResultsError, exit 1 in the CLI), with the errors in its summary.json.
    with pytest.raises(NoResultsError, match="all 7 samples failed; first error") as e:
        evaluate(
            cfg(tmp_path, data, clicks=2, out=str(tmp_path / "run2")),
            predictor=FakePredictor(wrong_shape=True),
        )
    s2 = e.value.summary
    assert s2["num_samples"] == 0
    assert any("predictor returned" in e["error"] for e in s2["errors"])
    assert json.loads((tmp_path / "run2" / "summary.json").read_text())["num_errors"] == 7


def test_resume_in_process_and_retry_errors(tmp_path):
    data = make_folder(tmp_path / "d", n=6)
    ref = evaluate(
        cfg(tmp_path, data, clicks=4, out=str(tmp_path / "ref")), predictor=FakePredictor(radius=7)
    )
    evaluate(cfg(tmp_path, data, clicks=4, limit=2), predictor=FakePredictor(radius=7))
    part = tmp_path / "run" / "parts" / "rank-000.jsonl"
    assert len(read_jsonl(part)) == 2
    with open(part, "a") as f:
        f.write('{"id": "s002", "ious": [0.1')  # a line cut by a kill
    s = evaluate(cfg(tmp_path, data, clicks=4), predictor=FakePredictor(radius=7))
    recs = read_records(tmp_path / "run")
    assert [r["id"] for r in recs] == [f"s{i:03d}" for i in range(6)]
    assert strip_timing(recs) == strip_timing(read_records(tmp_path / "ref"))
    assert s["noc"] == ref["noc"] and s["miou"] == ref["miou"]
    # retry_errors drops the error lines and evaluates those samples again.
    (data / "masks" / "s005.png").unlink()
    (data / "masks" / "s005.png").write_bytes(b"broken")
    d2 = str(tmp_path / "run3")
    assert evaluate(cfg(tmp_path, data, clicks=4, out=d2), predictor=FakePredictor())["num_errors"]
    Image.fromarray(np.full((48, 64), 255, np.uint8)).save(data / "masks" / "s005.png")
    s3 = evaluate(cfg(tmp_path, data, clicks=4, out=d2), predictor=FakePredictor())
    assert s3["num_errors"] == 1  # errors are final unless retried
    s3 = evaluate(
        cfg(tmp_path, data, clicks=4, out=d2, retry_errors=True), predictor=FakePredictor()
    )
    assert s3["num_errors"] == 0 and s3["num_samples"] == 6


def test_run_dir_of_another_config_is_refused(tmp_path):
    data = make_folder(tmp_path / "d", n=1)
    evaluate(cfg(tmp_path, data, clicks=2), predictor=FakePredictor())
    with pytest.raises(RunError, match="different configuration.*clicks"):
        evaluate(cfg(tmp_path, data, clicks=3), predictor=FakePredictor())
    with pytest.raises(RunError, match="--clicker"):
        evaluate(cfg(tmp_path, data, clicker="nope"), predictor=FakePredictor())


def test_focsam_clicker_is_seeded_per_sample(tmp_path):
    data = make_folder(tmp_path / "d", n=4)
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        c = cfg(tmp_path, data, clicks=6, clicker="focsam", seed=seed, out=str(tmp_path / name))
        evaluate(c, predictor=FakePredictor(radius=4))
        runs.append([r["clicks"] for r in read_records(tmp_path / name)])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["ignore"] == "background" and s["clicker"] == "focsam"


def test_grabcut_ignore_band_excluded_for_ritm_background_for_focsam(tmp_path):
    from test_eval_support import DATA

    from steadysam.eval import load_dataset
    from steadysam.eval.metrics import iou

    ds = load_dataset("GrabCut", DATA)
    ds.items = [it for it in ds.items if it.key == "124080"]
    runs = {}
    for ignore in ("exclude", "background"):
        c = EvalConfig(
            dataset="GrabCut",
            model="fake",
            clicks=3,
            ignore=ignore,
            progress=False,
            out=str(tmp_path / ignore),
        )
        evaluate(c, predictor=FakePredictor(radius=120), loaded_dataset=ds)
        (runs[ignore],) = read_records(tmp_path / ignore)
    assert runs["exclude"]["ignore_pixels"] > 0
    ob = ds.items[0].masks[0].load()[0]
    h, w = ob.gt.shape
    yy, xx = np.mgrid[:h, :w]
    x, y, _ = runs["exclude"]["clicks"][0]
    pred = (yy - y) ** 2 + (xx - x) ** 2 <= 120**2
    assert runs["exclude"]["ious"][0] == pytest.approx(iou(pred, ob.gt, ob.ignore))
    assert runs["background"]["ious"][0] == pytest.approx(iou(pred, ob.gt))
    assert runs["exclude"]["ious"][0] != runs["background"]["ious"][0]


def test_run_table_columns_match_headers_for_any_budget():
    from steadysam.eval.report import run_table

    def summary(clicks):
        miou = [0.5 + 0.01 * i for i in range(clicks)]
        thr = {"85": 3.0, "90": 4.0, "95": 6.0}
        return dict(
            dataset="GrabCut",
            label="m",
            clicks=clicks,
            num_samples=2,
            noc=thr,
            nof=thr,
            nof_ritm=thr,
            miou=miou,
        )

    for budgets, heads in (
        ([20], ["mIoU@1", "mIoU@5", "mIoU@20"]),
        ([5], ["mIoU@1", "mIoU@5"]),
        ([1], ["mIoU@1"]),
        ([5, 20], ["mIoU@1", "mIoU@5", "mIoU@N"]),
    ):
        lines = run_table([summary(c) for c in budgets]).splitlines()
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        assert [c for c in head if c.startswith("mIoU")] == heads
        assert len(lines[1].strip("|").split("|")) == len(head)
        for row in lines[2 : 2 + len(budgets)]:
            assert len(row.strip("|").split("|")) == len(head)
        last = head.index(heads[-1])
        first_row = [c.strip() for c in lines[2].strip("|").split("|")]
        assert first_row[last] == f"{100 * summary(budgets[0])['miou'][-1]:.2f}"
