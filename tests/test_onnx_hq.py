"""ONNX export of HQ-SAM: the encoder's early feature, the once-per-image fusion graph and the
HQ decoder graph reproduce the PyTorch model, and ``OnnxPredictor`` on an HQ-SAM folder
reproduces ``steadysam.Predictor`` (click sequences, boxes, ``hq_token_only`` both ways and the
model's default) on real images."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from test_onnx_export import session
from test_onnx_predictor import _iou, _samples

import steadysam
from steadysam import Predictor
from steadysam.clicks import Clicker
from steadysam.models.config import HQConfig
from steadysam.onnx import OnnxFolderError, OnnxPredictor
from steadysam.onnx.export import export_onnx
from steadysam.preprocess import Frame, image_to_tensor
from steadysam.weights.digest import state_digest

TOL = 1e-3  # the bound on |onnxruntime - PyTorch|


def _model(token_only: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    m = steadysam.build_model("hq_sam_tiny", random_init=True).eval()
    if token_only:
        m.config = dataclasses.replace(m.config, hq=HQConfig(token_only=True))
    return m


@pytest.fixture(scope="module")
def hq(tmp_path_factory):
    m = _model()
    return m, export_onnx(m, tmp_path_factory.mktemp("onnx-hq") / "hq", name="hq_sam_tiny")


@pytest.fixture(scope="module")
def samples(data_root):
    return _samples(data_root, 2)[:2]  # two GrabCut images


def test_manifest_and_sidecars_list_the_hq_parts(hq):
    m, folder = hq
    manifest = json.loads((folder / "model.json").read_text())
    assert manifest["graphs"] == ["encoder", "hq_fusion", "decoder"]
    assert manifest["weights_digest"] == state_digest(m)
    assert manifest["hq"]["fusion_graph"] == "hq_fusion"
    assert manifest["hq"]["token_only"] is False
    assert manifest["config"]["hq"] is not None
    for graph in manifest["graphs"]:
        side = json.loads((folder / f"{graph}.json").read_text())
        assert side["export_check"]["max_abs_diff"] <= TOL
        sess = session(folder, graph)
        for kind, vals in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            assert [s["name"] for s in side[kind]] == [v.name for v in vals]
    enc = json.loads((folder / "encoder.json").read_text())
    h = m.prompt_encoder.image_embedding_size[0]
    assert enc["outputs"][1]["name"] == "early_features"
    assert enc["outputs"][1]["shape"] == [1, h, h, m.mask_decoder.vit_dim]
    dec = json.loads((folder / "decoder.json").read_text())
    assert dec["decoder"] == "HQMaskDecoder" and dec["hq"] == manifest["hq"]
    assert [s["name"] for s in dec["inputs"][-2:]] == ["hq_features", "hq_token_only"]
    assert dec["outputs"][0]["shape"][1] == 2


def test_a_folder_without_its_fusion_graph_is_refused(hq, tmp_path):
    _, folder = hq
    broken = tmp_path / "hq"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "model.json").read_text())
    manifest["graphs"].remove("hq_fusion")
    (broken / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(OnnxFolderError, match="hq_fusion"):
        OnnxPredictor(broken)


def test_graphs_match_the_pytorch_model(hq, samples):
    """Encoder (+ early feature) and fusion on a real image, then the decoder graph against
    ``Sam.decode`` for 1-8 points, a box, a mask prompt, both multimask modes and both
    ``hq_token_only`` values."""
    m, folder = hq
    enc, fus, dec = (session(folder, g) for g in ("encoder", "hq_fusion", "decoder"))
    _, rgb, _ = samples[0]
    frame = Frame.create(m.config.preprocess, rgb.shape[:2], m.image_size)
    image = image_to_tensor(rgb, frame, m.pixel_mean, m.pixel_std)
    emb_o, early_o = enc.run(None, {"image": image.numpy()})
    with torch.no_grad():
        emb_t, early_t = m.encode(image, early_features=True)
        fusion_t = m.hq_features(emb_t, early_t)
    assert np.abs(emb_o - emb_t.numpy()).max() <= TOL
    assert np.abs(early_o - early_t.numpy()).max() <= TOL
    fusion_o = fus.run(None, {"image_embeddings": emb_o, "early_features": early_o})[0]
    assert np.abs(fusion_o - fusion_t.numpy()).max() <= TOL

    _check_decoder(m, dec, emb_t, fusion_t)


def test_hq_decoder_graph_with_a_stable_sam_plugin(tmp_path):
    """HQ-SAM + Stable-SAM's plugin (perturbed so it is not the identity): the plugin runs
    inside the HQ decoder graph, which matches ``Sam.decode``."""
    torch.manual_seed(1)
    m = steadysam.build_model("stable_hq_sam_tiny", random_init=True).eval()
    with torch.no_grad():
        for p in m.plugin_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = export_onnx(m, tmp_path / "stable_hq", name="stable_hq_sam_tiny")
    assert json.loads((folder / "decoder.json").read_text())["plugin"]["included"]
    g = torch.Generator().manual_seed(2)
    c, (h, w) = m.prompt_encoder.embed_dim, m.prompt_encoder.image_embedding_size
    emb = torch.randn(1, c, h, w, generator=g)
    fusion = torch.randn(1, c // 8, 4 * h, 4 * w, generator=g)
    _check_decoder(m, session(folder, "decoder"), emb, fusion)


def _check_decoder(m, dec, emb_t, fusion_t) -> None:
    """The HQ decoder graph against ``Sam.decode`` for 1-8 points, a box, a mask prompt, both
    multimask modes and both ``hq_token_only`` values."""
    g = torch.Generator().manual_seed(5)
    S, h = m.image_size, emb_t.shape[-1] * 4
    for n in (1, 3, 8):
        coords = torch.rand(1, n, 2, generator=g) * S
        labels = (torch.rand(1, n, generator=g) > 0.3).int()
        box = torch.tensor([[20.0, 30.0, 200.0, 180.0]]) if n == 3 else None
        mask = torch.randn(1, 1, h, h, generator=g) * 5 if n > 1 else None
        pts = [coords[0].numpy()]
        labs = [labels[0].float().numpy()]
        if box is None:
            pts.append(np.zeros((1, 2), np.float32))
            labs.append(np.array([-1.0], np.float32))
        else:
            pts.append(box.reshape(2, 2).numpy())
            labs.append(np.array([2.0, 3.0], np.float32))
        for token_only in (False, True):
            feeds = {
                "image_embeddings": emb_t.contiguous().numpy(),
                "point_coords": np.concatenate(pts)[None].astype(np.float32),
                "point_labels": np.concatenate(labs)[None].astype(np.float32),
                "mask_input": (torch.zeros(1, 1, h, h) if mask is None else mask).numpy(),
                "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
                "hq_features": fusion_t.contiguous().numpy(),
                "hq_token_only": np.array([float(token_only)], np.float32),
            }
            low_o, iou_o = dec.run(None, feeds)
            for k, multi in enumerate((False, True)):
                with torch.no_grad():
                    low_t, iou_t = m.decode(
                        emb_t,
                        (coords, labels),
                        box,
                        mask,
                        multimask_output=multi,
                        hq_features=fusion_t,
                        hq_token_only=token_only,
                    )
                assert np.abs(low_o[:, k : k + 1] - low_t.numpy()).max() <= TOL, (n, multi)
                assert np.abs(iou_o[:, k : k + 1] - iou_t.numpy()).max() <= TOL, (n, multi)


@pytest.mark.parametrize("mode", ["focsam", "sam-best"])
def test_onnx_predictor_agrees_with_pytorch_over_click_sequences(hq, samples, mode):
    m, folder = hq
    tp, op = Predictor(m), OnnxPredictor(folder, threads=1)
    worst_logits, worst_iou = 0.0, 1.0
    for _, rgb, gt in samples:
        tp.set_image(rgb)
        op.set_image(rgb)
        emb = tp.get_image_embedding().float().numpy()
        assert np.abs(op.get_image_embedding() - emb).max() <= TOL
        ts, os_ = tp.new_object(mode=mode), op.new_object(mode=mode)
        clicker, pred = Clicker(gt), np.zeros_like(gt)
        for _ in range(5):
            c = clicker.make_next_click(pred)
            if c is None:
                break
            pred = ts.click(c.x, c.y, c.positive)
            got = os_.click(c.x, c.y, c.positive)
            assert got.shape == pred.shape and got.dtype == np.bool_
            worst_logits = max(worst_logits, float(np.abs(os_.logits - ts.logits.numpy()).max()))
            worst_iou = min(worst_iou, _iou(pred, got))
        # A box replacing the clicks' box, then undo back to the clicks.
        ys, xs = np.nonzero(gt)
        box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
        worst_iou = min(worst_iou, _iou(os_.set_box(*box), ts.set_box(*box)))
        worst_logits = max(worst_logits, float(np.abs(os_.logits - ts.logits.numpy()).max()))
        assert np.array_equal(os_.undo(), ts.undo())
    assert worst_logits <= TOL, worst_logits
    assert worst_iou >= 0.999, worst_iou


def test_predict_box_points_and_hq_token_only(hq, samples):
    m, folder = hq
    tp, op = Predictor(m), OnnxPredictor(folder, threads=1)
    _, rgb, gt = samples[1]
    tp.set_image(rgb)
    op.set_image(rgb)
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    pts, labels = np.array([[xs.mean(), ys.mean()], [5.0, 5.0]]), np.array([1, 0])
    outputs = {}
    for kwargs in (
        dict(box=box),
        dict(point_coords=pts, point_labels=labels),
        dict(point_coords=pts, point_labels=labels, box=box),
    ):
        for multi in (True, False):
            for token_only in (None, False, True):
                args = dict(**kwargs, multimask_output=multi, hq_token_only=token_only)
                m_t, iou_t, low_t = tp.predict(**args)
                m_o, iou_o, low_o = op.predict(**args)
                assert m_o.shape == m_t.shape == (1, *rgb.shape[:2])  # HQ-SAM: one mask
                assert np.abs(low_o - low_t).max() <= TOL
                assert np.abs(iou_o - iou_t).max() <= TOL
                assert _iou(m_o[0], m_t[0]) >= 0.999
                outputs[len(kwargs), multi, token_only] = low_o
    # The switch does something, and None is the model's default (False here).
    assert np.abs(outputs[3, True, True] - outputs[3, True, False]).max() > 1e-2
    assert np.array_equal(outputs[3, True, None], outputs[3, True, False])
    with pytest.raises(TypeError, match="hq_token_only"):
        op.predict(box=box, hq_token_only=1)


def test_the_models_hq_token_only_default_is_exported(samples, tmp_path):
    m = _model(token_only=True)
    folder = export_onnx(m, tmp_path / "hq-token-only", name="hq_token_only")
    assert json.loads((folder / "model.json").read_text())["hq"]["token_only"] is True
    tp, op = Predictor(m), OnnxPredictor(folder, threads=1)
    assert op.hq_token_only is True
    _, rgb, gt = samples[0]
    tp.set_image(rgb)
    op.set_image(rgb)
    ys, xs = np.nonzero(gt)
    x, y = float(xs[len(xs) // 2]), float(ys[len(ys) // 2])
    ts, os_ = tp.new_object(), op.new_object()
    ts.click(x, y)
    os_.click(x, y)
    assert np.abs(os_.logits - ts.logits.numpy()).max() <= TOL
    _, _, default = op.predict(np.array([[x, y]]), np.array([1]))
    _, _, hq_only = op.predict(np.array([[x, y]]), np.array([1]), hq_token_only=True)
    _, _, summed = op.predict(np.array([[x, y]]), np.array([1]), hq_token_only=False)
    assert np.array_equal(default, hq_only) and not np.allclose(default, summed, atol=1e-2)


def test_non_hq_exports_refuse_hq_token_only(data_root):
    from test_onnx_export import exported

    op = OnnxPredictor(exported("demo_sam"), threads=1)
    _, rgb, _ = _samples(data_root, 1)[0]
    op.set_image(rgb)
    with pytest.raises(ValueError, match="not HQ-SAM"):
        op.predict(np.array([[10.0, 10.0]]), np.array([1]), hq_token_only=True)
    assert op.hq_token_only is None and op.hq_features is None
