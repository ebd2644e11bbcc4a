"""bf16 inference: ``Predictor(model, precision="bf16")``, the hardware check, the embedding
cache per precision and ``--precision`` in the evaluation runs.

On a CPU without bf16 instructions the tests run bf16 in emulation
(``STEADYSAM_BF16_EMULATION=1``): the numerics are bf16's, only slower.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import steadysam.precision as precision
from steadysam import Predictor, build_model
from steadysam.cli_common import PRECISIONS
from steadysam.eval.runner import SEMANTIC_KEYS, EvalConfig, RunError, check_run_dir
from steadysam.precision import PrecisionError, check_precision, require_precision


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(precision.EMULATION_ENV, "1")


def _gt_clicks(image: np.ndarray) -> list[tuple[int, int, bool]]:
    h, w = image.shape[:2]
    return [
        (w // 2, h // 2, True),
        (w // 4, h // 3, False),
        (3 * w // 5, h // 2, True),
        (w // 3, 2 * h // 3, False),
        (w // 2 + 7, h // 2 - 9, True),
    ]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_precision_names_are_checked():
    assert PRECISIONS == precision.PRECISIONS == ("fp32", "bf16")
    for bad in ("fp16", "bfloat16", None, 32):
        with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
            check_precision(bad)
    with pytest.raises(ValueError, match="'fp16'"):
        Predictor(build_model("demo_sam"), precision="fp16")


def test_bf16_without_hardware_names_the_missing_flag(monkeypatch):
    monkeypatch.delenv(precision.EMULATION_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(PrecisionError, match="AVX512_BF16") as e:
        Predictor(build_model("demo_sam"), precision="bf16")
    assert "--precision fp32" in str(e.value) and precision.EMULATION_ENV in str(e.value)
    assert isinstance(e.value, ValueError)  # the CLI's exit code 2
    require_precision("fp32")  # always fine
    monkeypatch.setenv(precision.EMULATION_ENV, "1")
    require_precision("bf16")
    monkeypatch.delenv(precision.EMULATION_ENV)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    require_precision("bf16")
    assert precision.bf16_support("cpu") == (True, "the CPU has AVX512_BF16")


def test_bf16_session_agrees_with_fp32_on_real_images(emulate, real_images):
    model = build_model("demo_focsam")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp32, bf16 = Predictor(model), Predictor(model, precision="bf16")
    assert bf16.net.image_encoder.module.patch_embed.proj.weight.dtype == torch.bfloat16
    assert bf16.net.refiner.module.token_proj.weight.dtype == torch.bfloat16
    assert bf16.net.prompt_encoder is model.prompt_encoder  # stays fp32
    ious = []
    for name, image in real_images:
        fp32.set_image(image)
        bf16.set_image(image)
        assert fp32.get_image_embedding().dtype == torch.float32
        emb = bf16.get_image_embedding()
        assert emb.dtype == torch.bfloat16
        rel = (emb.float() - fp32.get_image_embedding()).norm() / fp32.get_image_embedding().norm()
        assert 0 < rel < 0.05, (name, float(rel))  # bf16, not fp32 and not garbage
        a, b = fp32.new_object(), bf16.new_object()
        for x, y, positive in _gt_clicks(image):
            ma, mb = a.click(x, y, positive), b.click(x, y, positive)
            assert mb.dtype == bool and mb.shape == ma.shape
            assert b.logits.dtype == torch.float32
            ious.append(_iou(ma, mb))
        assert a.refined and b.refined
        # SamPredictor API: logits and IoU predictions in fp32
        masks, iou, low = bf16.predict(np.array([[10.0, 12.0]]), np.array([1]))
        assert iou.dtype == np.float32 and low.dtype == np.float32
    assert min(ious) > 0.9 and np.mean(ious) > 0.97, ious
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


def test_bf16_hq_sam_runs_its_hq_parts_in_bf16(emulate, real_images):
    """HQ-SAM's early features, fusion and HQ token go through the bf16 twin too."""
    torch.manual_seed(0)
    model = build_model("hq_sam_tiny", random_init=True)
    fp32, bf16 = Predictor(model), Predictor(model, precision="bf16")
    assert bf16.net.mask_decoder.module.hf_token.weight.dtype == torch.bfloat16
    name, image = real_images[0]
    fp32.set_image(image)
    bf16.set_image(image)
    a, b = fp32.new_object(), bf16.new_object()
    ious = [_iou(a.click(x, y, p), b.click(x, y, p)) for x, y, p in _gt_clicks(image)]
    assert b.logits.dtype == torch.float32
    assert min(ious) > 0.8 and np.mean(ious) > 0.9, ious


def test_embedding_cache_is_per_precision(emulate, real_images, tmp_path):
    model = build_model("demo_sam")
    image = real_images[0][1]
    fp32 = Predictor(model, cache_dir=tmp_path)
    fp32.set_image(image)
    bf16 = Predictor(model, cache_dir=tmp_path, precision="bf16")
    bf16.set_image(image)
    assert bf16.last_encoder_seconds > 0  # computed, not the fp32 file
    assert len(list(tmp_path.glob("*.pt"))) == 2
    again = Predictor(model, cache_dir=tmp_path, precision="bf16")
    again.set_image(image)
    assert again.last_encoder_seconds == 0.0  # from the disk cache
    assert again.get_image_embedding().dtype == torch.bfloat16
    assert torch.equal(again.get_image_embedding(), bf16.get_image_embedding())


def test_set_embedding_takes_the_working_dtype(emulate, real_images):
    model = build_model("demo_sam")
    ref = Predictor(model)
    ref.set_image(real_images[1][1])
    bf16 = Predictor(model, precision="bf16")
    bf16.set_embedding(ref.get_image_embedding(), ref.original_size)
    assert bf16.get_image_embedding().dtype == torch.bfloat16
    obj = bf16.new_object()
    h, w = ref.original_size
    assert obj.click(w // 2, h // 2).shape == (h, w)


def test_eval_runs_record_precision_and_do_not_mix(tmp_path):
    cfg = EvalConfig(dataset="GrabCut", model="demo_sam", precision="bf16")
    cfg.validate()
    assert cfg.run_dir().name.endswith("-bf16")
    assert EvalConfig(dataset="GrabCut", model="demo_sam").run_dir().name.endswith("-20c")
    with pytest.raises(RunError, match="--precision"):
        EvalConfig(dataset="GrabCut", model="demo_sam", precision="fp16").validate()

    run = tmp_path / "run"
    run.mkdir()
    old = {k: None for k in SEMANTIC_KEYS} | {"dataset": "GrabCut", "model": "demo_sam"}
    old.pop("precision")  # a run written before precision existed: it was fp32
    (run / "config.json").write_text(
        json.dumps({"kind": "eval", "config": old, "versions": {}, "invocations": []})
    )
    (run / "parts").mkdir()
    (run / "parts" / "rank-000.jsonl").write_text('{"id": "x"}\n')
    now = dict(old, precision="fp32")
    check_run_dir(run, "eval", now, SEMANTIC_KEYS)  # resumes
    with pytest.raises(RunError, match="precision: 'fp32' there, 'bf16' now"):
        check_run_dir(run, "eval", dict(old, precision="bf16"), SEMANTIC_KEYS)


def test_cli_has_precision_on_model_commands():
    from steadysam.cli import build_parser

    parser = build_parser()
    for argv in (
        ["segment", "x.png", "--click", "1,1", "--out", "m.png"],
        ["eval", "--dataset", "GrabCut"],
        ["eval-prompts", "--dataset", "GrabCut"],
    ):
        assert parser.parse_args(argv).precision == "fp32"
        assert parser.parse_args(argv + ["--precision", "bf16"]).precision == "bf16"
        with pytest.raises(SystemExit):
            parser.parse_args(argv + ["--precision", "fp16"])
