"""Export a steadysam model to ONNX: image encoder, prompt encoder + mask decoder (with a
Stable-SAM plugin inside), FocSAM's refiner in dense form, HQ-SAM's once-per-image fusion,
each with its JSON sidecar, and an optional int8 decoder.

    from steadysam.onnx.export import export_onnx
    export_onnx(build_model("demo_focsam"), "onnx/demo_focsam", name="demo_focsam")

Graphs are traced with PyTorch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17) under ``steadysam.use_fast_paths(False)``: the reference math, plain ONNX ops.
Each graph is run once in onnxruntime on its trace inputs and compared with PyTorch before
its files are written; the largest difference is kept in the sidecar.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..atomic import atomic_path, atomic_write_text
from ..fastpath import use_fast_paths
from ..models.sam import Sam
from ..weights.digest import state_digest
from .graphs import DenseRefinerGraph, EncoderGraph, HQFusionGraph, decoder_graph
from .sidecar import FORMAT, FORMAT_VERSION, MANIFEST, io_spec

OPSET = 17  # LayerNormalization (17) and GridSample (16) as single ops
# An export may not differ from PyTorch by more than this on its own trace inputs.
EXPORT_TOLERANCE = 1e-3


class OnnxExportError(RuntimeError):
    """The traced graph does not reproduce the model (or onnxruntime cannot run it)."""


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike,
    *,
    name: str | None = None,
    int8: bool = False,
    num_points: int = 3,
) -> Path:
    """Write ``model``'s graphs and sidecars into ``out_dir`` (created; files replaced
    atomically, the manifest last, so an interrupted export is never taken for a whole one).

    Arguments:
      model: a SAM / FocSAM / Stable-SAM / HQ-SAM model (``steadysam.build_model``).
      out_dir: the folder to write.
      name: the model's name for the sidecars (e.g. the registry name or checkpoint file).
      int8: also write ``decoder_int8.onnx``, the decoder with onnxruntime's dynamic int8
        quantisation of its MatMul / Gemm weights.
      num_points: points in the decoder's trace input (the graph takes any number).

    Returns:
      the folder.
    """
    import onnxruntime  # noqa: F401  (fail before the slow tracing when it is missing)

    if not isinstance(model, Sam):
        raise TypeError(f"model must be a steadysam Sam model, got {type(model).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()  # fp32 graphs; the caller's model is left as is
    cfg = model.config
    base = _base_sidecar(model, name)
    graphs: dict[str, dict[str, Any]] = {}

    with _tracing(model):
        graphs["encoder"] = _export_encoder(model, out, base)
        if model.is_hq:
            graphs["hq_fusion"] = _export_hq_fusion(model, out, base)
        graphs["decoder"] = _export_decoder(model, out, base, num_points)
        if model.refiner is not None:
            graphs["refiner"] = _export_refiner(model, out, base)
    if int8:
        graphs["decoder_int8"] = _quantize_decoder(out, graphs["decoder"])

    for graph, sidecar in graphs.items():
        atomic_write_text(out / f"{graph}.json", json.dumps(sidecar, indent=2) + "\n")
    manifest = {
        **base,
        "graphs": list(graphs),
        "config": cfg.to_dict(),
        "refiner": model.refiner is not None,
        "plugin": cfg.plugin is not None,
        "hq": _hq_facts(model),
        "preprocessing": _preprocessing(model),
        "mask_threshold": model.mask_threshold,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, default=list) + "\n")
    return out


# -- the graphs ------------------------------------------------------------------------------
def _export_encoder(model: Sam, out: Path, base: dict) -> dict:
    S = model.image_size
    c, (h, w) = model.prompt_encoder.embed_dim, model.prompt_encoder.image_embedding_size
    image = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(0))
    inputs = [io_spec("image", [1, 3, S, S], "float32", "normalised, zero-padded model input")]
    outputs = [io_spec("image_embeddings", [1, c, h, w], "float32", "the image embedding")]
    if model.is_hq:
        outputs.append(
            io_spec(
                "early_features",
                [1, h, w, model.mask_decoder.vit_dim],
                "float32",
                "HQ-SAM: the encoder's tokens after its first global-attention block (input "
                "of the hq_fusion graph)",
            )
        )
    diff = _export(EncoderGraph(model).eval(), (image,), out / "encoder.onnx", inputs, outputs, {})
    return {
        **base,
        "graph": "encoder",
        "file": "encoder.onnx",
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": _preprocessing(model),
        "export_check": {"max_abs_diff": diff},
    }


def _export_hq_fusion(model: Sam, out: Path, base: dict) -> dict:
    pe = model.prompt_encoder
    c, (h, w) = pe.embed_dim, pe.image_embedding_size
    d = model.mask_decoder.vit_dim
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(1, c, h, w, generator=g)
    early = torch.randn(1, h, w, d, generator=g)
    inputs = [
        io_spec("image_embeddings", [1, c, h, w], "float32", "the encoder's embedding"),
        io_spec("early_features", [1, h, w, d], "float32", "the encoder's early feature"),
    ]
    outputs = [
        io_spec(
            "hq_features",
            [1, c // 8, 4 * h, 4 * w],
            "float32",
            "HQ-SAM's global-local fusion (embedding_encoder(embedding) + "
            "compress_vit_feat(early feature)), the decoder's hq_features input",
        )
    ]
    diff = _export(
        HQFusionGraph(model).eval(), (emb, early), out / "hq_fusion.onnx", inputs, outputs, {}
    )
    return {
        **base,
        "graph": "hq_fusion",
        "file": "hq_fusion.onnx",
        "inputs": inputs,
        "outputs": outputs,
        "run_at": "once per image, after the encoder; its output is fed to every decoder run "
        "on that image (as steadysam.Predictor computes it once per image)",
        "export_check": {"max_abs_diff": diff},
    }


def _hq_facts(model: Sam) -> dict[str, Any] | None:
    """The manifest's / decoder sidecar's HQ-SAM entry (None for other models)."""
    if not model.is_hq:
        return None
    return {
        "fusion_graph": "hq_fusion",
        "early_features": "encoder output 'early_features'",
        "decoder_inputs": ["hq_features", "hq_token_only"],
        "token_only": model.config.hq.token_only,
        "note": "token_only is the model's hq_token_only default (HQConfig.token_only), "
        "which OnnxPredictor uses when hq_token_only is not given; HQ-SAM returns one mask "
        "per prompt: decoder output 0 is the single-mask answer, 1 the multimask one (SAM's "
        "best token by predicted IoU)",
    }


def _export_decoder(model: Sam, out: Path, base: dict, num_points: int) -> dict:
    pe = model.prompt_encoder
    c, (h, w) = pe.embed_dim, pe.image_embedding_size
    k = model.mask_decoder.num_mask_tokens
    g = torch.Generator().manual_seed(1)
    S = model.image_size
    emb = torch.randn(1, c, h, w, generator=g)
    coords = torch.rand(1, num_points, 2, generator=g) * S
    labels = torch.tensor([[1.0] * (num_points - 1) + [-1.0]])
    labels[0, 1 : num_points - 1] = 0.0
    mask = torch.randn(1, 1, 4 * h, 4 * w, generator=g)
    has = torch.ones(1)
    inputs = [
        io_spec("image_embeddings", [1, c, h, w], "float32", "encoder (or refiner) output"),
        io_spec(
            "point_coords",
            [1, "num_points", 2],
            "float32",
            "(x, y) in model-input pixels: the clicks, then one padding point (0, 0) when there "
            "is no box, else the box's two corners",
        ),
        io_spec(
            "point_labels",
            [1, "num_points"],
            "float32",
            "1 foreground, 0 background, -1 padding, 2 box top-left, 3 box bottom-right",
        ),
        io_spec("mask_input", [1, 1, 4 * h, 4 * w], "float32", "previous low-res logits"),
        io_spec("has_mask_input", [1], "float32", "1 uses mask_input, 0 ignores it"),
    ]
    outputs = [
        io_spec(
            "low_res_masks",
            [1, k, 4 * h, 4 * w],
            "float32",
            "logits of every mask token: index 0 the single-mask output, 1.. the multimask outputs",
        ),
        io_spec("iou_predictions", [1, k], "float32", "predicted IoU of each mask"),
        io_spec(
            "mask_tokens",
            [1, k, c],
            "float32",
            "the mask tokens' transformer outputs (token 0: FocSAM's refiner query)",
        ),
    ]
    args: tuple[torch.Tensor, ...] = (emb, coords, labels, mask, has)
    if model.is_hq:
        hq = torch.randn(1, c // 8, 4 * h, 4 * w, generator=g)
        # Trace with the SAM part on, so the check below compares it too.
        args += (hq, torch.zeros(1))
        inputs += [
            io_spec(
                "hq_features",
                [1, c // 8, 4 * h, 4 * w],
                "float32",
                "the image's HQ-SAM fusion (hq_fusion graph output)",
            ),
            io_spec(
                "hq_token_only",
                [1],
                "float32",
                "1 returns the HQ mask alone, 0 SAM's plus the HQ mask's logits (default: the "
                "sidecar's hq.token_only)",
            ),
        ]
        outputs = [
            io_spec(
                "low_res_masks",
                [1, 2, 4 * h, 4 * w],
                "float32",
                "HQ-SAM's one mask per prompt, both ways: index 0 the single-mask answer (SAM "
                "token 0), 1 the multimask answer (SAM's token among 1.. with the highest "
                "predicted IoU); each plus the HQ mask's logits (or the HQ mask alone)",
            ),
            io_spec("iou_predictions", [1, 2], "float32", "SAM's predicted IoU of the token used"),
        ]
    dyn = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    diff = _export(
        decoder_graph(model).eval(),
        args,
        out / "decoder.onnx",
        inputs,
        outputs,
        dyn,
    )
    plugin = model.config.plugin
    return {
        **base,
        "graph": "decoder",
        "file": "decoder.onnx",
        "inputs": inputs,
        "outputs": outputs,
        "decoder": type(model.mask_decoder).__name__,
        "num_multimask_outputs": model.mask_decoder.num_multimask_outputs,
        "mask_threshold": model.mask_threshold,
        "hq": _hq_facts(model),
        "plugin": None
        if plugin is None
        else {
            "included": True,
            "note": "the Stable-SAM plugin runs inside this graph (it is part of the mask "
            "decoder); no separate plugin graph",
            "config": dataclasses.asdict(plugin),
        },
        "export_check": {"max_abs_diff": diff},
    }


def _export_refiner(model: Sam, out: Path, base: dict) -> dict:
    pe = model.prompt_encoder
    c, (h, w) = pe.embed_dim, pe.image_embedding_size
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(1, c, h, w, generator=g)
    grid = torch.zeros(1, 1, h, w)
    grid[..., h // 4 : h // 2 + 1, w // 3 : w - 1] = 1.0  # some windows in focus, some not
    token = torch.randn(1, 1, c, generator=g)
    inputs = [
        io_spec("image_embeddings", [1, c, h, w], "float32", "the encoder's embedding"),
        io_spec(
            "focus_grid",
            [1, 1, h, w],
            "float32",
            "1.0 where the expanded box of the coarse mask touches a grid cell, else 0.0",
        ),
        io_spec("query_token", [1, 1, c], "float32", "decoder mask token 0 of the coarse pass"),
    ]
    outputs = [io_spec("refined_embeddings", [1, c, h, w], "float32", "the refined embedding")]
    diff = _export(
        DenseRefinerGraph(model).eval(),
        (emb, grid, token),
        out / "refiner.onnx",
        inputs,
        outputs,
        {},
    )
    ratio = model.refiner.expand_ratio
    return {
        **base,
        "graph": "refiner",
        "file": "refiner.onnx",
        "inputs": inputs,
        "outputs": outputs,
        "focus": {
            "expand_ratio": list(ratio) if isinstance(ratio, tuple) else ratio,
            "input_size": model.image_size,
            "grid_size": [h, w],
            "box": "coarse low-res logits upsampled bilinearly (align_corners=False) to "
            "input_size^2, > 0; their bounding box (whole image if empty), scaled by "
            "expand_ratio about its centre in float32, rounded half-to-even, clipped; "
            "focus_grid = the box max-pooled (adaptive bins) to grid_size",
            "refine_at": "the refiner runs once per object, at the 2nd click, on the "
            "single-mask decoder pass of that click (the coarse pass)",
        },
        "dense_form": "every window of every block is computed and its update kept where "
        "it touches the focus grid; equal to the PyTorch refiner, which computes the "
        "touched windows only",
        "export_check": {"max_abs_diff": diff},
    }


def _quantize_decoder(out: Path, fp32: dict) -> dict:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # quantize_dynamic logs a generic "consider pre-processing" advice on the root logger.
    root.setLevel(logging.ERROR)
    try:
        with atomic_path(out / "decoder_int8.onnx", suffix=".onnx") as tmp:
            quantize_dynamic(
                out / "decoder.onnx",
                tmp,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
    finally:
        root.setLevel(level)
    return {
        **fp32,
        "graph": "decoder_int8",
        "file": "decoder_int8.onnx",
        "quantization": {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "op_types": ["MatMul", "Gemm"],
            "note": "weights int8 per tensor, activations quantised at run time; agreement "
            "with the fp32 graph is measured in docs/onnx.md, not guaranteed",
        },
        "export_check": None,
    }


# -- tracing -----------------------------------------------------------------------------------
def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[dict],
    outputs: list[dict],
    dynamic_axes: dict[str, dict[int, str]],
) -> float:
    """Trace ``module`` into ``path`` and check it in onnxruntime -> the max abs difference."""
    import onnxruntime as ort

    in_names = [s["name"] for s in inputs]
    out_names = [s["name"] for s in outputs]
    with torch.no_grad(), use_fast_paths(False):
        expected = [t.detach().numpy() for t in _as_tuple(module(*args))]
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        # The tracer warns about every Python number it records; the ORT check below is the
        # test that matters.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            tmp,
            dynamo=False,
            opset_version=OPSET,
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=dynamic_axes or None,
            do_constant_folding=True,
        )
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = session.run(out_names, {n: a.numpy() for n, a in zip(in_names, args, strict=True)})
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
        if not diff <= EXPORT_TOLERANCE:
            raise OnnxExportError(
                f"{path.name}: onnxruntime differs from PyTorch by {diff:.3g} on the trace "
                f"inputs (tolerance {EXPORT_TOLERANCE}): the graph does not reproduce the model"
            )
    return diff


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


@contextlib.contextmanager
def _tracing(model: Sam) -> Iterator[None]:
    """The state the graphs are traced in, undone on exit: eval mode, reference math,
    embedding_bag as gathers, static LayerNorm shapes, hard plugin routing as a traced 0/1
    weight, and autograd on with parameters requiring grad.

    The last is a workaround for inference shortcuts chosen by autograd state rather than by
    ``use_fast_paths``: when this was written, the Stable-SAM plugin's soft-routing mix turned
    a single prompt's weight into a Python float (``float(a)``, then ``lerp(..., out=)``),
    which a trace would freeze into a constant. Remove it once every shortcut consults the
    switch (the encoder, decoder and refiner already export under the switch alone)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    # torch.onnx.export puts the traced module back in *its* training mode afterwards, which
    # for a fresh wrapper is True, and that reaches the model's modules: keep theirs.
    modes = [(m, m.training) for m in model.modules()]
    with contextlib.ExitStack() as stack:
        stack.enter_context(use_fast_paths(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(_patched(F, "embedding_bag", _gathered_bags))
        stack.enter_context(_patched(F, "layer_norm", _static_layer_norm))
        stack.enter_context(_traceable_routing(model))
        model.eval()
        for p, _ in flags:
            p.requires_grad_(True)
        try:
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, training in modes:
                m.training = training


_embedding_bag = F.embedding_bag


def _gathered_bags(input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any):
    """``F.embedding_bag(idx N x K, rows, per_sample_weights=N x K, mode="sum")`` as
    ``sum_k w * rows[idx]``: ONNX has no embedding_bag, and the TorchScript exporter's loop
    form of it runs one bag at a time. Any other use goes to the original function."""
    w = kwargs.get("per_sample_weights")
    if input.dim() == 2 and w is not None and kwargs.get("mode") == "sum" and not args:
        return (weight[input] * w[..., None].to(weight.dtype)).sum(1)
    return _embedding_bag(input, weight, *args, **kwargs)


_layer_norm = F.layer_norm


def _static_layer_norm(input: torch.Tensor, normalized_shape: Any, *args: Any, **kwargs: Any):
    """``F.layer_norm`` with ``normalized_shape`` as Python ints: taken from ``x.shape`` it is
    a traced value, which the exporter cannot make an attribute of LayerNormalization. It is
    the weight's shape, fixed for the model, so freezing it changes nothing."""
    return _layer_norm(input, tuple(int(n) for n in normalized_shape), *args, **kwargs)


@contextlib.contextmanager
def _patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """``owner.attr = value`` within the block (tracing only: export is not thread-safe)."""
    original = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, original)


class _HardRouter(nn.Module):
    """A plugin's router with hard routing folded in: weights exactly 0 / 1 (deformed iff
    above the threshold), as a tensor the trace records (the plugin's hard-routing shortcuts
    decide in Python, which a trace would freeze)."""

    def __init__(self, drp: nn.Module, threshold: float) -> None:
        super().__init__()
        self.drp, self.threshold = drp, threshold

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        alpha = self.drp(token)
        hard = (alpha[:, :1] > self.threshold).to(alpha.dtype)
        return torch.cat([hard, 1 - hard], dim=-1) + 0 * alpha  # + 0 * alpha: keep autograd


@contextlib.contextmanager
def _traceable_routing(model: Sam) -> Iterator[None]:
    changed = []
    for plugin in model.plugins():
        if plugin.routing == "hard":
            changed.append((plugin, plugin.drp))
            plugin.drp = _HardRouter(plugin.drp, plugin.hard_threshold)
            plugin.routing = "soft"
    try:
        yield
    finally:
        for plugin, drp in changed:
            plugin.drp, plugin.routing = drp, "hard"


# -- sidecar facts -----------------------------------------------------------------------------
def _base_sidecar(model: Sam, name: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": name or "unnamed",
        "weights_digest": state_digest(model),
        "steadysam_version": __version__,
        "torch_version": torch.__version__,
        "onnx_opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False) (TorchScript tracer)",
        "platform": platform.machine(),
    }


def _preprocessing(model: Sam) -> dict[str, Any]:
    conv = model.config.preprocess
    S = model.image_size
    common = {
        "convention": conv,
        "image_size": S,
        "long_side": S,
        "pixel_mean": [float(v) for v in model.pixel_mean],
        "pixel_std": [float(v) for v in model.pixel_std],
        "layout": "1 x 3 x S x S float32, channels first",
        "padding": "zeros (after normalisation) at the bottom / right up to S x S",
    }
    if conv == "sam":
        return {
            **common,
            "channel_order": "RGB",
            "pad_multiple": 1,
            "resize": "PIL bilinear (antialiased) resize of the uint8 RGB image so the long "
            "side is S (int(side * S / long + 0.5)), then (x - mean) / std",
            "coordinates": "x * w'/W, y * h'/H with (h', w') the resized size",
        }
    return {
        **common,
        "channel_order": "BGR (normalised with the listed RGB-ordered mean / std, as FocSAM)",
        "pad_multiple": 32,
        "resize": "(x - mean) / std on the uint8 image in BGR order, zero-pad to multiples "
        "of 32 (Hp x Wp), bilinear resize without antialias (align_corners=False) so the "
        "long side is S",
        "coordinates": "x * w'/Wp, y * h'/Hp with (h', w') the resized size",
    }
