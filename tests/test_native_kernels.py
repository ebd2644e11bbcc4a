"""The compiled Stable-SAM plugin kernels (steadysam/native) against the PyTorch ops they
replace, and how they are built, cached and switched off."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from steadysam import use_fast_paths
from steadysam.models.build import attach_plugin, build_sam
from steadysam.models.config import PluginConfig
from steadysam.models.deformable_sampling import bilinear_bags, gather_bags
from steadysam.models.dynamic_routing import DynamicRouting
from steadysam.native import build as native_build
from steadysam.native import plugin as native_plugin
from steadysam.native import plugin_kernels, status
from steadysam.weights.registry import sam_config


@pytest.fixture()
def kernels():
    k = plugin_kernels()
    assert k is not None, status("plugin_kernels")  # CI installs a C compiler
    return k


@pytest.fixture()
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel cache in tmp_path and no library loaded in this process yet."""
    monkeypatch.setenv("STEADYSAM_HOME", str(tmp_path))
    monkeypatch.setattr(native_build, "_loaded", {})
    monkeypatch.setattr(native_build, "_reasons", {})
    monkeypatch.setattr(native_plugin, "_kernels", [])
    return tmp_path


def test_gelu_matches_torch_on_a_dense_grid(kernels):
    x = torch.linspace(-12, 12, 400_001)
    specials = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.4e38, -3.4e38, float("inf"), float("nan")])
    x = torch.cat([x, specials])
    ref = F.gelu(x.double())
    out = kernels.gelu(x)
    finite = torch.isfinite(ref)
    # Within float rounding of the exact function (torch's own float GELU is 1.2e-6 off).
    assert (out.double() - ref)[finite].abs().max() < 2e-6
    assert torch.equal(out[-8:-2], ref[-8:-2].float())  # zeros, tiny and huge values
    assert out[-2] == float("inf") and out[-1].isnan()


@pytest.mark.parametrize("c,k", [(256, 5), (96, 3), (20, 5)], ids=["c256", "c96-k3", "c20"])
def test_offset_head_matches_the_ops(kernels, c, k):
    """Depthwise conv (zero padding) -> LayerNorm -> GELU -> 2-output linear, on a grid where
    many taps hit the border and rows hold both border outputs and interior runs of four, with
    channel counts on and off the 16- and 64-wide blocks."""
    g = torch.Generator().manual_seed(c)
    b, h, w = 2, 5, 13
    xs = torch.randn(b, h * w, c, generator=g) * 3 + 1
    dw = nn.Conv2d(c, c, k, padding=k // 2, groups=c)
    norm = nn.LayerNorm(c)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c, generator=g) + 0.5)
        norm.bias.copy_(torch.randn(c, generator=g))
    weight, bias = torch.randn(2, c, generator=g), torch.randn(2, generator=g)
    with torch.no_grad():
        t = dw(xs.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        ref = F.linear(F.gelu(norm(t)), weight, bias)
        out = kernels.offset_head(xs, (h, w), dw, norm, weight, bias)
    assert out.shape == (b, h, w, 2)
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)


def _ops_sample_mix(src, keys, pe, offsets, alpha, size, deformed):
    """The PyTorch ops the kernel replaces (the plugin's inference path without it)."""
    b, n, c = keys.shape
    h, w = size
    idx, wgt = bilinear_bags(offsets, h, w)
    rows = idx + (torch.arange(b, dtype=idx.dtype) * n).view(b, 1, 1)
    x_def = gather_bags(src.reshape(b * n, c), rows, wgt).view(b, n, c)
    a = alpha.view(b, 1, 1)
    values = torch.lerp(keys, x_def, a)
    if not deformed:
        return values, values + pe
    pe_rows = idx if pe.shape[0] == 1 else rows
    pe_def = gather_bags(pe.reshape(-1, c), pe_rows, wgt).view(b, n, c)
    return values, values + torch.lerp(pe.expand(b, -1, -1), pe_def, a)


@pytest.mark.parametrize("deformed", [False, True], ids=["grid-pe", "deformed-pe"])
@pytest.mark.parametrize("pe_batch", [1, 3], ids=["shared-pe", "per-prompt-pe"])
def test_sample_mix_matches_the_ops(kernels, deformed, pe_batch):
    """Bilinear sampling with border padding (offsets far outside the map included), the
    routing lerp per prompt and the + PE, on a non-square grid with three prompts."""
    g = torch.Generator().manual_seed(5)
    b, h, w, c = 3, 6, 9, 40
    src, keys = torch.randn(b, h * w, c, generator=g), torch.randn(b, h * w, c, generator=g)
    pe = torch.randn(pe_batch, h * w, c, generator=g)
    offsets = torch.randn(b, h, w, 2, generator=g) * 3
    offsets[0, 0, 0] = torch.tensor([-50.0, 70.0])  # clamped to the border
    offsets[1, 2, 3] = torch.tensor([0.5, -0.25])
    alpha = torch.tensor([0.3, 0.0, 1.0])
    values, k = kernels.sample_mix(src, keys, pe, offsets, alpha, (h, w), deformed)
    ref_v, ref_k = _ops_sample_mix(src, keys, pe, offsets, alpha, (h, w), deformed)
    torch.testing.assert_close(values, ref_v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)
    assert torch.equal(values[1], keys[1])  # weight 0: the regular features, exactly
    # The sampled value at the clamped corner is the map's corner cell (x = 0, y = h - 1).
    torch.testing.assert_close(values[2], ref_v[2])
    corner = src[0, (h - 1) * w]
    torch.testing.assert_close(values[0, 0], torch.lerp(keys[0, 0], corner, 0.3))


def test_sample_mix_at_zero_offsets_reads_each_cell_exactly(kernels):
    """An untrained plugin (offsets 0) must leave SAM's features bit for bit."""
    g = torch.Generator().manual_seed(6)
    src = torch.randn(2, 64 * 64, 256, generator=g)
    pe = torch.randn(1, 64 * 64, 256, generator=g)
    zero = torch.zeros(2, 64, 64, 2)
    values, k = kernels.sample_mix(src, src, pe, zero, torch.tensor([0.5, 0.9]), (64, 64), True)
    assert torch.equal(values, src) and torch.equal(k, src + pe)


def _plugin_sam(pe_mode: str):
    with torch.random.fork_rng():  # the same random SAM every run
        torch.manual_seed(0)
        model = build_sam(sam_config("sam_tiny"))
    attach_plugin(model, PluginConfig(pe_mode=pe_mode))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.plugin_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _embedding(model, g: torch.Generator) -> torch.Tensor:
    pe = model.prompt_encoder
    return torch.randn(1, pe.embed_dim, *pe.image_embedding_size, generator=g)


@pytest.mark.parametrize("pe_mode", ["grid", "deformed"])
def test_a_plugin_decoder_with_kernels_matches_the_reference(kernels, monkeypatch, pe_mode):
    """Whole decoder calls (points, a mask prompt, two prompts at once): the kernels are used,
    and the masks equal the reference math's and the PyTorch-ops fast path's."""
    model = _plugin_sam(pe_mode)
    g = torch.Generator().manual_seed(4)
    s = model.image_size
    emb = _embedding(model, g)
    points = (torch.rand(2, 3, 2, generator=g) * s, torch.tensor([[1, 0, 1], [1, 1, -1]]))
    mask = torch.randn(2, 1, s // 4, s // 4, generator=g)
    calls = []
    for name in ("sample_mix", "offset_head"):
        original = getattr(type(kernels), name)
        monkeypatch.setattr(
            type(kernels),
            name,
            lambda self, *a, _f=original, _n=name, **k: calls.append(_n) or _f(self, *a, **k),
        )
    with torch.inference_mode():
        fast = model.decode(emb, points, None, mask)[0]
        assert sorted(set(calls)) == ["offset_head", "sample_mix"]
        with use_fast_paths(False):
            ref = model.decode(emb, points, None, mask)[0]
        monkeypatch.setenv("STEADYSAM_NATIVE", "0")
        calls.clear()
        ops = model.decode(emb, points, None, mask)[0]
        assert calls == []
    assert model.plugins()[0].last_routing[:, 0].min() > 0.05  # both branches matter
    # Rounding differs by ~1e-7 here; moving every offset by 1 % changes the logits by ~5e-5.
    torch.testing.assert_close(fast, ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fast, ops, atol=2e-6, rtol=1e-5)


def test_kernels_are_built_once_into_the_cache_not_the_package(fresh_build, monkeypatch):
    lib = native_build.load("plugin_kernels")
    assert lib is not None, native_build.status("plugin_kernels")
    built = list((fresh_build / "native").iterdir())
    assert [p.suffix for p in built] == [".so"]  # one library, no temporary left behind
    package = os.path.dirname(native_build.__file__)
    assert not any(f.endswith(".so") for f in os.listdir(package))
    # A new process finds the library instead of compiling again.
    monkeypatch.setattr(native_build, "_loaded", {})
    real_run = native_build.subprocess.run

    def run(cmd, *args, **kwargs):
        assert "-shared" not in cmd, "compiled again"
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(native_build.subprocess, "run", run)
    assert native_build.load("plugin_kernels")._name == str(built[0])


def test_without_a_compiler_the_plugin_falls_back_to_pytorch_ops(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-steadysam")
    assert plugin_kernels() is None
    assert "no C compiler" in status("plugin_kernels")
    model = _plugin_sam("grid")
    emb = _embedding(model, torch.Generator().manual_seed(0))
    points = (torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]]))
    with torch.inference_mode():
        fast = model.decode(emb, points)[0]
        with use_fast_paths(False):
            ref = model.decode(emb, points)[0]
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


def test_the_switch_turns_the_kernels_off(fresh_build, monkeypatch):
    monkeypatch.setenv("STEADYSAM_NATIVE", "0")
    assert plugin_kernels() is None and status("plugin_kernels") == "off (STEADYSAM_NATIVE=0)"
    assert not (fresh_build / "native").exists()  # nothing was compiled
    monkeypatch.setenv("STEADYSAM_NATIVE", "maybe")
    with pytest.raises(ValueError, match="STEADYSAM_NATIVE must be 0 or 1"):
        plugin_kernels()


def test_kernels_refuse_other_dtypes(kernels):
    x = torch.zeros(1, 4, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32 CPU tensors"):
        kernels.sample_mix(x, x, x, torch.zeros(1, 2, 2, 2), torch.zeros(1), (2, 2), False)


def test_router_kernel_matches_the_ops(kernels, monkeypatch):
    """The router's MLP + softmax, for a batch whose weights range from even to saturated."""
    router = DynamicRouting(64, 16)
    g = torch.Generator().manual_seed(12)
    with torch.no_grad():
        for p in router.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    tokens = torch.randn(4, 64, generator=g) * torch.tensor([[0.01], [1.0], [3.0], [30.0]])
    calls = []
    original = type(kernels).route_mlp
    monkeypatch.setattr(
        type(kernels), "route_mlp", lambda self, *a: calls.append(1) or original(self, *a)
    )
    with torch.inference_mode():
        fast = router(tokens)
        with use_fast_paths(False):
            ref = router(tokens)
    assert calls == [1]
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    assert fast.sum(-1).sub(1).abs().max() < 1e-6


def test_kernels_take_strided_inputs(kernels):
    """Views that are not contiguous (a token column, a transposed map) are copied for the
    call and give the same results."""
    g = torch.Generator().manual_seed(13)
    c, h, w = 32, 4, 6
    xs = torch.randn(1, c, h * w, generator=g).transpose(1, 2)  # B x hw x C, strided
    dw, norm = nn.Conv2d(c, c, 5, padding=2, groups=c), nn.LayerNorm(c)
    weight, bias = torch.randn(2, c, generator=g), torch.randn(2, generator=g)
    with torch.no_grad():
        strided = kernels.offset_head(xs, (h, w), dw, norm, weight, bias)
        dense = kernels.offset_head(xs.contiguous(), (h, w), dw, norm, weight, bias)
    assert not xs.is_contiguous() and torch.equal(strided, dense)
    router = DynamicRouting(c, 8)
    queries = torch.randn(3, 5, c, generator=g)
    token = queries[:, 1]  # what the plugin routes on: a strided view
    with torch.no_grad():
        out = kernels.route_mlp(token, router.fc1, router.norm, router.fc2)
        ref = kernels.route_mlp(token.contiguous(), router.fc1, router.norm, router.fc2)
    assert not token.is_contiguous() and torch.equal(out, ref)
