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
    return randomize_(build_model("focsam_tiny"), std=0.2, seed=1)


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
    # A new image does not disturb sessions bound to the old one.
    p.set_image(image[::-1].copy())
    m = a.click(120, 80)
    assert m.shape == (150, 200)


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
    other = Predictor(build_model("focsam_tiny"), cache_dir=tmp_path)  # other weights
    other.set_image(image)
    assert other.last_encoder_seconds > 0
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_box_prompt_and_sam_best_mode(image):
    torch.manual_seed(1)
    sam = randomize_(build_model("sam_tiny"), std=0.2, seed=2)
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
