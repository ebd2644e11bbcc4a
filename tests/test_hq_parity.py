"""Parity with the official HQ-SAM package (segment-anything-hq), same weights, real images:
the bar and the helpers of the SAM parity tests (test_parity_sam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_
from official_hq import HQSamPredictor, build_official_hq_sam
from test_parity_sam import _clicks_from_mask, assert_same_masks

from steadysam import Predictor, SamConfig, build_sam
from steadysam.models.config import HQConfig

# As test_parity_sam: 1024 input, a window that does not divide the grid, two global blocks;
# the first global block (1) is not the last, so the early feature is a distinct tensor.
ARCH = dict(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=14)
DEC = dict(prompt_embed_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64)
CONFIG = SamConfig(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1, 3),
    encoder_window_size=14,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
    iou_head_hidden_dim=64,
    hq=HQConfig(),
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    official = randomize_(build_official_hq_sam(**ARCH, **DEC), std=0.1)
    ours = build_sam(CONFIG)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


@pytest.fixture(scope="module")
def predictors(models, real_images):
    """(official, ours) predictors per real image, each image encoded once."""
    official, ours = models
    out = []
    for name, image in real_images:
        ref = HQSamPredictor(official)
        ref.set_image(image)
        pred = Predictor(ours)
        pred.set_image(image)
        out.append((name, image, ref, pred))
    return out


def test_embeddings_and_early_features_match_official(predictors):
    for name, _, ref, pred in predictors:
        assert pred.original_size == tuple(ref.original_size), name
        assert pred.input_size == tuple(ref.input_size), name
        a, b = ref.get_image_embedding(), pred.get_image_embedding()
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4, name
        # Official: the list of every global block's output; HQ-SAM reads the first.
        early_ref = ref.interm_features[0]
        assert pred.early_features.shape == early_ref.shape == (1, 64, 64, 64)
        assert (early_ref - pred.early_features).abs().max().item() <= 1e-4, name
        assert early_ref.std().item() > 0.1  # non-degenerate
        # It is block 1's output, not the encoder's last block (index 3).
        assert (early_ref - ref.interm_features[1]).abs().max().item() > 0.1


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("hq_token_only", [False, True])
def test_click_sequence_matches_official(predictors, multimask, hq_token_only):
    """Same clicks, previous low-res logits fed back as mask prompt, as interactive use does."""
    for k, (name, image, ref, pred) in enumerate(predictors):
        h, w = image.shape[:2]
        gt = np.zeros((h, w), bool)
        gt[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = True
        clicks = _clicks_from_mask(gt, 4, seed=k)
        prev_a = prev_b = None
        for i in range(1, len(clicks) + 1):
            pc = np.array([c[:2] for c in clicks[:i]], dtype=float)
            pl = np.array([int(c[2]) for c in clicks[:i]])
            kw = dict(multimask_output=multimask, return_logits=True, hq_token_only=hq_token_only)
            fa, ia, la = ref.predict(pc, pl, None, prev_a, **kw)
            fb, ib, lb = pred.predict(pc, pl, None, prev_b, **kw)
            assert la.shape == lb.shape == (1, 256, 256)  # HQ-SAM: always one mask
            assert np.abs(la - lb).max() <= 1e-3, (name, i)
            assert np.abs(ia - ib).max() <= 1e-3, (name, i)
            assert fa.shape == fb.shape == (1, h, w)
            assert np.abs(fa - fb).max() <= 1e-3, (name, i)
            assert_same_masks(fa, fb)
            prev_a, prev_b = la, lb
            assert 0 < (fa[0] > 0).sum() < h * w, "degenerate test weights: empty or full mask"


def test_hq_token_only_changes_the_answer(predictors):
    """The two outputs differ (so the parity above tests both), and the default is the
    official predictor's (False)."""
    name, image, ref, pred = predictors[0]
    pc, pl = np.array([[image.shape[1] // 2, image.shape[0] // 2]]), np.array([1])
    _, _, both = pred.predict(pc, pl, return_logits=True, hq_token_only=False)
    _, _, hq = pred.predict(pc, pl, return_logits=True, hq_token_only=True)
    _, _, default = pred.predict(pc, pl, return_logits=True)
    _, _, official_default = ref.predict(pc, pl, return_logits=True)
    assert np.abs(both - hq).max() > 0.1
    assert np.array_equal(default, both)
    assert np.abs(official_default - default).max() <= 1e-3


def test_box_prompt_matches_official(predictors):
    for name, image, ref, pred in predictors[:2]:
        box = np.array([20, 30, image.shape[1] - 40, image.shape[0] - 10])
        for hq_token_only in (False, True):
            kw = dict(multimask_output=True, return_logits=True, hq_token_only=hq_token_only)
            fa, ia, la = ref.predict(box=box, **kw)
            fb, ib, lb = pred.predict(box=box, **kw)
            assert np.abs(la - lb).max() <= 1e-3, name
            assert np.abs(ia - ib).max() <= 1e-3, name
            assert_same_masks(fa, fb)


def test_batched_predict_torch_matches_official(predictors):
    """Several prompts at once (predict_torch): the per-image fusion is shared by the batch."""
    name, image, ref, pred = predictors[2]
    h, w = image.shape[:2]
    rng = np.random.default_rng(5)
    xy = np.stack([rng.integers(0, w, 6), rng.integers(0, h, 6)], 1).reshape(3, 2, 2)
    coords = torch.as_tensor(ref.transform.apply_coords(xy.astype(float), (h, w)))
    labels = torch.tensor([[1, 1], [1, 0], [0, 1]])
    kw = dict(multimask_output=True, return_logits=True)
    fa, ia, la = ref.predict_torch(coords.float(), labels, **kw)
    fb, ib, lb = pred.predict_torch(coords, labels, **kw)
    assert la.shape == lb.shape == (3, 1, 256, 256)
    assert (la - lb).abs().max().item() <= 1e-3
    assert (ia - ib).abs().max().item() <= 1e-3
    for a, b in zip(fa.numpy(), fb.numpy(), strict=True):
        assert_same_masks(a, b)


def test_object_session_matches_official_single_mask(predictors):
    """The per-object session on HQ-SAM is the official predictor with prev logits fed back
    (the model's hq_token_only default: the official False)."""
    name, image, ref, pred = predictors[1]
    obj = pred.new_object(mode="focsam")
    h, w = image.shape[:2]
    gt = np.zeros((h, w), bool)
    gt[h // 3 :, : w // 2] = True
    prev = None
    clicks = _clicks_from_mask(gt, 5, seed=3)
    for i, (x, y, pos) in enumerate(clicks, 1):
        pc = np.array([c[:2] for c in clicks[:i]], dtype=float)
        pl = np.array([int(c[2]) for c in clicks[:i]])
        fa, _, la = ref.predict(pc, pl, None, prev, multimask_output=False, return_logits=True)
        mb = obj.click(x, y, pos)
        assert np.abs(la - obj.logits[0].numpy()).max() <= 1e-3
        assert_same_masks(fa[0], np.where(mb, 1.0, -1.0))
        prev = la
