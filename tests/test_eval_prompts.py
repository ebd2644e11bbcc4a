"""`steadysam eval-prompts`: boundary IoU, prompt stability, seeding, resume, CLI, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_eval_support import make_folder, strip_timing, tiny_checkpoint

from steadysam.cli import main
from steadysam.eval import EvalConfig, evaluate
from steadysam.eval.datasets import load_dataset
from steadysam.eval.metrics import (
    boundary_dilation,
    boundary_iou,
    iou,
    mask_boundary,
    mean_pairwise_iou,
)
from steadysam.eval.prompt_report import read_prompt_records
from steadysam.eval.prompt_runner import PromptEvalConfig, evaluate_prompts, object_prompts
from steadysam.eval.report import report
from steadysam.prompts import parse_settings

# -- fakes --------------------------------------------------------------------------------------


class PromptFake:
    """``Predictor.set_image`` / ``predict`` stand-in. ``follow``: the mask is the prompt's box
    plus disks of radius 6 around its points, grown by ``grow`` px; otherwise a fixed disk,
    whatever the prompt."""

    def __init__(self, follow: bool = True, grow: int = 0) -> None:
        self.follow = follow
        self.grow = grow
        self.size = (0, 0)
        self.set_image_calls = 0
        self.predict_calls = 0
        self.last_encoder_seconds = 0.25

    def set_image(self, image: np.ndarray) -> None:
        self.size = image.shape[:2]
        self.set_image_calls += 1

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output=True):
        assert multimask_output is False
        self.predict_calls += 1
        h, w = self.size
        yy, xx = np.mgrid[:h, :w]
        if not self.follow:
            mask = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= 64
        else:
            mask = np.zeros((h, w), bool)
            if box is not None:
                x0, y0, x1, y1 = np.round(box).astype(int) + np.array([-1, -1, 1, 1]) * self.grow
                mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
            for x, y in [] if point_coords is None else point_coords:
                mask |= (yy - y) ** 2 + (xx - x) ** 2 <= 36
        return mask[None], np.ones(1), np.zeros((1, 4, 4))


def _cfg(data: Path, out: Path, **kw) -> PromptEvalConfig:
    base = dict(
        dataset="folder",
        data_root=str(data),
        model="fake",
        prompts="gt-box,noisy-box:0.3,points:2",
        draws=4,
        out=str(out),
        progress=False,
    )
    return PromptEvalConfig(**{**base, **kw})


# -- boundary IoU and pairwise IoU --------------------------------------------------------------


def _boundary_brute(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.'s mask_to_boundary with a numpy 3 x 3 erosion repeated d times."""
    m = np.pad(mask.astype(bool), 1)
    for _ in range(d):
        p = np.pad(m, 1, constant_values=True)  # OpenCV's erode border: never erodes
        m = np.logical_and.reduce(
            [
                p[1 + dy : 1 + dy + m.shape[0], 1 + dx : 1 + dx + m.shape[1]]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
        )
    return mask.astype(bool) & ~m[1:-1, 1:-1]


def test_boundary_hand_computed_case():
    # 10 x 10 image: diag 14.1, 0.02 * diag = 0.28 -> d = max(1, 0) = 1 px.
    assert boundary_dilation((10, 10)) == 1 and boundary_dilation((300, 400)) == 10
    gt = np.zeros((10, 10), bool)
    gt[2:7, 2:7] = True  # 5 x 5 square: boundary = the 16-pixel ring
    pred = np.zeros((10, 10), bool)
    pred[2:7, 3:8] = True  # shifted one column right: ring of 16, shares 10 with gt's ring
    assert mask_boundary(gt, 1).sum() == 16 and mask_boundary(gt, 1)[3:6, 3:6].sum() == 0
    # gt ring ∩ pred ring: the top and bottom rows at x = 3..6 (4 + 4); the side columns never
    # meet (x = 2, 6 vs x = 3, 7). 8 / (16 + 16 - 8).
    assert boundary_iou(pred, gt) == pytest.approx(8 / 24)
    # A mask touching the image border gets a boundary along the border (1-px zero padding).
    full = np.ones((10, 10), bool)
    assert mask_boundary(full, 1).sum() == 36
    assert boundary_iou(full, full) == 1.0


def test_boundary_matches_brute_force_and_ignores_ignore_pixels():
    rng = np.random.default_rng(0)
    for trial in range(6):
        h, w = rng.integers(5, 40, 2)
        a = rng.random((h, w)) > 0.4
        b = rng.random((h, w)) > 0.6
        for d in (1, 2, 4):
            assert np.array_equal(mask_boundary(a, d), _boundary_brute(a, d)), (trial, d)
        d = boundary_dilation((h, w))
        ba, bb = _boundary_brute(a, d), _boundary_brute(b, d)
        expected = (ba & bb).sum() / (ba | bb).sum()
        assert boundary_iou(a, b) == pytest.approx(expected)
        ignore = rng.random((h, w)) > 0.7
        ba, bb = _boundary_brute(a & ~ignore, d), _boundary_brute(b & ~ignore, d)
        assert boundary_iou(a, b, ignore) == pytest.approx((ba & bb).sum() / (ba | bb).sum())
    assert boundary_iou(np.zeros((8, 8), bool), np.zeros((8, 8), bool)) == 0.0


def test_mean_pairwise_iou_brute_force_and_edge_cases():
    rng = np.random.default_rng(1)
    masks = [rng.random((30, 20)) > 0.5 for _ in range(5)]
    masks.append(np.zeros((30, 20), bool))
    pairs = [iou(masks[i], masks[j]) for i in range(6) for j in range(i + 1, 6)]
    assert mean_pairwise_iou(masks) == pytest.approx(np.mean(pairs))
    assert mean_pairwise_iou([masks[0]] * 4) == 1.0
    assert mean_pairwise_iou([np.zeros((4, 4), bool)] * 3) == 1.0  # two empty masks agree
    assert mean_pairwise_iou(masks[:1]) is None


# -- runner with a fake predictor ---------------------------------------------------------------


def test_summary_metrics_and_stability_of_a_prompt_blind_model(tmp_path):
    data = make_folder(tmp_path / "d", n=3)
    s = evaluate_prompts(_cfg(data, tmp_path / "blind"), predictor=PromptFake(follow=False))
    assert s["num_samples"] == 3 and s["num_errors"] == 0
    assert s["setting_order"] == ["gt-box", "noisy-box:0.3", "points:2"]
    assert s["settings"]["gt-box"]["stability"] is None
    assert s["settings"]["gt-box"]["draws"] == 1
    for key in ("noisy-box:0.3", "points:2"):
        m = s["settings"][key]
        assert m["stability"] == 1.0 and m["draws"] == 4 and m["n"] == 3
        assert m["miou"] == pytest.approx(m["miou_first"])  # same mask for every draw
    # The per-object IoU is that of the fixed disk, whatever the prompt.
    for rec in read_prompt_records(tmp_path / "blind"):
        assert len({v for st in rec["settings"].values() for v in st["iou"]}) == 1
    for name in ("summary.json", "summary.md", "miou.png", "config.json", "records.jsonl"):
        assert (tmp_path / "blind" / name).is_file()


def test_image_encoded_once_and_prompts_shared_across_models_and_orders(tmp_path):
    data = make_folder(tmp_path / "d", n=3)
    fake = PromptFake()
    evaluate_prompts(_cfg(data, tmp_path / "a"), predictor=fake)
    assert fake.set_image_calls == 3 and fake.predict_calls == 3 * (1 + 4 + 4)
    # Another model, the settings in another order: the same prompts per setting and object.
    evaluate_prompts(
        _cfg(data, tmp_path / "b", model="other", prompts="points:2,gt-box,noisy-box:0.3"),
        predictor=PromptFake(follow=False),
    )
    for ra, rb in zip(
        read_prompt_records(tmp_path / "a"), read_prompt_records(tmp_path / "b"), strict=True
    ):
        for key in ra["settings"]:
            assert ra["settings"][key]["prompts"] == rb["settings"][key]["prompts"]
    # The recorded prompts are the library's draws for that (seed, setting, object).
    rec = read_prompt_records(tmp_path / "a")[1]
    gt = np.array(Image.open(data / "masks" / f"{rec['id']}.png")) > 127
    (setting,) = parse_settings("noisy-box:0.3")
    drawn = object_prompts(setting, gt, 0, rec["id"], 4)
    assert [p.to_json() for p in drawn] == rec["settings"]["noisy-box:0.3"]["prompts"]


def test_resume_after_a_kill_and_config_mismatch(tmp_path):
    data = make_folder(tmp_path / "d", n=4)
    out = tmp_path / "run"
    full = evaluate_prompts(_cfg(data, out), predictor=PromptFake())
    lines = (out / "records.jsonl").read_bytes().split(b"\n")
    # As if SIGKILL hit while the third line was being written.
    (out / "records.jsonl").write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:50])
    fake = PromptFake()
    again = evaluate_prompts(_cfg(data, out), predictor=fake)
    assert fake.set_image_calls == 2  # only the two objects without a complete line
    assert strip_timing(read_prompt_records(out)) == strip_timing(
        [json.loads(ln) for ln in lines if ln]
    )
    assert again["settings"] == full["settings"]
    assert len((out / "records.jsonl").read_text().splitlines()) == 4
    # Nothing left to do: a third run evaluates nothing.
    fake = PromptFake()
    evaluate_prompts(_cfg(data, out), predictor=fake)
    assert fake.predict_calls == 0
    for change in ({"seed": 1}, {"draws": 3}, {"prompts": "gt-box"}, {"model": "other"}):
        with pytest.raises(ValueError, match="different configuration"):
            evaluate_prompts(_cfg(data, out, **change), predictor=PromptFake())
    # An equivalent spelling of the same settings is the same configuration.
    evaluate_prompts(_cfg(data, out, prompts="gt-box, noisy-box:0.30,points:2"), predictor=fake)
    # A folder without any record (say the model failed to load) takes a corrected command.
    (out / "records.jsonl").write_text("")
    evaluate_prompts(_cfg(data, out, seed=5), predictor=PromptFake())
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 5


def test_ignore_band_left_out_of_iou(tmp_path):
    # GrabCut-style masks: 255 object, 128 ignore band around it.
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "a.png")
    m = np.zeros((40, 40), np.uint8)
    m[8:32, 8:32] = 128
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(root / "masks" / "a.png")
    # The fake predicts the GT box grown by 2 px: the object plus the whole ignore band.
    ex = evaluate_prompts(
        _cfg(root, tmp_path / "ex", dataset="grabcut", prompts="gt-box"),
        predictor=PromptFake(grow=2),
    )
    bg = evaluate_prompts(
        _cfg(root, tmp_path / "bg", dataset="grabcut", prompts="gt-box", ignore="background"),
        predictor=PromptFake(grow=2),
    )
    assert ex["settings"]["gt-box"]["miou"] == 1.0 and ex["settings"]["gt-box"]["mbiou"] == 1.0
    assert bg["settings"]["gt-box"]["miou"] == pytest.approx(400 / 576)
    assert bg["settings"]["gt-box"]["mbiou"] < 1.0
    rec = read_prompt_records(tmp_path / "ex")[0]
    assert rec["ignore_pixels"] == 24 * 24 - 20 * 20


def test_hq_sam_layouts_load(tmp_path):
    root = tmp_path / "data"
    layouts = {
        "dis": ("DIS5K/DIS-VD", "im", "gt"),
        "thinobject": ("thin_object_detection/ThinObject5K", "images_test", "masks_test"),
        "hrsod": ("thin_object_detection/HRSOD", "images", "masks_max255"),
        "coift": ("thin_object_detection/COIFT", "images", "masks"),
    }
    soft = np.zeros((8, 8), np.uint8)
    soft[2:6, 2:6] = 200
    soft[2, 2:6] = 100  # a soft edge: <= 128 is background, as in sam-hq
    for sub, im, gt in layouts.values():
        (root / sub / im).mkdir(parents=True)
        (root / sub / gt).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / sub / im / "x.jpg")
        Image.fromarray(soft).save(root / sub / gt / "x.png")
    for name in layouts:
        ds = load_dataset(name, root)
        (ob,) = ds.items[0].masks[0].load()
        assert ob.gt.sum() == 12 and ob.ignore is None, name


# -- CLI with real tiny models --------------------------------------------------------------------


def _argv(out: Path, data_root: Path, model: str = "sam_tiny", *extra: str) -> list[str]:
    """``model``: a registered name (random weights: --random-init) or a checkpoint file."""
    net = ["--checkpoint", model] if Path(model).suffix else ["--model", model, "--random-init"]
    return [
        "eval-prompts",
        *net,
        "--dataset",
        "GrabCut",
        "--data-root",
        str(data_root),
        "--prompts",
        "gt-box,noisy-box:0.4,points:1,points:3",
        "--draws",
        "2",
        "--limit",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_cli_end_to_end_deterministic_across_runs_and_models(tmp_path, data_root, capsys):
    sam = str(tiny_checkpoint(tmp_path / "sam_tiny.safetensors"))
    focsam = str(tiny_checkpoint(tmp_path / "focsam_tiny.safetensors", "focsam_tiny"))
    assert main(_argv(tmp_path / "a", data_root, sam)) == 0
    assert "points:3" in capsys.readouterr().out
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["kind"] == "prompts" and s["num_samples"] == 2 and s["num_errors"] == 0
    assert list(s["settings"]) == ["gt-box", "noisy-box:0.4", "points:1", "points:3"]
    for key, m in s["settings"].items():
        for k in ("miou", "miou_first", "mbiou", "mbiou_first"):
            assert 0.0 <= m[k] <= 1.0, (key, k)
        assert (m["stability"] is None) == (key == "gt-box")
        assert m["stability"] is None or 0.0 <= m["stability"] <= 1.0
        assert m["n"] == 2
    config = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert config["checkpoint"] == sam and config["plugin"] is None
    assert config["weights_digest"] == s["weights_digest"] and len(s["weights_digest"]) == 32
    # Same command (and weights) again in a new folder: identical records.
    assert main(_argv(tmp_path / "b", data_root, sam)) == 0
    ra, rb = read_prompt_records(tmp_path / "a"), read_prompt_records(tmp_path / "b")
    assert strip_timing(ra) == strip_timing(rb)
    # Another model sees exactly the same prompts.
    assert main(_argv(tmp_path / "c", data_root, focsam)) == 0
    rc = read_prompt_records(tmp_path / "c")
    for x, y in zip(ra, rc, strict=True):
        assert {k: v["prompts"] for k, v in x["settings"].items()} == {
            k: v["prompts"] for k, v in y["settings"].items()
        }
    # The report puts the prompt runs side by side; a seed mismatch is flagged.
    assert (
        main(["report", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "r")])
        == 0
    )
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| sam_tiny |" in md and "| focsam_tiny |" in md and "noisy-box:0.4" in md
    assert (tmp_path / "r" / "miou_vs_prompt.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompts", "gt-box,scribble"], "'scribble'"),
        (["--draws", "0"], "--draws"),
        (["--limit", "-1"], "--limit"),
        (["--seed", "-3"], "--seed"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(tmp_path, data_root, capsys, extra, message):
    assert main(_argv(tmp_path / "x", data_root, "sam_tiny", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_cli_missing_dataset_and_other_config_exit_2(tmp_path, capsys):
    argv = _argv(tmp_path / "x", tmp_path / "nowhere")
    assert main(argv) == 2
    assert "not found" in capsys.readouterr().err
    data = make_folder(tmp_path / "d", n=1)
    evaluate_prompts(_cfg(data, tmp_path / "run", model="sam_tiny"), predictor=PromptFake())
    argv = ["eval-prompts", "--model", "sam_tiny", "--dataset", "folder"]
    argv += ["--data-root", str(data), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2 and "different configuration" in capsys.readouterr().err


# -- report -------------------------------------------------------------------------------------


def test_report_refuses_mixing_and_warns_on_different_seeds(tmp_path, capsys):
    data = make_folder(tmp_path / "d", n=2)
    evaluate_prompts(_cfg(data, tmp_path / "p0"), predictor=PromptFake())
    evaluate_prompts(_cfg(data, tmp_path / "p1", seed=1), predictor=PromptFake(follow=False))
    md = report([tmp_path / "p0", tmp_path / "p1"], tmp_path / "r")
    assert "different seeds" in md and "different seeds" in capsys.readouterr().err
    # Both rows, each with the differing setting stated in its name.
    assert "| fake (seed=0) |" in md and "| fake (seed=1) |" in md
    from test_eval_support import FakePredictor

    evaluate(
        EvalConfig(
            dataset="folder",
            data_root=str(data),
            model="m",
            clicks=2,
            out=str(tmp_path / "clicks"),
            progress=False,
        ),
        predictor=FakePredictor(),
    )
    with pytest.raises(ValueError, match="cannot mix"):
        report([tmp_path / "p0", tmp_path / "clicks"])
    assert main(["report", str(tmp_path / "clicks"), str(tmp_path / "p0")]) == 2


def test_plugin_option_reaches_build_model(monkeypatch, capsys):
    from test_eval_support import tiny_model

    import steadysam
    from steadysam.eval.runner import build_predictor

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return tiny_model()

    monkeypatch.setattr(steadysam, "build_model", spy)
    build_predictor(PromptEvalConfig("x", model="sam_tiny", plugin="p.safetensors", device="cpu"))
    build_predictor(EvalConfig("x", model="sam_tiny", device="cpu"))
    assert seen[0]["plugin"] == "p.safetensors" and seen[1].get("plugin") is None
    for command in ("eval", "eval-prompts"):
        assert main([command, "--help"]) == 0
        assert "--plugin" in capsys.readouterr().out


@pytest.mark.multiprocess
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, data_root, monkeypatch):
    """A real SIGKILL of the CLI process while it evaluates: the resumed run's records equal an
    uninterrupted run's, with no object lost or duplicated."""
    import os

    from conftest import sigkill_at

    from steadysam.eval.prompt_runner import JsonlAppender

    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")  # random weights, fixed in a file
    args = [
        "eval-prompts", "--checkpoint", str(ckpt), "--dataset", "GrabCut",
        "--data-root", str(data_root), "--limit", "5", "--draws", "3", "--no-progress",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # Killed right after its second record was written: mid-run on any machine.
    sigkill_at("steadysam.eval.prompt_runner:JsonlAppender.write", 2, tmp_path / "child",
               [*args, "--out", str(killed)], module="steadysam", env=env)  # fmt: skip
    records = killed / "records.jsonl"
    assert len(records.read_bytes().splitlines()) == 2
    assert not (killed / "summary.json").exists()
    written = []
    write = JsonlAppender.write
    monkeypatch.setattr(JsonlAppender, "write", lambda s, r: written.append(r) or write(s, r))
    assert main([*args, "--out", str(killed)]) == 0
    assert len(written) == 3  # only the objects without a record were evaluated
    assert len(records.read_bytes().splitlines()) == 5
    monkeypatch.undo()
    assert main([*args, "--out", str(clean)]) == 0
    a = strip_timing(read_prompt_records(killed))
    b = strip_timing(read_prompt_records(clean))
    assert sorted(r["id"] for r in a) == sorted(r["id"] for r in b)
    assert len(a) == len({r["id"] for r in a}) == 5
    assert sorted(a, key=lambda r: r["id"]) == sorted(b, key=lambda r: r["id"])
    sa = json.loads((killed / "summary.json").read_text())["settings"]
    sb = json.loads((clean / "summary.json").read_text())["settings"]
    assert sa == sb
