"""The public switch between fast paths and reference math (``steadysam.use_fast_paths``).

* both paths compute the same function on real images (SAM with padded windows, FocSAM's
  refiner, Stable-SAM's plugin), and the reference path is official segment-anything's;
* with the switch off no private op (``torch.ops.mkldnn.*``) runs at all;
* fast paths use modules as modules: a forward hook, an ``nn.Linear`` subclass and a
  LoRA-style wrapper change the output exactly as they change the reference;
* a private op that fails at call time is reported once and replaced by the reference.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import randomize_
from official_sam import SamPredictor, build_official_sam
from torch.utils._python_dispatch import TorchDispatchMode

import steadysam
import steadysam.models.common as common
from steadysam import Predictor, SamConfig, build_model, build_sam
from steadysam.fastpath import _reset_failures, failed_private_ops, reference_math
from steadysam.models.transformer import Attention


class _OpLog(TorchDispatchMode):
    """Records the namespace of every ATen-level op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.namespaces: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.namespaces.add(func.namespace)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def parity_models():
    """Official SAM and ours with the same random weights; 1024 px input, window 14 on the
    64 x 64 grid (so windows are padded), global blocks 1 and 3."""
    torch.manual_seed(0)
    dec = dict(prompt_embed_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64)
    official = randomize_(build_official_sam(64, 4, 2, (1, 3), 14, **dec), std=0.1)
    config = SamConfig(
        encoder_embed_dim=64,
        encoder_depth=4,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1, 3),
        encoder_window_size=14,
        **dec,
    )
    ours = build_sam(config)
    ours.load_state_dict(official.state_dict(), strict=True)
    return official.eval(), ours.eval()


@pytest.fixture(scope="module")
def demo():
    """The trained demo FocSAM with the demo Stable-SAM plugin: encoder, refiner, plugin."""
    return build_model("demo_stable_focsam").eval()


def _session(model: nn.Module, image: np.ndarray, clicks) -> tuple[torch.Tensor, list]:
    pred = Predictor(model)
    pred.set_image(image)
    obj = pred.new_object()
    logits = []
    for x, y, positive in clicks:
        obj.click(x, y, positive)
        logits.append(obj.logits.clone())
    return pred.get_image_embedding().clone(), logits


def _clicks(image: np.ndarray) -> list[tuple[int, int, bool]]:
    h, w = image.shape[:2]
    return [(w // 2, h // 2, True), (w // 4, h // 3, False), (3 * w // 5, h // 2, True)]


def test_switch_is_public_and_nests():
    assert steadysam.fast_paths_enabled()
    with steadysam.use_fast_paths(False):
        assert not steadysam.fast_paths_enabled()
        with steadysam.use_fast_paths(True):
            assert steadysam.fast_paths_enabled()
        assert not steadysam.fast_paths_enabled()
    with reference_math():
        assert not steadysam.fast_paths_enabled()
    assert steadysam.fast_paths_enabled()
    with pytest.raises(TypeError, match="True or False"):
        with steadysam.use_fast_paths("no"):
            pass


def test_env_var_sets_the_default():
    code = "import steadysam; print(steadysam.fast_paths_enabled())"
    env = {**os.environ, "STEADYSAM_FAST_PATHS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_reference_path_is_official_sam_and_equals_fast_path(parity_models, real_images):
    official, ours = parity_models
    for name, image in real_images:
        ref = SamPredictor(official)
        ref.set_image(image)
        official_emb = ref.get_image_embedding()
        with reference_math():
            emb_ref, logits_ref = _session(ours, image, _clicks(image))
        emb_fast, logits_fast = _session(ours, image, _clicks(image))
        assert official_emb.std() > 0.1
        assert (emb_ref - official_emb).abs().max() <= 1e-4, name
        assert (emb_fast - emb_ref).abs().max() <= 1e-4, name
        for a, b in zip(logits_ref, logits_fast, strict=True):
            assert (a - b).abs().max() <= 1e-3, name


def test_fast_and_reference_agree_on_refiner_and_plugin(demo, real_images):
    for routing in ("soft", "hard"):
        demo.set_routing(routing)
        for name, image in real_images:
            with reference_math():
                emb_ref, logits_ref = _session(demo, image, _clicks(image))
            emb_fast, logits_fast = _session(demo, image, _clicks(image))
            assert (emb_fast - emb_ref).abs().max() <= 1e-4, name
            # clicks 2 and 3 run on the refined embedding, through the plugin
            for a, b in zip(logits_ref, logits_fast, strict=True):
                assert (a - b).abs().max() <= 1e-3, (name, routing)
    demo.set_routing("soft")


def test_no_private_op_runs_with_the_switch_off(demo, real_images):
    image = real_images[0][1]
    log = _OpLog()
    with reference_math(), log:
        _session(demo, image, _clicks(image))
    assert "aten" in log.namespaces
    assert "mkldnn" not in log.namespaces, log.namespaces
    if common._ONEDNN_LINEAR is not None:  # the check sees the fused op when it is used
        log = _OpLog()
        with log:
            _session(demo, image, _clicks(image))
        assert "mkldnn" in log.namespaces


def test_no_private_op_even_when_it_would_raise(demo, real_images, monkeypatch):
    def broken(*args, **kwargs):
        raise AssertionError("private op called under reference_math()")

    monkeypatch.setattr(common, "_ONEDNN_LINEAR", broken)
    image = real_images[1][1]
    with reference_math():
        _session(demo, image, _clicks(image)[:2])


# -- modules stay modules ---------------------------------------------------------------------


class ScaledLinear(nn.Linear):
    """An nn.Linear subclass whose forward differs from its weights' plain product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.5 * super().forward(x)


class LoRA(nn.Module):
    """A LoRA-style wrapper: base(x) + scale * B(A(x))."""

    def __init__(self, base: nn.Linear, rank: int = 4, scale: float = 0.5) -> None:
        super().__init__()
        self.base = base
        self.a = nn.Linear(base.in_features, rank, bias=False)
        self.b = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.a.weight, 0.0, 0.2)
        nn.init.normal_(self.b.weight, 0.0, 0.2)
        self.scale = scale

    @property
    def weight(self) -> torch.Tensor:  # what a fast path reading .weight would (wrongly) use
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.b(self.a(x))

    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.base.in_features, self.base.out_features)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * self.b.weight @ self.a.weight)
            lin.bias.copy_(self.base.bias)
        return lin


def _sites(model: nn.Module) -> dict[str, str]:
    """Linear layers that fast paths read the weights of: encoder qkv / MLP, decoder
    cross-attention projections (token-side reassociation), refiner attention / P-DyReLU."""
    sites = {
        "encoder qkv": "image_encoder.blocks.1.attn.qkv",
        "encoder mlp": "image_encoder.blocks.0.mlp.lin1",
        "decoder k_proj": "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj",
        "decoder out_proj": "mask_decoder.transformer.layers.0.cross_attn_image_to_token.out_proj",
    }
    if model.refiner is not None:
        sites["refiner q_proj"] = "refiner.blocks.0.cls2img.attn.q_proj"
        sites["refiner k_proj"] = "refiner.blocks.0.img2cls.attn.k_proj"
        sites["refiner pixel mlp"] = "refiner.blocks.1.cls2img.relu1.pixel_mlp.2"
    return sites


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, new)


def _outputs(model: nn.Module, image: np.ndarray) -> tuple[torch.Tensor, list]:
    return _session(model, image, _clicks(image)[:2])


def _close(a, b, tol: float = 1e-3) -> bool:
    emb_a, logits_a = a
    emb_b, logits_b = b
    return bool(
        (emb_a - emb_b).abs().max() <= 1e-4
        and all((x - y).abs().max() <= tol for x, y in zip(logits_a, logits_b, strict=True))
    )


def _changed(a, b) -> bool:
    return bool((a[1][-1] - b[1][-1]).abs().max() > 1e-2)


def _random_focsam() -> nn.Module:
    """A tiny FocSAM with random weights (every part sensitive to every layer)."""
    torch.manual_seed(0)
    return randomize_(build_model("focsam_tiny", random_init=True), std=0.05).eval()


@pytest.mark.parametrize("site", list(_sites(build_model("demo_focsam"))))
def test_forward_hook_is_honoured_by_the_fast_path(site, real_images):
    image = real_images[0][1]
    model = _random_focsam()
    plain = _outputs(model, image)
    module = model.get_submodule(_sites(model)[site])
    calls = []

    def hook(mod, args, out):
        calls.append(1)
        return out * 2.0 + 0.5

    handle = module.register_forward_hook(hook)
    try:
        fast = _outputs(model, image)
        assert calls, f"{site}: the fast path bypassed the module"
        with reference_math():
            ref = _outputs(model, image)
    finally:
        handle.remove()
    assert _changed(fast, plain), f"{site}: the hook did not change the output"
    assert _close(fast, ref), f"{site}: fast path with hook != reference with hook"


@pytest.mark.parametrize("kind", ["subclass", "lora"])
def test_wrapped_and_subclassed_linears_are_called(kind, real_images):
    image = real_images[2][1]
    model = _random_focsam()
    plain = _outputs(model, image)
    merged = copy.deepcopy(model)  # gets plain layers computing the same function
    torch.manual_seed(0)
    for path in _sites(model).values():
        base = model.get_submodule(path)
        if kind == "subclass":
            new = ScaledLinear(base.in_features, base.out_features)
            new.load_state_dict(base.state_dict())
            same = nn.Linear(base.in_features, base.out_features)
            with torch.no_grad():
                same.weight.copy_(1.5 * base.weight)
                same.bias.copy_(1.5 * base.bias)
        else:
            new = LoRA(base)
            same = new.merged()
        _replace(model, path, new)
        _replace(merged, path, same)
    out = _outputs(model, image)
    assert _changed(out, plain)
    assert _close(out, _outputs(merged, image))


def test_dynamically_quantised_decoder_linears_run(real_images):
    image = real_images[0][1]
    model = build_model("demo_sam").eval()
    qmodel = build_model("demo_sam").eval()
    qmodel.mask_decoder = torch.ao.quantization.quantize_dynamic(
        qmodel.mask_decoder, {nn.Linear}, dtype=torch.qint8
    )
    emb, logits = _outputs(model, image)
    qemb, qlogits = _outputs(qmodel, image)
    assert torch.equal(emb, qemb)
    diff = (logits[-1] - qlogits[-1]).abs()
    assert 0 < diff.max()  # int8 weights were used ...
    assert ((logits[-1] > 0) == (qlogits[-1] > 0)).float().mean() > 0.9  # ... and work


# -- call-time failure -------------------------------------------------------------------------


@pytest.fixture
def broken_op(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(common, "_ONEDNN_LINEAR", broken)
    _reset_failures()
    yield calls
    _reset_failures()


def test_private_op_failing_at_call_time_falls_back_once(broken_op):
    x, w, b = torch.randn(7, 16), torch.randn(5, 16), torch.randn(5)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="_linear_pointwise"):
        out = common.fused_linear(x, w, b, "gelu")
    assert torch.allclose(out, F.gelu(F.linear(x, w, b)), atol=1e-6)
    assert "torch.ops.mkldnn._linear_pointwise" in failed_private_ops()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        res = torch.randn(7, 5)
        out = common.fused_linear(x, w, b, residual=res)
    assert torch.allclose(out, res + F.linear(x, w, b), atol=1e-6)
    assert len(broken_op) == 1  # not tried again


def test_model_runs_through_a_failing_private_op(broken_op, demo, real_images):
    image = real_images[0][1]
    with reference_math():
        ref = _outputs(demo, image)
    with pytest.warns(RuntimeWarning, match="reference math"):
        out = _outputs(demo, image)
    assert len(broken_op) == 1
    assert _close(out, ref)


@pytest.mark.parametrize("proj", ["q_proj", "k_proj", "v_proj", "out_proj"])
@pytest.mark.parametrize("direction", ["token_to_image", "image_to_token"])
def test_reassociated_decoder_attention_honours_hooks(proj, direction):
    """The decoder's token-side projections (``_few_queries`` / ``_few_keys``) read all four
    weights: a hooked projection must send the call to the plain path."""
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4, downsample_rate=2)
    for p in attn.parameters():
        nn.init.normal_(p, 0.0, 0.2)
    tokens, image = torch.randn(1, 5, 64), torch.randn(1, 300, 64)
    q, kv = (tokens, image) if direction == "token_to_image" else (image, tokens)
    with torch.inference_mode():
        plain = attn(q, kv, 0.5 * kv)
        getattr(attn, proj).register_forward_hook(lambda m, a, out: 2.0 * out + 0.5)
        fast = attn(q, kv, 0.5 * kv)
        with reference_math():
            ref = attn(q, kv, 0.5 * kv)
    assert (fast - plain).abs().max() > 1e-2
    assert torch.allclose(fast, ref, atol=1e-5)
