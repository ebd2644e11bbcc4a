"""The interactive predictor: FocSAM protocol, per-object state, caching and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_

from steadysam import Predictor, build_model
from steadysam.preprocess import Frame


@pytest.fixture(scope="module")
def focsam():
    torch.manual_seed(0)
    return randomize_(build_model("focsam_tiny", random_init=True), std=0.2, seed=1)


@pytest.fixture()
def image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    img[40:110, 60:150] = (220, 40, 40)
    return img


class RefineSpy:
    def __init__(self, model):
        self.calls = []
        self._orig = model.refine

        def spy(embeddings, coarse, token, expand_ratio=None):
            self.calls.append((embeddings.clone(), coarse.clone(), token.clone()))
            return self._orig(embeddings, coarse, token, expand_ratio)

        model.refine = spy
        self.model = model

    def restore(self):
        del self.model.refine


@torch.inference_mode()
def _manual_decode(model, emb, frame, clicks, prev):
    xy = torch.as_tensor(frame.coords_to_model(np.array([c[:2] for c in clicks], float)))
    points = (xy[None].float(), torch.tensor([[int(c[2]) for c in clicks]]))
    return model.decode(emb, points, None, prev, multimask_output=False, return_tokens=True)


def test_focsam_protocol_refines_once_at_second_click(focsam, image):
    p = Predictor(focsam)
    p.set_image(image)
    F = p.get_image_embedding().clone()
    spy = RefineSpy(focsam)
    try:
        obj = p.new_object()
        clicks = [(100, 70, True), (20, 20, False), (140, 100, True), (70, 50, True)]
        prev, emb = None, F
        for i, c in enumerate(clicks):
            obj.click(*c)
            if i == 1:
                # Coarse pass on the ORIGINAL embedding with the 2 clicks and click-1 logits.
                coarse, _, token = _manual_decode(focsam, F, p.frame, clicks[:2], prev)
                assert len(spy.calls) == 1
                e, c_logits, t = spy.calls[0]
                assert torch.equal(e, F)
                assert torch.allclose(c_logits, coarse) and torch.allclose(t, token)
                with torch.inference_mode():
                    emb = focsam.refine(F, coarse, token)
                assert not torch.allclose(emb, F)
            expected, _, _ = _manual_decode(focsam, emb, p.frame, clicks[: i + 1], prev)
            assert torch.allclose(obj.logits, expected, atol=1e-5), i
            prev = expected
            assert obj.refined == (i >= 1)
        assert len(spy.calls) == 2  # the check above called refine once more itself
        assert torch.equal(p.get_image_embedding(), F)  # the image embedding is never replaced
    finally:
        spy.restore()


def test_undo_across_refine_returns_to_unrefined_state(focsam, image):
    p = Predictor(focsam)
    p.set_image(image)
    obj = p.new_object()
    m1 = obj.click(100, 70)
    l1 = obj.logits.clone()
    obj.click(20, 20, positive=False)
    assert obj.refined
    back = obj.undo()
    assert not obj.refined and (back == m1).all() and torch.equal(obj.logits, l1)
    assert obj.clicks == [(100.0, 70.0, True)]
    spy = RefineSpy(focsam)
    try:
        obj.click(30, 30, positive=False)
        assert len(spy.calls) == 1 and obj.refined  # re-refined with the new 2nd click
    finally:
        spy.restore()
    assert obj.undo() is not None and obj.undo() is None  # back at the start
    obj.reset()
    assert obj.clicks == [] and obj.logits is None


def test_refine_at_is_configurable_and_can_be_disabled(focsam, image):
    p = Predictor(focsam)
    p.set_image(image)
    spy = RefineSpy(focsam)
    try:
        obj = p.new_object(refine_at=2)
        obj.click(100, 70)
        obj.click(20, 20, False)
        assert not spy.calls
        obj.click(140, 100)
        assert len(spy.calls) == 1
        off = p.new_object(refine_at=None)
        for c in [(100, 70), (20, 20), (140, 100)]:
            off.click(*c)
        assert len(spy.calls) == 1 and not off.refined
    finally:
        spy.restore()


def test_objects_share_embedding_but_keep_their_own_refinement(focsam, image):
    p = Predictor(focsam)
    p.set_image(image)
    a, b = p.new_object(), p.new_object()
    a.click(100, 70)
    a.click(20, 20, False)
    b.click(30, 120)
    assert a.refined and not b.refined
    b.click(180, 10, False)
    ea, eb = a._state.embedding, b._state.embedding
    assert not torch.allclose(ea, eb)
    # A new image does not disturb sessions bound to the old one: the next click gives what it
    # gives without the switch (a session reading the predictor's current image would differ).
    ref = Predictor(focsam)
    ref.set_image(image)
    r = ref.new_object()
    for c in [(100, 70), (20, 20, False), (120, 80)]:
        expected = r.click(*c)
    p.set_image(image[::-1].copy())
    m = a.click(120, 80)
    assert m.shape == (150, 200)
    assert np.array_equal(m, expected) and torch.equal(a.logits, r.logits)


def test_embedding_cache_memory_and_disk(focsam, image, tmp_path):
    p = Predictor(focsam, cache_dir=tmp_path)
    p.set_image(image)
    assert p.last_encoder_seconds > 0
    first = p.get_image_embedding().clone()
    p.set_image(image.copy())
    assert p.last_encoder_seconds == 0.0
    assert len(list(tmp_path.glob("*.pt"))) == 1
    q = Predictor(focsam, cache_dir=tmp_path)  # fresh memory, same disk
    q.set_image(image)
    assert q.last_encoder_seconds == 0.0 and torch.equal(q.get_image_embedding(), first)
    other_weights = build_model("focsam_tiny", random_init=True)
    other = Predictor(other_weights, cache_dir=tmp_path)
    other.set_image(image)
    assert other.last_encoder_seconds > 0
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # Another image of the same size (one pixel differs) is not served the cached embedding.
    edited = image.copy()
    edited[75, 100] = 255 - edited[75, 100]
    p.set_image(edited)
    assert p.last_encoder_seconds > 0 and not torch.equal(p.get_image_embedding(), first)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    p.set_image(image)  # and the first image still comes from the cache
    assert p.last_encoder_seconds == 0.0 and torch.equal(p.get_image_embedding(), first)


def test_box_prompt_and_sam_best_mode(image):
    torch.manual_seed(1)
    sam = randomize_(build_model("sam_tiny", random_init=True), std=0.2, seed=2)
    p = Predictor(sam)
    p.set_image(image)
    obj = p.new_object(mode="sam-best")
    m = obj.set_box(50, 30, 160, 120)
    assert m.shape == (150, 200) and obj.box == (50.0, 30.0, 160.0, 120.0)
    box_logits = obj.logits[0].numpy()
    m2 = obj.click(100, 70)
    # The click keeps the box and feeds the best box logits back, as SamPredictor users do.
    masks, iou, _ = p.predict(
        np.array([[100, 70]]), np.array([1]), np.array([50, 30, 160, 120]), box_logits
    )
    best = int(np.argmax(iou))
    assert (masks[best] == m2).all()
    assert p.frame == Frame.create("sam", (150, 200), 256)


def test_bad_input_gives_clear_errors(focsam, image):
    p = Predictor(focsam)
    with pytest.raises(RuntimeError, match="set_image"):
        p.new_object()
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1, 1]]), np.array([1]))
    p.set_image(image)
    obj = p.new_object()
    with pytest.raises(ValueError, match=r"outside the image \(width 200, height 150\)"):
        obj.click(200, 10)
    with pytest.raises(ValueError, match="outside"):
        obj.click(-1, 10)
    with pytest.raises(ValueError, match="empty box"):
        obj.set_box(10, 10, 10, 50)
    with pytest.raises(ValueError, match="outside the image"):
        obj.set_box(300, 10, 400, 50)
    with pytest.raises(ValueError, match="mode"):
        p.new_object(mode="best")
    with pytest.raises(ValueError, match="point_labels"):
        p.predict(np.array([[1, 1]]))
    assert obj.clicks == []  # failed interactions leave no trace


# -- bad input: every entry point checks its arguments before the model runs -------------------
# The image fixture is 150 (H) x 200 (W); sam_tiny takes a 1 x 64 x 64 mask prompt.
H, W = 150, 200
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(1)
    return randomize_(build_model("sam_tiny", random_init=True), std=0.2, seed=2)


@pytest.fixture(scope="module")
def sam_pred(sam):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    img[40:110, 60:150] = (220, 40, 40)
    p = Predictor(sam)
    p.set_image(img)
    return p


def _pts(*xy):
    return np.array(xy, dtype=float)


ONE = np.array([1])


@pytest.mark.parametrize(
    "coords, labels, pattern",
    [
        (
            _pts((200, 10)),
            ONE,
            r"point_coords\[0\] = \(200.0, 10.0\) is outside the image "
            r"\(width 200, height 150\)",
        ),  # x == width: outside, as ObjectSession.click
        (_pts((10, 150)), ONE, r"point_coords\[0\] = \(10.0, 150.0\) is outside"),
        (_pts((-1, 10)), ONE, r"point_coords\[0\] = \(-1.0, 10.0\) is outside"),
        (_pts((10, -0.5)), ONE, r"point_coords\[0\] .* is outside"),
        (_pts((10, 10), (900, 12)), np.array([1, 0]), r"point_coords\[1\] = \(900.0, 12.0\)"),
        (_pts((1e30, 10)), ONE, r"point_coords\[0\] .* is outside"),
        (_pts((NAN, 10)), ONE, r"point_coords\[0\] = \(nan, 10.0\) is not finite"),
        (_pts((10, INF)), ONE, r"point_coords\[0\] .* is not finite"),
        (_pts((10, 10), (-INF, 5)), np.array([1, -1]), r"point_coords\[1\] .* is not finite"),
    ],
)
def test_predict_rejects_points_outside_the_image_or_not_finite(sam_pred, coords, labels, pattern):
    with pytest.raises(ValueError, match=pattern):
        sam_pred.predict(coords, labels)


@pytest.mark.parametrize(
    "labels, pattern",
    [
        ([2], r"point_labels\[0\] = 2 is not a point label.*box corners"),
        ([3], r"point_labels\[0\] = 3 .*box corners"),
        (
            [1, -2],
            r"point_labels\[1\] = -2 is not a point label: use 1 \(foreground\), "
            r"0 \(background\) or -1",
        ),
        ([0.5], r"point_labels\[0\] = 0.5 is not"),
        ([NAN], r"point_labels\[0\] = nan is not"),
        ([255], r"point_labels\[0\] = 255 is not"),
    ],
)
def test_predict_rejects_labels_outside_sams_set(sam_pred, labels, pattern):
    coords = _pts(*[(10 + i, 10) for i in range(len(labels))])
    with pytest.raises(ValueError, match=pattern):
        sam_pred.predict(coords, np.array(labels))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"point_coords": _pts((10, 10))}, r"point_labels must be supplied with point_coords"),
        ({"point_labels": ONE}, r"point_labels given without point_coords"),
        ({"point_labels": ONE, "box": np.array([10, 10, 50, 50])}, r"point_labels given without"),
        (
            {"point_coords": _pts((10, 10), (20, 20)), "point_labels": ONE},
            r"point_coords has 2 points but point_labels has 1 labels",
        ),
        (
            {"point_coords": _pts((10, 10)), "point_labels": np.array([1, 0])},
            r"point_coords has 1 points but point_labels has 2",
        ),
        (
            {"point_coords": np.array([10.0, 10.0]), "point_labels": ONE},
            r"point_coords must be an N x 2 array .* got shape \(2,\)",
        ),
        (
            {"point_coords": np.array([[10.0, 10.0, 1.0]]), "point_labels": ONE},
            r"point_coords must be an N x 2 .*\(1, 3\)",
        ),
        (
            {"point_coords": np.array([[[10.0, 10.0]]]), "point_labels": ONE},
            r"point_coords must be an N x 2 .*\(1, 1, 2\)",
        ),
        ({"point_coords": np.float64(10.0), "point_labels": ONE}, r"point_coords must be an N x 2"),
        (
            {"point_coords": _pts((10, 10)), "point_labels": np.array([[1]])},
            r"point_labels must be a length-N array .*\(1, 1\)",
        ),
        (
            {"point_coords": _pts((10, 10)), "point_labels": np.array(1)},
            r"point_labels must be a length-N array .*\(\)",
        ),
        (
            {"point_coords": [[10, 10], [20]], "point_labels": [1, 1]},
            r"point_coords is not a regular array",
        ),
    ],
)
def test_predict_rejects_malformed_point_arrays(sam_pred, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sam_pred.predict(**kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"point_coords": np.array([["10", "10"]]), "point_labels": ONE}, "point_coords"),
        ({"point_coords": [[None, 10]], "point_labels": ONE}, "point_coords"),
        ({"point_coords": np.array([[True, False]]), "point_labels": ONE}, "point_coords"),
        ({"point_coords": np.array([[10 + 1j, 10]]), "point_labels": ONE}, "point_coords"),
        ({"point_coords": "10,10", "point_labels": ONE}, "point_coords"),
        ({"point_coords": _pts((10, 10)), "point_labels": np.array(["fg"])}, "point_labels"),
        ({"point_coords": _pts((10, 10)), "point_labels": [object()]}, "point_labels"),
        ({"box": np.array(["0", "0", "5", "5"])}, "box"),
        ({"box": {"x0": 0}}, "box"),
        ({"mask_input": np.zeros((1, 64, 64), np.int32)}, "mask_input"),
        ({"mask_input": np.zeros((1, 64, 64), bool)}, "mask_input"),
        ({"mask_input": np.zeros((1, 64, 64), np.uint8)}, "mask_input"),
        ({"mask_input": np.full((1, 64, 64), "a")}, "mask_input"),
    ],
)
def test_predict_rejects_non_numeric_input_with_type_error(sam_pred, kwargs, name):
    with pytest.raises(TypeError, match=rf"^{name} must hold"):
        sam_pred.predict(**kwargs)


@pytest.mark.parametrize(
    "box, pattern",
    [
        ([30, 10, 20, 50], r"inverted box \(30.0, 10.0, 20.0, 50.0\): need x0 <= x1 and y0 <= y1"),
        ([10, 50, 20, 10], r"inverted box"),
        ([W, H, 0, 0], r"inverted box"),
        ([NAN, 10, 20, 50], r"box \(nan, 10.0, 20.0, 50.0\) is not finite"),
        ([10, 10, INF, 50], r"box .* is not finite"),
        (
            [300, 10, 400, 50],
            r"box \(300.0, 10.0, 400.0, 50.0\) lies outside the image "
            r"\(width 200, height 150\)",
        ),
        ([W, 0, W + 10, 10], r"box .* lies outside the image"),  # starts on the right border
        ([10, 200, 50, 300], r"box .* lies outside the image"),
        ([-50, -50, -10, -10], r"box .* lies outside the image"),
        ([10, 10, 50], r"box must be one \(x0, y0, x1, y1\) box of shape 4 or 1 x 4, .*\(3,\)"),
        ([[10, 10, 50, 50], [0, 0, 5, 5]], r"box must be one .*\(2, 4\)"),
        ([[[10, 10, 50, 50]]], r"box must be one .*\(1, 1, 4\)"),
        ([10, 10, 50, 50, 1, 1, 2, 2], r"box must be one .*\(8,\)"),
        ([[10, 10], [50, 50]], r"box must be one .*\(2, 2\)"),
        ([[10, 10, 50, 50], [0, 0]], r"box is not a regular array"),
    ],
)
def test_predict_rejects_bad_boxes(sam_pred, box, pattern):
    with pytest.raises(ValueError, match=pattern):
        sam_pred.predict(box=box)  # a plain list, as np.asarray reads it


@pytest.mark.parametrize(
    "mask, pattern",
    [
        (np.zeros((64, 64), np.float32), r"mask_input must have shape 1 x 64 x 64 .*\(64, 64\)"),
        (np.zeros((1, 1, 64, 64), np.float32), r"mask_input must have shape .*\(1, 1, 64, 64\)"),
        (np.zeros((2, 64, 64), np.float32), r"mask_input must have shape .*\(2, 64, 64\)"),
        (np.zeros((3, 64, 64), np.float32), r"mask_input must have shape .*\(3, 64, 64\)"),
        (np.zeros((1, 256, 256), np.float32), r"mask_input must have shape .*\(1, 256, 256\)"),
        (np.zeros((1, 64, 32), np.float32), r"mask_input must have shape .*\(1, 64, 32\)"),
        (np.zeros((1, 0, 0), np.float32), r"mask_input must have shape .*\(1, 0, 0\)"),
        (np.zeros(64 * 64, np.float32), r"mask_input must have shape .*\(4096,\)"),
        (np.float32(0.0), r"mask_input must have shape .*\(\)"),
        (np.full((1, 64, 64), NAN, np.float32), r"mask_input contains NaN or infinite"),
        (np.where(np.eye(64)[None] > 0, INF, 0.0), r"mask_input contains NaN or infinite"),
        (np.where(np.eye(64)[None] > 0, -INF, 0.0).astype(np.float16), r"mask_input contains"),
    ],
)
def test_predict_rejects_malformed_mask_input(sam_pred, mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        sam_pred.predict(_pts((10, 10)), ONE, mask_input=mask)


def _t(*xy):
    return torch.tensor(xy, dtype=torch.float)


@pytest.mark.parametrize(
    "args, exc, pattern",
    [
        ((np.zeros((1, 1, 2)), np.ones((1, 1))), TypeError, r"point_coords must be a torch.Tensor"),
        ((_t([[5, 5]]), [[1]]), TypeError, r"point_labels must be a torch.Tensor"),
        ((None, None, [[0, 0, 5, 5]]), TypeError, r"boxes must be a torch.Tensor"),
        ((None, None, None, np.zeros((1, 1, 64, 64))), TypeError, r"mask_input must be a torch"),
        ((_t([[5, 5]]), None), ValueError, r"point_labels must be supplied with point_coords"),
        ((None, torch.ones(1, 1)), ValueError, r"point_labels given without point_coords"),
        ((_t([5, 5]), torch.ones(1)), ValueError, r"point_labels must be a B x N tensor"),
        ((_t([5, 5]), torch.ones(1, 1)), ValueError, r"point_coords must be a B x N x 2 tensor"),
        (
            (_t([[5, 5]]), torch.ones(1, 2)),
            ValueError,
            r"point_coords has 1 x 1 points but "
            r"point_labels has 1 x 2 labels",
        ),
        ((_t([[5, 5]], [[6, 6]]), torch.ones(1, 2)), ValueError, r"point_coords has 2 x 1"),
        ((_t([[5, 5]]), torch.full((1, 1), 2)), ValueError, r"point_labels\[0, 0\] = 2 .*box"),
        # 150 x 200 in sam_tiny's 256 frame is 192 x 256: y = 200 is in the padding.
        (
            (_t([[5, 5], [10, 200]]), torch.ones(1, 2)),
            ValueError,
            r"point_coords\[0, 1\] = "
            r"\(10.0, 200.0\) is outside the image's extent in the model input frame "
            r"\(width 256.0, height 192.0\)",
        ),
        ((_t([[NAN, 5]]), torch.ones(1, 1)), ValueError, r"point_coords\[0, 0\] .* not finite"),
        ((None, None, torch.tensor([5.0, 5, 10, 10])), ValueError, r"boxes must be a B x 4"),
        ((None, None, _t([[5, 5, 1, 1]])), ValueError, r"inverted boxes\[0\]"),
        ((None, None, _t([5, 5, 10, 10], [5, 5, NAN, 10])), ValueError, r"boxes\[1\] .* finite"),
        ((None, None, _t([[5, 195, 10, 250]])), ValueError, r"boxes\[0\] .* lies outside"),
        (
            (None, None, None, torch.zeros(1, 64, 64)),
            ValueError,
            r"mask_input must have shape "
            r"B x 1 x 64 x 64",
        ),
        ((None, None, None, torch.zeros(1, 1, 64, 64, dtype=torch.int)), TypeError, r"mask_input"),
        (
            (_t([[5, 5]], [[6, 6]]), torch.ones(2, 1), _t([[5, 5, 10, 10]])),
            ValueError,
            r"batch sizes differ \(point_coords 2, boxes 1\)",
        ),
        (
            (_t([[5, 5]]), torch.ones(1, 1), None, torch.zeros(2, 1, 64, 64)),
            ValueError,
            r"batch sizes differ \(point_coords 1, mask_input 2\)",
        ),
    ],
)
def test_predict_torch_rejects_bad_input(sam_pred, args, exc, pattern):
    with pytest.raises(exc, match=pattern):
        sam_pred.predict_torch(*args)


@pytest.mark.parametrize(
    "image, pattern",
    [
        (None, r"unsupported image type NoneType"),
        ([[0, 0, 0]], r"unsupported image type list"),
        (np.zeros(10, np.uint8), r"unsupported image shape \(10,\)"),
        (np.zeros((1, 20, 20, 3), np.uint8), r"unsupported image shape \(1, 20, 20, 3\)"),
        (np.zeros((3, 20, 20), np.uint8), r"unsupported image shape \(3, 20, 20\)"),
        (np.zeros((20, 20, 2), np.uint8), r"unsupported image shape \(20, 20, 2\)"),
        (np.zeros((20, 20, 5), np.uint8), r"unsupported image shape \(20, 20, 5\)"),
        (np.zeros((0, 20, 3), np.uint8), r"empty image of shape \(0, 20, 3\)"),
        (np.zeros((20, 0), np.uint8), r"empty image of shape \(20, 0, 3\)"),
        (np.zeros((20, 20, 3), np.complex64), r"unsupported image dtype complex64"),
        (np.full((20, 20, 3), None, object), r"unsupported image dtype object"),
        (np.full((20, 20, 3), NAN, np.float32), r"image contains NaN or infinite values"),
        (np.full((20, 20), INF), r"image contains NaN or infinite values"),
    ],
)
def test_set_image_rejects_bad_images_and_keeps_the_current_one(sam, image, pattern):
    p = Predictor(sam)
    p.set_image(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=pattern):
        p.set_image(image)
    with pytest.raises(ValueError, match=r"image_format must be 'RGB' or 'BGR', not 'rgb'"):
        p.set_image(np.zeros((30, 40, 3), np.uint8), image_format="rgb")
    assert p.original_size == (30, 40)


def test_set_image_converts_only_unambiguous_layouts(sam, image):
    """Grayscale -> RGB, alpha dropped, any strides: the conversions load_image makes for
    every entry point (sessions included)."""
    p = Predictor(sam, cache_size=0)
    gray = image[:, :, 0]
    p.set_image(np.repeat(gray[:, :, None], 3, axis=2))
    ref = p.get_image_embedding().clone()
    for variant in (gray, gray[:, :, None], np.asfortranarray(gray)):
        p.set_image(variant)
        assert torch.equal(p.get_image_embedding(), ref)
    p.set_image(image)
    ref = p.get_image_embedding().clone()
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=2)
    strided = np.ascontiguousarray(image[:, ::-1])[:, ::-1]
    assert not strided.flags.c_contiguous
    for variant, fmt in ((rgba, "RGB"), (strided, "RGB"), (image[:, :, ::-1], "BGR")):
        p.set_image(variant, image_format=fmt)
        assert torch.equal(p.get_image_embedding(), ref)


@pytest.mark.parametrize(
    "features, size, exc, pattern",
    [
        ([[0.0]], (H, W), TypeError, r"features must be a torch.Tensor embedding, got list"),
        (
            torch.zeros(1, 64, 16, 16, dtype=torch.int),
            (H, W),
            TypeError,
            r"features must be a floating-point tensor, got torch.int32",
        ),
        (
            torch.zeros(64, 16, 16),
            (H, W),
            ValueError,
            r"features must have shape \(1, 64, 16, 16\) for this model .*got \(64, 16, 16\)",
        ),
        (torch.zeros(1, 256, 64, 64), (H, W), ValueError, r"features must have shape .*256, 64"),
        (torch.zeros(1, 64, 8, 8), (H, W), ValueError, r"features must have shape .*8, 8"),
        (torch.zeros(2, 64, 16, 16), (H, W), ValueError, r"features must have shape .*\(2, 64"),
        (torch.zeros(1, 32, 16, 16), (H, W), ValueError, r"features must have shape .*\(1, 32"),
        (torch.full((1, 64, 16, 16), NAN), (H, W), ValueError, r"features contains NaN"),
        (
            torch.zeros(1, 64, 16, 16),
            (0, W),
            ValueError,
            r"original_size must be \(H, W\), two positive integers, got \(0, 200\)",
        ),
        (torch.zeros(1, 64, 16, 16), (-1, W), ValueError, r"original_size .*\(-1, 200\)"),
        (torch.zeros(1, 64, 16, 16), (H,), ValueError, r"original_size .*\(150,\)"),
        (torch.zeros(1, 64, 16, 16), (H, W, 3), ValueError, r"original_size .*\(150, 200, 3\)"),
        (torch.zeros(1, 64, 16, 16), (150.5, W), ValueError, r"original_size .*150.5"),
        (torch.zeros(1, 64, 16, 16), (True, W), ValueError, r"original_size .*True"),
        (torch.zeros(1, 64, 16, 16), "150x200", ValueError, r"original_size .*'150x200'"),
        (torch.zeros(1, 64, 16, 16), None, ValueError, r"original_size .*None"),
    ],
)
def test_set_embedding_rejects_wrong_embeddings_and_sizes(sam, features, size, exc, pattern):
    p = Predictor(sam)
    p.set_image(np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(exc, match=pattern):
        p.set_embedding(features, size)
    assert p.original_size == (30, 40)  # the current image stays set


def test_set_embedding_round_trip_gives_the_same_masks(sam_pred, sam):
    q = Predictor(sam)
    emb = sam_pred.get_image_embedding()
    q.set_embedding(emb.numpy().astype(np.float64), (np.int64(H), W))  # array, float64: converted
    args = (_pts((100, 70)), ONE)
    a, b = sam_pred.predict(*args, return_logits=True), q.predict(*args, return_logits=True)
    assert q.get_image_embedding().dtype == emb.dtype
    for x, y in zip(a, b, strict=True):
        assert np.allclose(x, y, atol=1e-5)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda o: o.click(W, 10), ValueError, r"click \(200.0, 10.0\) is outside the image"),
        (lambda o: o.click(10, H), ValueError, r"click .* is outside the image"),
        (lambda o: o.click(NAN, 10), ValueError, r"click \(nan, 10.0\) is not finite"),
        (lambda o: o.click(10, INF), ValueError, r"click .* is not finite"),
        (lambda o: o.click("10", 10), TypeError, r"click must hold real numbers"),
        (lambda o: o.click(None, 10), TypeError, r"click must hold real numbers"),
        (lambda o: o.set_box(20, 10, 10, 50), ValueError, r"inverted box \(20.0, 10.0, 10.0"),
        (lambda o: o.set_box(10, 10, 50, 10), ValueError, r"empty box .*need x1 > x0 and y1 > y0"),
        (lambda o: o.set_box(NAN, 10, 50, 50), ValueError, r"box \(nan, .* is not finite"),
        (lambda o: o.set_box(-20, 10, 0, 50), ValueError, r"box .* lies outside the image"),
        (lambda o: o.set_box("a", 10, 50, 50), TypeError, r"box must hold real numbers"),
    ],
)
def test_session_uses_the_same_checks(sam_pred, call, exc, pattern):
    obj = sam_pred.new_object(mode="sam-best")
    with pytest.raises(exc, match=pattern):
        call(obj)
    assert obj.clicks == [] and obj.box is None


def test_valid_edge_inputs_still_give_masks(sam_pred):
    def run(**kwargs):
        masks, iou, low = sam_pred.predict(**kwargs)
        assert masks.shape == (3, H, W) and masks.dtype == bool
        assert iou.shape == (3,) and low.shape == (3, 64, 64)
        return low

    run(point_coords=_pts((0, 0)), point_labels=ONE)
    corner = run(point_coords=_pts((W - 1, H - 1)), point_labels=ONE)
    run(point_coords=_pts((W - 0.01, H - 0.01)), point_labels=np.array([0]))
    run(point_coords=[[W - 1, H - 1]], point_labels=[True])  # lists, bool label
    # The same point as int, float32 or as a CPU tensor gives the same logits.
    for pc in (np.array([[W - 1, H - 1]]), np.array([[W - 1, H - 1]], np.float32)):
        assert np.array_equal(run(point_coords=pc, point_labels=[1.0]), corner)
    assert np.array_equal(
        run(point_coords=torch.tensor([[W - 1.0, H - 1.0]]), point_labels=torch.tensor([1])),
        corner,
    )
    # -1 pads: ignored by the model, wherever the (finite) point lies.
    pad = run(point_coords=_pts((W - 1, H - 1), (-5, 1e4)), point_labels=np.array([1, -1]))
    assert np.allclose(
        pad,
        run(point_coords=_pts((W - 1, H - 1), (0, 0)), point_labels=np.array([1, -1])),
        atol=1e-5,
    )
    run(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0))  # no points, as SamPredictor
    run()  # no prompt at all, as SamPredictor
    whole = run(box=np.array([0, 0, W, H]))
    assert np.array_equal(run(box=np.array([[0, 0, W, H]])), whole)  # 1 x 4 as SamPredictor
    run(box=np.array([0, 0, W - 1, H - 1]))
    run(box=np.array([-10, -10, 50, 50]))  # partly outside: allowed, as ObjectSession.set_box
    run(box=np.array([0, 0, 0, 0]))  # mask_box of a one-pixel object (x0 == x1)
    run(box=np.array([W - 1, 20, W - 1, 60]))  # a one-pixel-wide column on the right border
    run(mask_input=np.zeros((1, 64, 64), np.float32))
    run(mask_input=corner[:1], point_coords=_pts((0, 0)), point_labels=ONE)
    run(mask_input=torch.zeros(1, 64, 64, dtype=torch.float16), box=[0, 0, W, H])
    masks, _, _ = sam_pred.predict(_pts((W - 1, H - 1)), ONE, return_logits=True)
    assert masks.dtype == np.float32


def test_predict_torch_batches_like_predict(sam_pred):
    frame = sam_pred.frame
    pts = [(0.0, 0.0), (W - 1.0, H - 1.0)]
    coords = torch.as_tensor(frame.coords_to_model(np.array(pts)), dtype=torch.float64)[:, None]
    labels = torch.tensor([[1], [0]])
    box = torch.as_tensor(frame.boxes_to_model(np.array([[0.0, 0.0, W, H]] * 2)))[:, None]
    masks, iou, low = sam_pred.predict_torch(coords, labels, box, multimask_output=False)
    assert masks.shape == (2, 1, H, W) and iou.shape == (2, 1) and low.shape == (2, 1, 64, 64)
    for k, (pt, lab) in enumerate(zip(pts, (1, 0), strict=True)):
        _, _, one = sam_pred.predict(_pts(pt), np.array([lab]), [0, 0, W, H], None, False)
        assert np.allclose(low[k].numpy(), one, atol=1e-4)
