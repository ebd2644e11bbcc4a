"""OnnxPredictor: the PyTorch predictor's protocol with onnxruntime and numpy only.

Agreement with ``steadysam.Predictor`` on real images over simulated click sequences (SAM and
FocSAM, both preprocessing conventions, both session modes, undo across the refiner), the int8
decoder's measured agreement, folder validation, and the torch-free import."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_onnx_export import exported, model

from steadysam import Predictor
from steadysam.cli import main
from steadysam.clicks import Clicker
from steadysam.datafiles import read_image, read_mask
from steadysam.onnx import OnnxFolderError, OnnxPredictor

TOL = 1e-3  # the bound on |onnxruntime - PyTorch|
ROOT = Path(__file__).resolve().parents[1]


def _samples(data_root: Path, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The first n GrabCut images with their object masks, and one Berkeley image."""
    out = []
    for ds, count in (("GrabCut", n), ("Berkeley", 1)):
        images = sorted((data_root / ds / "images").iterdir())[:count]
        for img in images:
            mask_file = next((data_root / ds / "masks").glob(img.stem + ".*"))
            raw, _ = read_mask(mask_file)
            gt = (raw[..., 0] if raw.ndim == 3 else raw) > 0
            out.append((f"{ds}/{img.name}", read_image(img), gt))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0  # two empty masks agree


def _run_sequences(torch_pred, onnx_pred, samples, mode, clicks=6):
    """Same clicks on both (simulated from the PyTorch masks) -> worst logit difference, worst
    embedding difference, worst mask IoU; asserts the refiner ran on the same clicks."""
    worst_logits = worst_emb = 0.0
    worst_iou = 1.0
    for _, rgb, gt in samples:
        torch_pred.set_image(rgb)
        onnx_pred.set_image(rgb)
        emb = torch_pred.get_image_embedding().float().numpy()
        worst_emb = max(worst_emb, float(np.abs(onnx_pred.get_image_embedding() - emb).max()))
        ts, os_ = torch_pred.new_object(mode=mode), onnx_pred.new_object(mode=mode)
        clicker, pred = Clicker(gt), np.zeros_like(gt)
        for _ in range(clicks):
            c = clicker.make_next_click(pred)
            if c is None:
                break
            pred = ts.click(c.x, c.y, c.positive)
            got = os_.click(c.x, c.y, c.positive)
            assert ts.refined == os_.refined
            worst_logits = max(worst_logits, float(np.abs(os_.logits - ts.logits.numpy()).max()))
            worst_iou = min(worst_iou, _iou(pred, got))
            assert got.shape == pred.shape and got.dtype == np.bool_
    return worst_logits, worst_emb, worst_iou


@pytest.fixture(scope="module")
def samples(data_root):
    return _samples(data_root, 3)


@pytest.mark.parametrize(
    "name,convention",
    [
        ("demo_sam", "sam"),
        ("demo_sam", "focsam"),
        ("demo_stable_focsam", None),
        ("demo_focsam", None),
    ],
)
@pytest.mark.parametrize("mode", ["focsam", "sam-best"])
def test_onnx_predictor_agrees_with_pytorch_over_click_sequences(samples, name, convention, mode):
    tp = Predictor(model(name), preprocess=convention)
    op = OnnxPredictor(exported(name), preprocess=convention, threads=1)
    logits, emb, iou = _run_sequences(tp, op, samples, mode)
    assert emb <= TOL, emb
    assert logits <= TOL, logits
    assert iou >= 0.999, iou


def test_undo_across_the_refiner_restores_the_unrefined_state(samples):
    name = "demo_focsam"
    tp, op = Predictor(model(name)), OnnxPredictor(exported(name), threads=1)
    _, rgb, _ = samples[0]
    h, w = rgb.shape[:2]
    tp.set_image(rgb)
    op.set_image(rgb)
    ts, os_ = tp.new_object(), op.new_object()
    ts.click(w / 2, h / 2)
    first_o = os_.click(w / 2, h / 2)
    assert not os_.refined
    logits1 = os_.logits.copy()
    ts.click(w / 4, h / 4, positive=False)
    os_.click(w / 4, h / 4, positive=False)
    assert os_.refined and ts.refined
    assert np.array_equal(os_.undo(), first_o)
    assert not os_.refined and np.array_equal(os_.logits, logits1)
    assert os_.clicks == [(w / 2, h / 2, True)]
    # The refiner runs again on the new 2nd click, from the unrefined embedding.
    want = ts.undo() is not None and ts.click(w / 3, h / 3, positive=False)
    got = os_.click(w / 3, h / 3, positive=False)
    assert os_.refined and _iou(got, want) >= 0.999
    assert np.abs(os_.logits - ts.logits.numpy()).max() <= TOL
    assert os_.undo() is not None and os_.undo() is None  # back at the start


def test_box_and_samPredictor_style_predict_agree(samples):
    name = "demo_sam"
    tp, op = Predictor(model(name)), OnnxPredictor(exported(name), threads=1)
    _, rgb, gt = samples[1]
    tp.set_image(rgb)
    op.set_image(rgb)
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    pts, labels = np.array([[xs.mean(), ys.mean()], [5.0, 5.0]]), np.array([1, 0])
    for kwargs in (
        dict(box=box),
        dict(point_coords=pts, point_labels=labels),
        dict(point_coords=pts, point_labels=labels, box=box),
    ):
        for multi in (True, False):
            m_t, iou_t, low_t = tp.predict(**kwargs, multimask_output=multi)
            m_o, iou_o, low_o = op.predict(**kwargs, multimask_output=multi)
            assert m_o.shape == m_t.shape and low_o.shape == low_t.shape
            assert np.abs(low_o - low_t).max() <= TOL and np.abs(iou_o - iou_t).max() <= TOL
            assert min(_iou(a, b) for a, b in zip(m_o, m_t, strict=True)) >= 0.999
    ts, os_ = tp.new_object(), op.new_object()
    assert _iou(os_.set_box(*box), ts.set_box(*box)) >= 0.999


def test_int8_decoder_measured_agreement(samples):
    """The int8 decoder against the fp32 graph on the same clicks: mean mask IoU."""
    name = "demo_focsam"
    folder = exported(name, int8=True)
    fp32 = OnnxPredictor(folder, threads=1)
    int8 = OnnxPredictor(folder, decoder="int8", threads=1)
    ious = []
    for _, rgb, gt in samples:
        fp32.set_image(rgb)
        int8.set_image(rgb)
        a, b = fp32.new_object(), int8.new_object()
        clicker, pred = Clicker(gt), np.zeros_like(gt)
        for _ in range(5):
            c = clicker.make_next_click(pred)
            if c is None:
                break
            pred = a.click(c.x, c.y, c.positive)
            ious.append(_iou(pred, b.click(c.x, c.y, c.positive)))
    print(f"int8 vs fp32 decoder: mean IoU {np.mean(ious):.4f}, min {np.min(ious):.4f}")
    # Loose bounds (int8 kernels differ between CPUs): a broken quantisation gives ~0.
    assert np.mean(ious) >= 0.9 and np.min(ious) >= 0.5
    assert (folder / "decoder_int8.onnx").stat().st_size < (folder / "decoder.onnx").stat().st_size


# -- validation --------------------------------------------------------------------------------
@pytest.fixture()
def copy_of(tmp_path):
    def make(name="demo_focsam"):
        dst = Path(tempfile.mkdtemp(dir=tmp_path)) / name  # a fresh copy per call
        shutil.copytree(exported(name), dst)
        return dst

    return make


def _edit(path: Path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_folder_validation_names_the_problem(copy_of, tmp_path):
    with pytest.raises(OnnxFolderError, match="not a folder"):
        OnnxPredictor(tmp_path / "nowhere")
    d = copy_of()
    (d / "model.json").unlink()
    with pytest.raises(OnnxFolderError, match="model.json: missing manifest"):
        OnnxPredictor(d)
    d = copy_of("demo_sam")
    (d / "decoder.onnx").unlink()
    with pytest.raises(OnnxFolderError, match="decoder.onnx: missing ONNX graph"):
        OnnxPredictor(d)
    d = copy_of("demo_sam")
    _edit(d / "encoder.json", format_version=99)
    with pytest.raises(OnnxFolderError, match="encoder.json: sidecar format version 99"):
        OnnxPredictor(d)
    d = copy_of("demo_sam")
    _edit(d / "decoder.json", weights_digest="0" * 32)
    with pytest.raises(OnnxFolderError, match="decoder.json: weights_digest"):
        OnnxPredictor(d)
    d = copy_of("demo_sam")
    side = json.loads((d / "decoder.json").read_text())
    side["inputs"][1]["name"] = "coords"
    (d / "decoder.json").write_text(json.dumps(side))
    with pytest.raises(OnnxFolderError, match="do not match its sidecar"):
        OnnxPredictor(d)
    d = copy_of("demo_sam")
    (d / "encoder.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxFolderError, match="cannot load graph 'encoder'"):
        OnnxPredictor(d)
    d = copy_of("demo_focsam")
    (d / "refiner.json").unlink()
    with pytest.raises(OnnxFolderError, match="refiner.json: missing sidecar"):
        OnnxPredictor(d)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        OnnxPredictor(exported("demo_sam"), threads=0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        OnnxPredictor(exported("demo_sam"), decoder="fp16")
    with pytest.raises(OnnxFolderError, match="no int8 decoder"):
        OnnxPredictor(exported("demo_sam"), decoder="int8")


def test_bad_prompts_and_images_are_clear_errors(samples):
    op = OnnxPredictor(exported("demo_sam"), threads=1)
    with pytest.raises(RuntimeError, match="no image is set"):
        op.new_object()
    with pytest.raises(ValueError, match="unsupported image shape"):
        op.set_image(np.zeros((4, 4, 2), np.uint8))
    _, rgb, _ = samples[0]
    op.set_image(rgb)
    h, w = rgb.shape[:2]
    s = op.new_object()
    with pytest.raises(ValueError, match="outside the"):
        s.click(w, 0)
    with pytest.raises(ValueError, match="not finite"):
        s.click(float("nan"), 3)
    with pytest.raises(ValueError, match="empty or inverted"):
        s.set_box(10, 10, 10, 20)
    with pytest.raises(ValueError, match="mode must be one of"):
        op.new_object(mode="best")
    with pytest.raises(ValueError, match="point_labels"):
        op.predict(np.array([[1.0, 1.0]]), np.array([2]))
    assert s.clicks == [] and s.mask is None


# -- torch-free import and the CLI -------------------------------------------------------------
@pytest.mark.multiprocess
def test_onnx_predictor_runs_without_torch(samples):
    folder = exported("demo_stable_focsam")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from steadysam.onnx import OnnxPredictor
        p = OnnxPredictor({str(folder)!r}, threads=1)
        p.set_image(np.full((40, 60, 3), 128, np.uint8))
        s = p.new_object()
        s.click(30, 20)
        m = s.click(5, 5, positive=False)
        assert s.refined and m.shape == (40, 60)
        assert not any(k == "torch" or k.startswith("torch.") for k in sys.modules
                       if sys.modules[k] is not None)
        print("ok")
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.multiprocess
def test_cli_help_and_export_onnx_help_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from steadysam.cli import main
        assert main(["--help"]) == 0
        assert main(["export-onnx", "--help"]) == 0
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "export-onnx" in r.stdout and "--int8" in r.stdout


def test_export_onnx_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export-onnx", "--model", "demo_sam", "--out", str(out), "--int8"]) == 0
    printed = capsys.readouterr().out
    assert "decoder_int8.onnx" in printed and "wrote" in printed
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["graphs"] == ["encoder", "decoder", "decoder_int8"]
    assert manifest["model"] == "demo_sam"
    (tmp_path / "file").write_text("x")
    assert main(["export-onnx", "--model", "demo_sam", "--out", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["export-onnx", "--model", "no_such_model", "--out", str(out)]) == 2
    bf16 = ["export-onnx", "--model", "demo_sam", "--out", str(out), "--precision", "bf16"]
    if main(["export-onnx", "--help"]) == 0 and "--precision" in capsys.readouterr().out:
        assert main(bf16) == 2 and "writes fp32 graphs" in capsys.readouterr().err
    assert main(["export-onnx", "--help"]) == 0
    assert torch.is_grad_enabled()
