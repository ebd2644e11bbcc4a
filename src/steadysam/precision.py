"""Inference precision: ``fp32`` (the reference) or ``bf16`` (encoder, refiner and decoder in
bfloat16 where the hardware has bf16 arithmetic).

``Predictor(model, precision="bf16")`` runs a bf16 twin of the model (:func:`lowered`): the
image encoder, the focus refiner and the mask decoder (with any Stable-SAM plugin) are bf16
copies of the model's modules, made once when the predictor is created. The prompt encoder
stays fp32: click coordinates go through random Fourier features whose high frequencies bf16's
8-bit mantissa cannot resolve (a 1024-px coordinate would move by up to 4 px). Its outputs are
cast to bf16 for the decoder, and the decoder's outputs (logits, IoU predictions, tokens) come
back in fp32, so masks, thresholds, focus boxes and fed-back logits are computed as in fp32.

bf16 is only fast on CPUs with bf16 instructions (x86: AVX512_BF16 or AMX-BF16); elsewhere
oneDNN emulates it, slower than fp32. There ``precision="bf16"`` is a :class:`PrecisionError`
naming the missing flag, unless ``STEADYSAM_BF16_EMULATION=1`` asks for bf16's numerics anyway
(to measure its quality on such a machine).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.nn as nn

from .cli_common import PRECISIONS

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EMULATION_ENV = "STEADYSAM_BF16_EMULATION"


class PrecisionError(ValueError):
    """The requested precision cannot run (fast) on this hardware (a bad option here: the
    CLI exits with code 2)."""


def check_precision(value: Any) -> str:
    """``value`` if it is one of :data:`PRECISIONS`, else a ValueError naming it."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "this CPU"


def bf16_support(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(whether ``device`` has native bf16 arithmetic, a sentence saying which feature decided)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bf16" if ok else "this GPU has no bf16 support"
    if device.type != "cpu":
        return False, f"bf16 is not supported here on {device.type} devices"
    avx512_bf16 = bool(torch.cpu._is_avx512_bf16_supported())
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    if avx512_bf16 or amx:
        flags = " and ".join(n for n, v in (("AVX512_BF16", avx512_bf16), ("AMX", amx)) if v)
        return True, f"the CPU has {flags}"
    return False, (
        f"{_cpu_name()} has neither AVX512_BF16 nor AMX-BF16 (CPU flags avx512_bf16 / "
        "amx_bf16), so oneDNN would emulate bf16, slower than fp32"
    )


def require_precision(precision: str, device: torch.device | str = "cpu") -> None:
    """Raise :class:`PrecisionError` when ``precision`` cannot run natively on ``device``
    (bf16 without bf16 hardware, unless ``STEADYSAM_BF16_EMULATION=1``)."""
    if check_precision(precision) == "fp32":
        return
    ok, why = bf16_support(device)
    if ok or os.environ.get(EMULATION_ENV) == "1":
        return
    raise PrecisionError(
        f"precision bf16 needs bf16 hardware: {why}. Use precision fp32 (--precision fp32), "
        f"or set {EMULATION_ENV}=1 to run bf16 anyway (its numerics, e.g. to measure quality)"
    )


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors in ``value`` (nested tuples / lists / dicts) cast to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``module`` with its floating-point parameters and buffers in ``dtype``,
    made without an intermediate full-precision copy (ViT-H: 2.5 GB)."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for p in module.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for b in module.buffers():
            memo[id(b)] = b.detach().to(dtype) if b.is_floating_point() else b.clone()
    return copy.deepcopy(module, memo)


class CastModule(nn.Module):
    """Runs ``module``'s copy in ``dtype`` on inputs cast to ``dtype``; floating-point outputs
    are cast to ``out_dtype`` (None: left as they are). Attributes of the wrapped module are
    readable through the wrapper (``refiner.expand_ratio``, ``image_encoder.img_size``)."""

    def __init__(
        self, module: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.module = cast_copy(module, dtype).eval()
        self.dtype = dtype
        self.out_dtype = out_dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        return out if self.out_dtype is None else _cast(out, self.out_dtype)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def lowered(model: nn.Module, precision: str) -> nn.Module:
    """The model to run for ``precision``: ``model`` itself for fp32; for bf16 a shallow copy
    of the ``Sam`` model whose image encoder (bf16 embeddings out), refiner (bf16 embeddings
    out) and mask decoder (fp32 logits, IoU and tokens out) are bf16 copies; the prompt
    encoder and the pixel statistics are shared with ``model`` and stay fp32."""
    if check_precision(precision) == "fp32":
        return model
    dtype = DTYPES[precision]
    net = copy.copy(model)
    net._modules = dict(model._modules)  # copy.copy shares the dict: replace, then assign
    net.image_encoder = CastModule(model.image_encoder, dtype)
    net.mask_decoder = CastModule(model.mask_decoder, dtype, out_dtype=torch.float32)
    if getattr(model, "refiner", None) is not None:
        net.refiner = CastModule(model.refiner, dtype)
    return net.eval()
