"""ONNX export: the graphs reproduce the PyTorch model (decoder over point counts, boxes and
mask prompts; the dense refiner; hard plugin routing), the sidecars describe them, the numpy
preprocessing equals the PyTorch one, and export leaves the model as it was."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import steadysam
from steadysam.models.focus_refiner import box_mask, focus_box, focus_box_mask
from steadysam.models.mask_decoder import MaskDecoder
from steadysam.onnx import frame as npf
from steadysam.onnx.export import export_onnx
from steadysam.onnx.graphs import decoder_graph
from steadysam.preprocess import Frame, image_to_tensor
from steadysam.weights.digest import state_digest

TOL = 1e-3  # the bound on |onnxruntime - PyTorch|


@functools.cache
def model(name: str, routing: str = "soft") -> steadysam.SamConfig:
    m = steadysam.build_model(name).eval()
    if routing == "hard":
        m.set_routing("hard", 0.5)
    return m


@functools.cache
def exported(name: str, routing: str = "soft", int8: bool = False) -> Path:
    """Export ``name`` once per process (the test modules share it)."""
    root = Path(tempfile.mkdtemp(prefix="steadysam-onnx-"))
    atexit.register(shutil.rmtree, root, True)
    return export_onnx(model(name, routing), root / name, name=name, int8=int8)


def session(folder: Path, graph: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(folder / f"{graph}.onnx"), opts)


def _decoder_feeds(emb, coords, labels, box, mask):
    """The decoder graph's inputs for Sam.decode's prompts (model frame)."""
    pts = [] if coords is None else [coords[0].numpy()]
    labs = [] if labels is None else [labels[0].float().numpy()]
    if box is None:
        pts.append(np.zeros((1, 2), np.float32))
        labs.append(np.array([-1.0], np.float32))
    else:
        pts.append(box.reshape(2, 2).numpy())
        labs.append(np.array([2.0, 3.0], np.float32))
    h = emb.shape[-1] * 4
    return {
        "image_embeddings": emb.numpy(),
        "point_coords": np.concatenate(pts)[None].astype(np.float32),
        "point_labels": np.concatenate(labs)[None].astype(np.float32),
        "mask_input": (torch.zeros(1, 1, h, h) if mask is None else mask).numpy(),
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
    }


@pytest.mark.parametrize("name", ["demo_sam", "demo_stable_focsam"])
@pytest.mark.parametrize("n", [1, 2, 6, 14])
def test_decoder_graph_matches_pytorch_for_any_number_of_points(name, n):
    m, dec = model(name), session(exported(name), "decoder")
    g = torch.Generator().manual_seed(n)
    S = m.image_size
    emb = torch.randn(1, 128, 16, 16, generator=g)
    coords = torch.rand(1, n, 2, generator=g) * S
    labels = torch.randint(0, 2, (1, n), generator=g).int()
    mask = torch.randn(1, 1, 64, 64, generator=g) * 4
    box = torch.tensor([[20.0, 30.0, 180.0, 200.0]])
    cases = [
        (coords, labels, None, None),
        (coords, labels, None, mask),
        (coords, labels, box, mask),
        (None, None, box, None),
    ]
    for c, lab, b, mk in cases:
        got = dec.run(None, _decoder_feeds(emb, c, lab, b, mk))
        pts = None if c is None else (c, lab)
        with torch.inference_mode():
            single = m.decode(emb, pts, b, mk, multimask_output=False, return_tokens=True)
            multi = m.decode(emb, pts, b, mk, multimask_output=True, return_tokens=True)
        for want, sel in ((single, slice(0, 1)), (multi, slice(1, None))):
            for g_out, w_out in zip(got, want, strict=True):
                diff = np.abs(g_out[:, sel] - w_out.numpy()).max()
                assert diff <= TOL, (name, n, b is not None, mk is not None, diff)


@pytest.mark.parametrize("offset", [3.0, 0.0, -30.0])  # large object, partial, empty (whole image)
def test_dense_refiner_graph_matches_the_refiner(offset):
    m, ref = model("demo_stable_focsam"), session(exported("demo_stable_focsam"), "refiner")
    g = torch.Generator().manual_seed(7)
    emb = torch.randn(1, 128, 16, 16, generator=g)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    coarse = (offset - ((yy - 20) ** 2 + (xx - 40) ** 2).sqrt() / 4).view(1, 1, 64, 64)
    token = torch.randn(1, 1, 128, generator=g)
    with torch.inference_mode():
        want = m.refine(emb, coarse, token)
    box = npf.focus_box(coarse[0, 0].numpy(), m.image_size, m.refiner.expand_ratio)
    grid = npf.focus_grid(box, m.image_size, 16)
    assert grid.sum() > 0
    got = ref.run(
        None, {"image_embeddings": emb.numpy(), "focus_grid": grid, "query_token": token.numpy()}
    )[0]
    assert np.abs(got - want.numpy()).max() <= TOL
    # The refiner changed something outside the unrefined projection only where focused.
    assert np.abs(got - emb.numpy()).max() > 1e-2


def test_hard_routing_plugin_exports_its_hard_weights():
    m = model("demo_stable_focsam", "hard")
    dec = session(exported("demo_stable_focsam", "hard"), "decoder")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        emb = torch.randn(1, 128, 16, 16, generator=g)
        coords = torch.rand(1, 2, 2, generator=g) * 256
        labels = torch.tensor([[1, 0]], dtype=torch.int)
        got = dec.run(None, _decoder_feeds(emb, coords, labels, None, None))
        with torch.inference_mode():
            want = m.decode(emb, (coords, labels), None, None, multimask_output=True)
        assert np.abs(got[0][:, 1:] - want[0].numpy()).max() <= TOL
    assert m.plugins()[0].routing == "hard"  # restored after export


def test_sidecars_describe_the_graphs():
    folder = exported("demo_stable_focsam")
    m = model("demo_stable_focsam")
    manifest = json.loads((folder / "model.json").read_text())
    assert manifest["graphs"] == ["encoder", "decoder", "refiner"]
    assert manifest["weights_digest"] == state_digest(m)
    for graph in manifest["graphs"]:
        side = json.loads((folder / f"{graph}.json").read_text())
        assert side["format_version"] == 1 and side["onnx_opset"] == 17
        assert side["steadysam_version"] == steadysam.__version__
        assert side["weights_digest"] == manifest["weights_digest"]
        assert side["export_check"]["max_abs_diff"] <= TOL
        sess = session(folder, graph)
        for kind, vals in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            assert [s["name"] for s in side[kind]] == [v.name for v in vals]
            for spec, v in zip(side[kind], vals, strict=True):
                assert spec["dtype"] == "float32" and v.type == "tensor(float)"
                assert len(spec["shape"]) == len(v.shape)
                for want, got in zip(spec["shape"], v.shape, strict=True):
                    if kind == "inputs":  # dynamic axes named in both, fixed ones equal
                        assert isinstance(want, int) == isinstance(got, int)
                    if isinstance(want, int) and isinstance(got, int):
                        assert want == got
    enc = json.loads((folder / "encoder.json").read_text())["preprocessing"]
    assert enc["convention"] == "focsam" and enc["image_size"] == 256
    assert enc["pixel_mean"] == pytest.approx(m.config.pixel_mean)
    dec = json.loads((folder / "decoder.json").read_text())
    assert dec["plugin"]["included"] and dec["plugin"]["config"]["routing"] == "soft"
    assert json.loads((exported("demo_sam") / "decoder.json").read_text())["plugin"] is None


def test_export_leaves_the_model_and_torch_as_they_were():
    m = steadysam.build_model("demo_stable_focsam").eval()
    m.set_routing("hard")
    m.prompt_encoder.requires_grad_(False)
    m.refiner.train()
    flags = [p.requires_grad for p in m.parameters()]
    modes = [x.training for x in m.modules()]
    bag, ln = F.embedding_bag, F.layer_norm
    with tempfile.TemporaryDirectory() as d:
        export_onnx(m, Path(d) / "x", name="x")
    assert [p.requires_grad for p in m.parameters()] == flags
    assert [x.training for x in m.modules()] == modes
    assert m.plugins()[0].routing == "hard" and type(m.plugins()[0].drp).__name__ != "_HardRouter"
    assert F.embedding_bag is bag and F.layer_norm is ln
    assert steadysam.fast_paths_enabled()


def test_an_unknown_decoder_class_is_refused_by_name():
    m = steadysam.build_model("demo_sam")

    class OtherDecoder(MaskDecoder):
        pass

    m.mask_decoder.__class__ = OtherDecoder
    with pytest.raises(ValueError, match="OtherDecoder"):
        decoder_graph(m)


# -- numpy preprocessing and focus box against their PyTorch originals ------------------------
@pytest.mark.parametrize("convention", ["sam", "focsam"])
@pytest.mark.parametrize("size", [(321, 481), (100, 37), (256, 256), (700, 300)])
def test_numpy_preprocessing_equals_pytorch(convention, size):
    rng = np.random.default_rng(sum(size))
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    tf, nf = Frame.create(convention, size, 256), npf.NpFrame.create(convention, size, 256)
    assert (nf.padded_size, nf.input_size) == (tf.padded_size, tf.input_size)
    want = image_to_tensor(rgb, tf, mean, std).numpy()
    got = nf.image_to_input(rgb, mean.numpy(), std.numpy())
    assert np.abs(got - want).max() <= 1e-4
    xy = rng.uniform(0, min(size), (5, 2))
    assert np.allclose(nf.coords_to_model(xy), tf.coords_to_model(xy), rtol=0, atol=1e-9)
    low = torch.from_numpy(rng.normal(0, 5, (1, 1, 64, 64)).astype(np.float32))
    want = tf.logits_to_original(low)[0, 0].numpy()
    got = nf.logits_to_original(low[0, 0].numpy())
    assert got.shape == want.shape == size
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("seed", range(6))
def test_numpy_focus_box_and_grid_equal_pytorch(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(-2 if seed else -50, 3, (64, 64)).astype(np.float32)
    if seed % 2:
        logits[10:30, 5:50] += 8  # a blob
    ratio = (1.4, 1.0) if seed == 3 else 1.4
    t = torch.from_numpy(logits)[None, None]
    want = focus_box(t, 256, ratio)[0].numpy()
    got = npf.focus_box(logits, 256, ratio)
    assert got.tolist() == want.tolist()
    grid = npf.focus_grid(got, 256, 16)
    assert np.array_equal(grid, box_mask(torch.from_numpy(want)[None], 256, 16).numpy())
    assert np.array_equal(grid, focus_box_mask(t, 256, ratio, grid_size=16).numpy())
