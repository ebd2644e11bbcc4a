"""Stable-SAM's plugin (DSP + DRP): identity when untrained, the properties the paper states,
the config switches, parameter counts, plugin files on SAM and FocSAM checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import randomize_

from steadysam import Predictor, build_model
from steadysam.models.build import attach_plugin, build_sam
from steadysam.models.config import PluginConfig
from steadysam.models.deformable_sampling import DeformableSampling
from steadysam.models.stable_plugin import StablePlugin, is_plugin_key
from steadysam.native import plugin_kernels
from steadysam.native import status as native_status
from steadysam.weights.files import (
    CheckpointError,
    describe_checkpoint,
    infer_config,
    load_checkpoint,
    parameter_counts,
    save_checkpoint,
    save_plugin_checkpoint,
)
from steadysam.weights.registry import sam_config


def _pair(base: str, plugin: PluginConfig | None = None, seed: int = 0):
    """(base model with random non-trivial weights, the same weights + a fresh plugin)."""
    torch.manual_seed(seed)
    plain = randomize_(build_model(base, random_init=True), std=0.2, seed=seed + 1)
    stable = build_model(base, random_init=True)
    stable.load_state_dict(plain.state_dict())
    attach_plugin(stable, plugin or PluginConfig())
    return plain.eval(), stable.eval()


def _perturb_plugin(model, std: float = 0.5, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.plugin_parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _prompts():
    points = (
        torch.tensor([[[100.0, 120.0], [30.0, 40.0], [180.0, 60.0]]]),
        torch.tensor([[1, 0, 1]]),
    )
    box = torch.tensor([[20.0, 30.0, 200.0, 220.0]])
    return points, box


# -- an untrained plugin is SAM, bit for bit -------------------------------------------------
@pytest.mark.parametrize(
    "plugin",
    [
        PluginConfig(),
        PluginConfig(sites=("layer0_t2i", "layer1_t2i", "final_t2i"), pe_mode="deformed"),
        PluginConfig(drp_token="mean", sample_source="raw", offset_range=8.0),
    ],
    ids=["default", "all-sites-deformed-pe", "mean-token-raw-bounded"],
)
def test_untrained_plugin_equals_sam_on_real_images(real_images, plugin):
    plain, stable = _pair("sam_tiny", plugin)
    for name, rgb in real_images:
        outs = []
        for model in (plain, stable):
            predictor = Predictor(model, cache_dir=None)
            predictor.set_image(rgb)
            h, w = rgb.shape[:2]
            pts = np.array([[w * 0.5, h * 0.5], [w * 0.2, h * 0.3]])
            m1, s1, l1 = predictor.predict(pts, np.array([1, 0]), multimask_output=True)
            m2, s2, l2 = predictor.predict(
                box=np.array([w * 0.1, h * 0.1, w * 0.8, h * 0.9]), multimask_output=False
            )
            m3, s3, l3 = predictor.predict(pts[:1], np.array([1]), mask_input=l2)
            outs.append([m1, s1, l1, m2, s2, l2, m3, s3, l3])
        for a, b in zip(*outs, strict=True):
            assert np.array_equal(a, b), name


def test_untrained_plugin_equals_focsam_in_a_click_session(real_images):
    """FocSAM + Stable-SAM: refiner on the embedding, plugin in the decoder; untrained it is
    FocSAM exactly, refiner step included."""
    plain, stable = _pair("focsam_tiny")
    name, rgb = real_images[1]
    masks = []
    for model in (plain, stable):
        predictor = Predictor(model, cache_dir=None)
        predictor.set_image(rgb)
        obj = predictor.new_object()
        h, w = rgb.shape[:2]
        seq = [
            obj.click(w * 0.5, h * 0.5),
            obj.click(w * 0.3, h * 0.6, False),
            obj.click(w * 0.6, h * 0.4),
        ]
        assert obj.refined
        masks.append(seq + [obj.logits.numpy()])
    for a, b in zip(*masks, strict=True):
        assert np.array_equal(a, b)


def test_trained_plugin_changes_the_output_and_only_the_token_to_image_attention():
    plain, stable = _pair("sam_tiny")
    _perturb_plugin(stable)
    emb = torch.randn(1, 64, 16, 16)
    points, _ = _prompts()
    seen: dict[str, list[torch.Tensor]] = {"plain": [], "stable": []}
    hooks = []
    for key, model in (("plain", plain), ("stable", stable)):
        block = model.mask_decoder.transformer.layers[1]
        hooks.append(
            block.cross_attn_image_to_token.register_forward_pre_hook(
                lambda m, args, kw, key=key: seen[key].append(kw["q"].clone()), with_kwargs=True
            )
        )
    with torch.no_grad():
        a = plain.decode(emb, points)[0]
        b = stable.decode(emb, points)[0]
    for h in hooks:
        h.remove()
    assert not torch.allclose(a, b, atol=1e-3)
    # The image->token attention of that block reads the regular image features x_p + PE.
    assert torch.equal(seen["plain"][0], seen["stable"][0])


# -- DSP --------------------------------------------------------------------------------------
def test_offsets_are_in_cells_dx_then_dy_with_border_padding():
    plugin = StablePlugin(8, PluginConfig(), num_output_tokens=5)
    dsp = plugin.dsp
    maps = torch.arange(2 * 8 * 4 * 6, dtype=torch.float32).view(2, 8, 4, 6)
    off = torch.zeros(2, 4, 6, 2)
    off[..., 0] = 1.0  # one cell to the right
    out = dsp.sample(maps, off).transpose(1, 2).reshape(2, 8, 4, 6)
    expected = torch.cat([maps[..., 1:], maps[..., -1:]], dim=-1)  # border: last column repeats
    torch.testing.assert_close(out, expected)
    off = torch.zeros(2, 4, 6, 2)
    off[..., 1] = -0.5  # half a cell up: the mean of a row and the one above (border at row 0)
    out = dsp.sample(maps, off).transpose(1, 2).reshape(2, 8, 4, 6)
    above = torch.cat([maps[:, :, :1], maps[:, :, :-1]], dim=2)
    torch.testing.assert_close(out, (maps + above) / 2)


def test_fast_row_sampling_equals_grid_sample():
    """The inference path (weighted bags of token rows) against the grid_sample reference, with
    offsets up to 3 grids away (border padding), on channels-last and plain maps."""
    dsp = StablePlugin(8, PluginConfig(), num_output_tokens=5).dsp
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 8, 16, 12, generator=g)
    offsets = torch.randn(3, 16, 12, 2, generator=g) * torch.tensor([[[[4.0, 20.0]]]])
    offsets[0, :2] = 40.0
    for m in (maps, maps.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            fast = dsp.sample(m, offsets)
        with torch.enable_grad():
            ref = dsp.sample(m, offsets)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    zero = torch.zeros(3, 16, 12, 2)
    with torch.no_grad():
        assert torch.equal(dsp.sample(maps, zero), maps.flatten(2).transpose(1, 2))


def _random_dsp(dim: int = 32, seed: int = 7, **kwargs) -> DeformableSampling:
    """A DSP with non-trivial weights: offsets of a few cells, some across the border."""
    dsp = DeformableSampling(dim, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dsp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return dsp


@pytest.fixture(params=["native", "ops"])
def inference_kernels(request, monkeypatch):
    """Runs a test with the compiled kernels (steadysam.native; CI installs a compiler, so
    they must build) and with the PyTorch-ops fast path they replace elsewhere."""
    native = request.param == "native"
    monkeypatch.setenv("STEADYSAM_NATIVE", "1" if native else "0")
    assert (plugin_kernels() is not None) == native, native_status("plugin_kernels")
    return request.param


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"offset_range": 3.0}, {"sample_source": "raw", "kernel_size": 3}],
    ids=["default", "bounded", "raw-k3"],
)
def test_inference_offsets_and_sampling_match_the_autograd_reference(kwargs, inference_kernels):
    """The inference path (functional offset net or the compiled head, row bags, split PE
    gathers) against the module / grid_sample reference that runs under autograd, on a
    non-square grid, batched, with a shared and a per-prompt PE; the reference's gradients
    reach every parameter."""
    dsp = _random_dsp(**kwargs)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 12 * 10, 32, generator=g)
    for pe in (torch.randn(1, 120, 32, generator=g), torch.randn(3, 120, 32, generator=g), None):
        with torch.no_grad():
            fast = dsp(x, (12, 10), pe)
        ref = dsp(x, (12, 10), pe)
        assert ref[2].requires_grad and not fast[2].requires_grad
        assert fast[2].abs().max() > 1.0  # offsets of more than a cell: a real test
        for a, b in zip(fast, ref, strict=True):
            if b is None:
                assert a is None
            else:
                # Offsets rounded differently (~1e-6 of a cell) move the samples, and the
                # differences between neighbouring cells (~ the values' scale) scale that.
                atol = 4e-6 * b.abs().max().item()
                torch.testing.assert_close(a, b.detach(), atol=atol, rtol=1e-5)
    dsp.zero_grad()
    ref[0].square().sum().backward()
    for name, p in dsp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inference_sampling_matches_grid_sample_at_sam_size():
    """64 x 64 x 256 as in SAM ViT-B, offsets from a random offset network."""
    dsp = _random_dsp(256, seed=9)
    x = torch.randn(1, 64 * 64, 256, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        fast, _, off = dsp(x, (64, 64))
        xs, _ = dsp.offsets(x, (64, 64))
    assert off.abs().max() > 1.0
    with torch.enable_grad():  # grid_sample
        ref = dsp.sample(xs.view(1, 64, 64, 256).permute(0, 3, 1, 2), off)
    # grid_sample rounds positions in its normalised frame (~1e-6 of a cell at w = 64),
    # which the differences between neighbouring cells (here ~10) scale.
    torch.testing.assert_close(fast, ref, atol=1e-5 * xs.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("pe_mode", ["grid", "deformed"])
def test_soft_routing_without_autograd_matches_the_reference(pe_mode, inference_kernels):
    """Inference (compiled sample_mix, or the in-place mix; skip at weight 0, pick at weight 1)
    against the same plugin under autograd, for one prompt and a batch; weights 0 and 1 come
    from a saturated softmax."""
    plugin = StablePlugin(16, PluginConfig(pe_mode=pe_mode), num_output_tokens=5).eval()
    _perturb_plugin_module(plugin.dsp)
    g = torch.Generator().manual_seed(11)
    for b in (1, 3):
        queries = torch.randn(b, 7, 16, generator=g)
        keys, pe = torch.randn(b, 36, 16, generator=g), torch.randn(1, 36, 16, generator=g)
        for bias in (-200.0, -0.7, 200.0):  # deformed weight exactly 0, ~0.3, exactly 1
            with torch.no_grad():
                plugin.drp.fc2.bias.copy_(torch.tensor([bias, 0.0]))
                k, v = plugin(queries, keys, pe, (6, 6))
            k_ref, v_ref = plugin(queries, keys, pe, (6, 6))
            assert v_ref.requires_grad
            torch.testing.assert_close(v, v_ref.detach(), atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(k, k_ref.detach(), atol=2e-5, rtol=1e-5)
            if bias < -100:  # the regular features, exactly
                assert torch.equal(v, keys) and torch.equal(k, keys + pe)
            if bias > 100 and pe_mode == "grid" and inference_kernels == "ops":
                with torch.no_grad():  # the deformed features, exactly (no blend)
                    assert torch.equal(v, plugin.dsp(keys, (6, 6))[0])


def test_one_offset_field_per_prompt():
    _, stable = _pair("sam_tiny")
    _perturb_plugin(stable)
    dsp = stable.plugins()[0].dsp
    x = torch.randn(3, 256, 64)
    _, off = dsp.offsets(x, (16, 16))
    assert off.shape == (3, 16, 16, 2)
    assert not torch.allclose(off[0], off[1])
    # Each prompt's field depends on its own features only.
    _, off2 = dsp.offsets(torch.cat([x[:1], torch.randn(2, 256, 64)]), (16, 16))
    torch.testing.assert_close(off2[0], off[0])


def test_offset_range_bounds_offsets():
    plugin = StablePlugin(16, PluginConfig(offset_range=2.0), num_output_tokens=5)
    with torch.no_grad():
        plugin.dsp.offset.bias.fill_(100.0)
    _, off = plugin.dsp.offsets(torch.randn(1, 16, 16), (4, 4))
    assert off.abs().max() <= 2.0 and off.abs().min() > 1.99


# -- DRP --------------------------------------------------------------------------------------
def test_router_starts_even_and_hard_mode_switches():
    plugin = StablePlugin(16, PluginConfig(routing="hard"), num_output_tokens=5).eval()
    _perturb_plugin_module(plugin.dsp)
    queries = torch.randn(2, 7, 16)
    keys, pe = torch.randn(2, 36, 16), torch.randn(1, 36, 16)
    alpha = plugin.drp(queries[:, 1])
    torch.testing.assert_close(alpha, torch.full((2, 2), 0.5))
    x_def, _, _ = plugin.dsp(keys, (6, 6))
    for bias, expect in ((-3.0, keys), (3.0, x_def)):  # regular mode / deformed mode
        with torch.no_grad():
            plugin.drp.fc2.bias.copy_(torch.tensor([bias, 0.0]))
        k, v = plugin(queries, keys, pe, (6, 6))
        assert torch.equal(v, expect)
        torch.testing.assert_close(k, expect + pe)
    plugin.routing = "soft"
    k, v = plugin(queries, keys, pe, (6, 6))
    a = torch.softmax(torch.tensor([3.0, 0.0]), 0)[0]
    torch.testing.assert_close(v, a * x_def + (1 - a) * keys)


def _perturb_plugin_module(module, std=0.5):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("token,index", [("mask0", 1), ("iou", 0)])
def test_router_reads_the_configured_token(token, index):
    plugin = StablePlugin(16, PluginConfig(drp_token=token), num_output_tokens=5)
    _perturb_plugin_module(plugin.drp)
    queries = torch.randn(1, 7, 16)
    plugin.route(queries)
    torch.testing.assert_close(plugin.last_routing, plugin.drp(queries[:, index]))
    plugin = StablePlugin(16, PluginConfig(drp_token="mean"), num_output_tokens=5)
    _perturb_plugin_module(plugin.drp)
    plugin.route(queries)
    torch.testing.assert_close(plugin.last_routing, plugin.drp(queries[:, :5].mean(1)))


def test_set_routing_updates_modules_and_config():
    _, stable = _pair("sam_tiny")
    stable.set_routing("hard", 0.7)
    assert stable.config.plugin.routing == "hard" and stable.plugins()[0].hard_threshold == 0.7
    with pytest.raises(ValueError, match="routing"):
        stable.set_routing("sometimes")
    with pytest.raises(ValueError, match="no Stable-SAM plugin"):
        build_model("sam_tiny", random_init=True).set_routing("hard")


# -- parameters, training ---------------------------------------------------------------------
def test_parameter_count_at_decoder_width_256():
    counts = parameter_counts(sam_config("stable_sam_vit_b"))
    # Offset net 65,792 + 6,656 + 512 + 514; router 256*32+32 + 64 + 32*2+2
    # (docs/stable-sam.md, "The model").
    assert counts["plugin"] == 73_474 + 8_354 == 81_828
    assert counts["mask_decoder"] == 4_058_340  # SAM's decoder, unchanged
    for name in ("stable_sam_vit_l", "stable_focsam_vit_h"):
        assert parameter_counts(sam_config(name))["plugin"] == 81_828


def test_only_the_plugin_learns_and_every_part_of_it_gets_gradients():
    _, stable = _pair("sam_tiny")
    for p in stable.parameters():
        p.requires_grad_(False)
    for p in stable.plugin_parameters():
        p.requires_grad_(True)
    frozen = {k: v.clone() for k, v in stable.state_dict().items() if not is_plugin_key(k)}
    stable.train()
    opt = torch.optim.Adam(stable.plugin_parameters(), lr=1e-2)
    emb = torch.randn(2, 64, 16, 16)
    points = (torch.tensor([[[100.0, 120.0]], [[30.0, 40.0]]]), torch.tensor([[1], [1]]))
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 10:40, 20:50] = 1
    losses = []
    for step in range(30):
        logits = stable.decode(emb, points)[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad()
        loss.backward()
        # Gradients reach the router once the deformed features differ from the regular ones
        # (step 1), and its first layer once its zero-initialised last layer has moved.
        if step == 2:
            for name, p in stable.named_parameters():
                if is_plugin_key(name):
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9
    for k, v in stable.state_dict().items():
        if not is_plugin_key(k):
            assert torch.equal(v, frozen[k]), k


# -- config -----------------------------------------------------------------------------------
def test_sites_become_modules_at_the_documented_keys():
    model = build_sam(
        dataclasses.replace(
            sam_config("sam_tiny"), plugin=PluginConfig(sites=("layer0_t2i", "final_t2i"))
        )
    )
    keys = [k for k in model.state_dict() if is_plugin_key(k)]
    assert {k.split(".plugin.")[0].split(".final_plugin.")[0] for k in keys} == {
        "mask_decoder.transformer.layers.0",
        "mask_decoder.transformer",
    }
    assert "mask_decoder.transformer.final_plugin.drp.fc2.bias" in keys
    assert len(model.plugins()) == 2


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(sites=("layer5_t2i",)), "sites"),
        (dict(sites=()), "sites"),
        (dict(pe_mode="exact"), "pe_mode"),
        (dict(drp_token="prompt"), "drp_token"),
        (dict(routing="maybe"), "routing"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(offset_range=0.0), "offset_range"),
        (dict(hard_threshold=1.5), "hard_threshold"),
    ],
)
def test_bad_plugin_configs_are_rejected(fields, match):
    with pytest.raises(ValueError, match=match):
        PluginConfig(**fields)


def test_site_beyond_the_decoder_depth_is_rejected():
    cfg = dataclasses.replace(sam_config("sam_tiny"), decoder_depth=1, plugin=PluginConfig())
    with pytest.raises(ValueError, match="decoder depth"):
        build_sam(cfg)


# -- checkpoints ------------------------------------------------------------------------------
@pytest.fixture()
def trained(tmp_path):
    """A SAM checkpoint, a FocSAM checkpoint with the same decoder, and a trained plugin file."""
    plain, stable = _pair("sam_tiny")
    _perturb_plugin(stable)
    sam_path = save_checkpoint(plain, tmp_path / "sam.safetensors")
    torch.manual_seed(1)
    focsam = randomize_(build_model("focsam_tiny", random_init=True), seed=4)
    focsam_path = save_checkpoint(focsam, tmp_path / "focsam.safetensors")
    plugin_path = save_plugin_checkpoint(stable, tmp_path / "plugin.safetensors")
    return stable, sam_path, focsam_path, plugin_path


def test_plugin_file_holds_only_the_plugin_and_its_config(trained):
    stable, _, _, plugin_path = trained
    info = describe_checkpoint(plugin_path)
    assert info["format"] == "plugin"
    assert info["total_parameters"] == sum(p.numel() for p in stable.plugin_parameters())
    assert list(info["plugin"]["sites"]) == ["layer1_t2i"]
    with pytest.raises(CheckpointError, match="plugin file"):
        load_checkpoint(plugin_path)


def test_plugin_file_loads_on_sam_and_on_focsam(trained):
    stable, sam_path, focsam_path, plugin_path = trained
    emb = torch.randn(1, 64, 16, 16)
    points, box = _prompts()
    on_sam = build_model(checkpoint=sam_path, plugin=plugin_path)
    with torch.no_grad():
        assert torch.equal(on_sam.decode(emb, points)[0], stable.decode(emb, points)[0])
    on_focsam = build_model("focsam_tiny", checkpoint=focsam_path, plugin=plugin_path)
    assert on_focsam.refiner is not None and on_focsam.config.plugin == stable.config.plugin
    for k, v in stable.state_dict().items():
        if is_plugin_key(k):
            assert torch.equal(on_focsam.state_dict()[k], v), k
    # Random base weights (asked for) with the file, base or combination name.
    for name in ("sam_tiny", "stable_sam_tiny"):
        model = build_model(name, random_init=True, plugin=plugin_path)
        assert model.config.plugin == stable.config.plugin and len(model.plugins()) == 1
        assert not any(m.training for m in model.modules())  # the plugin joins in eval mode
    # The same through the registered combination names.
    named = build_model("stable_focsam_tiny", checkpoint=focsam_path, plugin=plugin_path)
    assert named.refiner is not None and len(named.plugins()) == 1


def test_merged_file_round_trips_with_the_plugin_config(trained, tmp_path):
    stable, *_ = trained
    stable.set_routing("hard", 0.6)
    path = save_checkpoint(stable, tmp_path / "merged.safetensors")
    loaded = build_model(checkpoint=path)
    assert loaded.config.plugin == stable.config.plugin
    for k, v in stable.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_bare_state_dict_with_a_plugin_infers_its_sites(tmp_path):
    model = build_sam(
        dataclasses.replace(
            sam_config("sam_tiny"), plugin=PluginConfig(sites=("final_t2i",), drp_hidden=16)
        )
    )
    config = infer_config(model.state_dict())
    assert config.plugin == PluginConfig(sites=("final_t2i",), drp_hidden=16)
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    # The plugin's PE mode, router token, sampled map and offset bound are not in its shapes.
    with pytest.raises(CheckpointError, match="plugin.pe_mode, plugin.drp_token"):
        build_model(checkpoint=path)
    _, loaded, _ = load_checkpoint(path, architecture=model.config)
    assert loaded.plugin == PluginConfig(sites=("final_t2i",), drp_hidden=16)


def test_plugin_mismatches_are_checkpoint_errors(trained, tmp_path):
    stable, sam_path, _, plugin_path = trained
    # A plugin made for another decoder width.
    wide = build_model("stable_sam_vit_b", random_init=True)
    wide_path = save_plugin_checkpoint(wide, tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError, match="prompt_embed_dim: plugin 256, model 64"):
        build_model(checkpoint=sam_path, plugin=wide_path)
    # A full checkpoint passed as a plugin, a plugin on a model that has one.
    with pytest.raises(CheckpointError, match="not a Stable-SAM plugin file"):
        build_model(checkpoint=sam_path, plugin=sam_path)
    merged = save_checkpoint(stable, tmp_path / "merged.safetensors")
    with pytest.raises(CheckpointError, match="already has a Stable-SAM plugin"):
        build_model(checkpoint=merged, plugin=plugin_path)
    # A name with a plugin and a checkpoint without one.
    with pytest.raises(CheckpointError, match="plugin: checkpoint has none"):
        build_model("stable_sam_tiny", checkpoint=sam_path)
    # A plugin file with a tensor missing and one too many.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(plugin_path), "pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    dropped = "mask_decoder.transformer.layers.1.plugin.dsp.dw.bias"
    state.pop(dropped)
    state["mask_decoder.transformer.layers.1.plugin.dsp.extra"] = torch.zeros(2)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        build_model(checkpoint=sam_path, plugin=bad)
    assert dropped in err.value.missing
    assert "mask_decoder.transformer.layers.1.plugin.dsp.extra" in err.value.unexpected
    # Tensors that are not the plugin's.
    state = {"mask_decoder.iou_token.weight": torch.zeros(1, 64)}
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="not the plugin's"):
        build_model(checkpoint=sam_path, plugin=bad)


def test_stable_names_need_a_plugin():
    with pytest.raises(ValueError, match="no published weights"):
        build_model("stable_sam_vit_b")


def test_one_plugin_file_fits_every_sam_and_focsam_size(tmp_path):
    """SAM ViT-B/L/H and FocSAM ViT-B/L/H share the 256-wide decoder: one plugin file goes on
    each (checked against their full key tables; meta tensors, so nothing is allocated)."""
    from steadysam.weights.files import expected_shapes, with_plugin

    torch.manual_seed(0)
    donor = build_sam(dataclasses.replace(sam_config("sam_tiny"), prompt_embed_dim=256))
    attach_plugin(donor, PluginConfig(drp_token="iou"))
    path = save_plugin_checkpoint(donor, tmp_path / "plugin.safetensors")
    for base in (
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "focsam_vit_b",
        "focsam_vit_l",
        "focsam_vit_h",
    ):
        config = sam_config(base)
        state = {k: torch.empty(s, device="meta") for k, s in expected_shapes(config).items()}
        merged, full = with_plugin(config, state, path)
        assert merged.plugin == PluginConfig(drp_token="iou")
        assert merged.refiner == config.refiner
        assert sum(v.numel() for k, v in full.items() if is_plugin_key(k)) == 81_828
