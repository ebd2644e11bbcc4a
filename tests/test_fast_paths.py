"""The inference fast paths compute the same function as the plain formulas they replace.

Each test compares against a direct implementation of the reference formula (as written in
segment-anything), in inference and, where the fast path has a training twin, with autograd.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_models import _naive

from steadysam.models.common import LayerNorm2d, MLPBlock, fused_linear
from steadysam.models.image_encoder import rel_pos_attention
from steadysam.models.transformer import Attention, TwoWayTransformer


def _reference_attention(attn: Attention, q, k, v):
    """segment-anything's Attention.forward."""

    def heads(x):
        b, n, c = x.shape
        return x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)

    qh, kh, vh = heads(attn.q_proj(q)), heads(attn.k_proj(k)), heads(attn.v_proj(v))
    a = (qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])).softmax(-1)
    out = (a @ vh).transpose(1, 2)
    return attn.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


def _random_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(64, num_heads=4, downsample_rate=2)
    for p in attn.parameters():
        nn.init.normal_(p, 0.0, 0.2)
    return attn


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("direction", ["token_to_image", "image_to_token"])
def test_cross_attention_token_side_projection_matches_reference(direction, batch):
    attn = _random_attention()
    tokens, image = torch.randn(batch, 5, 64), torch.randn(batch, 300, 64)
    assert attn.num_heads * tokens.shape[1] < attn.internal_dim < image.shape[1]  # fast path
    q, kv = (tokens, image) if direction == "token_to_image" else (image, tokens)
    residual = torch.randn(q.shape)
    with torch.no_grad():
        ref = _reference_attention(attn, q, kv, 0.5 * kv)
        assert torch.allclose(attn(q, kv, 0.5 * kv), ref, atol=2e-5)
        out = attn(q, kv, 0.5 * kv, residual=residual)
        assert torch.allclose(out, residual + ref, atol=2e-5)


@pytest.mark.parametrize("direction", ["token_to_image", "image_to_token"])
def test_cross_attention_fast_path_gradients_match_reference(direction):
    tokens, image = torch.randn(1, 5, 64), torch.randn(1, 300, 64)
    q, kv = (tokens, image) if direction == "token_to_image" else (image, tokens)
    grads = []
    for fast in (True, False):
        attn = _random_attention()
        out = attn(q, kv, kv) if fast else _reference_attention(attn, q, kv, kv)
        out.square().sum().backward()
        grads.append({n: p.grad for n, p in attn.named_parameters()})
    fast, ref = grads
    for name in ref:
        assert fast[name] is not None, f"{name} gets no gradient (DDP would fail)"
        assert torch.allclose(fast[name], ref[name], atol=1e-3, rtol=1e-4), name


def test_final_attention_runs_only_for_requested_tokens():
    torch.manual_seed(0)
    tf = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=128)
    for p in tf.parameters():
        nn.init.normal_(p, 0.0, 0.1)
    image, pe, tokens = torch.randn(1, 64, 8, 8), torch.randn(1, 64, 8, 8), torch.randn(1, 7, 64)
    with torch.no_grad():
        full, keys = tf(image, pe, tokens)
        part, keys2 = tf(image, pe, tokens, outputs=[0, 2])
    assert torch.allclose(part, full[:, [0, 2]], atol=1e-6)
    assert torch.equal(keys, keys2)


@pytest.mark.parametrize("grad", [False, True])
def test_rel_pos_attention_chunks_and_window_groups(grad):
    """Non-square grid, several windows; chunk sizes that split query rows unevenly, take whole
    (batch x head) slices in groups that do not divide the batch, or everything at once. With
    autograd, every chunking gives the reference gradients of all five inputs."""
    g = torch.Generator().manual_seed(1)
    b, nh, h, w, d = 7, 2, 6, 5, 8
    q, k, v = (torch.randn(b, nh, h * w, d, generator=g) for _ in range(3))
    rel_h, rel_w = torch.randn(2 * h - 1, d, generator=g), torch.randn(2 * w - 1, d, generator=g)
    inputs = (q, k, v, rel_h, rel_w)
    weight = torch.randn(b, nh, h * w, d, generator=g)  # a loss that weighs every output

    def run(fn):
        leaves = [t.clone().requires_grad_(grad) for t in inputs]
        out = fn(*leaves)
        if not grad:
            return out, []
        (out * weight).sum().backward()
        return out.detach(), [t.grad for t in leaves]

    ref, ref_grads = run(lambda q, k, v, rh, rw: _naive(q, k, v, rh, rw, (h, w), d**-0.5))
    row = w * h * w * 4
    for chunk in (1, 4 * row, h * row, 4 * h * row, 1 << 30):
        fast = functools.partial(rel_pos_attention, size=(h, w), scale=d**-0.5, chunk_bytes=chunk)
        out, grads = run(fast)
        assert torch.allclose(out, ref, atol=1e-5), chunk
        names = ("q", "k", "v", "rel_h", "rel_w") if grad else ()
        for name, a, r in zip(names, grads, ref_grads, strict=True):
            assert a is not None, (chunk, name)
            assert torch.allclose(a, r, atol=1e-4, rtol=1e-4), (chunk, name)


def test_fused_linear_matches_composition():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 40, 24), torch.randn(36, 24), torch.randn(36)
    r = torch.randn(2, 40, 36)
    lin = F.linear(x, w, b)
    with torch.no_grad():  # the fused inference path
        assert torch.allclose(fused_linear(x, w, b), lin, atol=1e-5)
        for name, act in (("gelu", F.gelu), ("tanh", torch.tanh), ("relu", F.relu)):
            assert torch.allclose(fused_linear(x, w, b, name), act(lin), atol=1e-5), name
        assert torch.allclose(fused_linear(x, w, b, residual=r), r + lin, atol=1e-5)
        assert torch.allclose(fused_linear(x, w, None), F.linear(x, w), atol=1e-5)


@pytest.mark.parametrize("trainable", ["x", "weight", "bias", "residual"])
@pytest.mark.parametrize("activation", [None, "gelu", "residual"])
def test_fused_linear_gradients_reach_every_trainable_input(trainable, activation):
    """Under autograd every operand that requires grad gets the reference gradient, also when
    it is the only one (a trainable bias on a frozen weight, a residual stream into a frozen
    layer): the fused op has no backward, so it must not run then."""
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 10, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(6)
    r = torch.randn(2, 10, 6, generator=g)
    operands = {"x": x, "weight": w, "bias": b, "residual": r}
    if trainable == "residual" and activation != "residual":
        pytest.skip("no residual operand without residual fusion")
    grads = []
    for fused in (True, False):
        ops = {k: v.clone().requires_grad_(k == trainable) for k, v in operands.items()}
        act = activation if activation != "residual" else None
        res = ops["residual"] if activation == "residual" else None
        if fused:
            out = fused_linear(ops["x"], ops["weight"], ops["bias"], act, res)
        else:
            out = F.linear(ops["x"], ops["weight"], ops["bias"])
            out = F.gelu(out) if act == "gelu" else out
            out = out + res if res is not None else out
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads.append(ops[trainable].grad)
    assert grads[0] is not None, f"{trainable} got no gradient"
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_mlp_block_with_relu_and_residual():
    torch.manual_seed(0)
    mlp = MLPBlock(16, 32, nn.ReLU)
    x, r = torch.randn(3, 16), torch.randn(3, 16)
    with torch.no_grad():
        ref = mlp.lin2(F.relu(mlp.lin1(x)))
        assert torch.allclose(mlp(x), ref, atol=1e-6)
        assert torch.allclose(mlp(x, residual=r), r + ref, atol=1e-6)


def test_layernorm2d_matches_official_formula_and_is_channels_last():
    torch.manual_seed(0)
    ln = LayerNorm2d(8)
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * (x - u) / torch.sqrt(s + ln.eps) + ln.bias[:, None, None]
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        out = ln(inp)
        assert torch.allclose(out, ref, atol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_malloc_tuning_applies_once_and_can_be_disabled(monkeypatch):
    """mallopt is called for the three settings on the first call only (later calls return the
    first answer), and never with STEADYSAM_MALLOC_TUNING=0."""
    import types

    import steadysam.memory as memory

    calls = []

    class Mallopt:  # a ctypes function: argtypes / restype are set on it
        def __call__(self, param, value):
            calls.append((param, value))
            return 1

    libc = types.SimpleNamespace(mallopt=Mallopt())
    fake = types.SimpleNamespace(CDLL=lambda name: libc, c_int=memory.ctypes.c_int)
    monkeypatch.setattr(memory, "ctypes", fake)
    monkeypatch.delenv("STEADYSAM_MALLOC_TUNING", raising=False)
    monkeypatch.setattr(memory, "_applied", None)
    assert memory.retain_freed_memory() and memory.retain_freed_memory()
    assert sorted(p for p, _ in calls) == [-3, -2, -1] and len(calls) == 3  # once
    calls.clear()
    monkeypatch.setattr(memory, "_applied", None)  # a new process
    monkeypatch.setenv("STEADYSAM_MALLOC_TUNING", "0")
    assert memory.retain_freed_memory() is False and memory.retain_freed_memory() is False
    assert calls == []


@pytest.mark.multiprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_glibc_accepts_the_malloc_tuning():
    """The real glibc, in fresh processes (the settings are process-wide)."""
    code = "from steadysam.memory import retain_freed_memory as r; print(r(), r())"
    env = dict(os.environ)
    env.pop("STEADYSAM_MALLOC_TUNING", None)
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert on.stdout.split() == ["True", "True"], on.stderr
    env["STEADYSAM_MALLOC_TUNING"] = "0"
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert off.stdout.split() == ["False", "False"], off.stderr


def test_process_defaults_set_passive_wait_policy_before_torch_only():
    code = (
        "import os, sys\n"
        "from steadysam.runtime import apply_process_defaults\n"
        "applied = apply_process_defaults()\n"
        "print(applied, os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
        "import torch\n"
        "os.environ.pop('OMP_WAIT_POLICY')\n"
        "print(apply_process_defaults(), os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.splitlines() == [
        "{'OMP_WAIT_POLICY': 'PASSIVE'} PASSIVE False",
        "{} None",  # after torch: too late, nothing is set
    ], out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.splitlines()[0] == "{} ACTIVE False", out.stderr
