"""Stable-SAM's plugin kernels (plugin_kernels.c) as functions on torch tensors."""

from __future__ import annotations

import ctypes

import torch

from .build import enabled, load

_P, _I, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int


class PluginKernels:
    """The compiled ``offset_head``, ``route_mlp`` and ``sample_mix`` (float32 CPU tensors
    only)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.offset_head.argtypes = [_P, _I, _I, _I, _I, _P, _P, _I, _P, _P, _F, _P, _P, _P, _INT]
        lib.offset_head.restype = ctypes.c_int
        lib.sample_mix.argtypes = [_P, _P, _P, _INT, _INT, _P, _P, _I, _I, _I, _I, _P, _P, _INT]
        lib.gelu.argtypes = [_P, _P, _I]
        lib.route_mlp.argtypes = [_P, _I, _I, _P, _P, _I, _P, _P, _F, _P, _P, _P]
        for fn in (lib.sample_mix, lib.gelu, lib.route_mlp):
            fn.restype = None

    def offset_head(
        self,
        xs: torch.Tensor,
        size: tuple[int, int],
        dw: torch.nn.Conv2d,
        norm: torch.nn.LayerNorm,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        """``F.linear(F.gelu(norm(dw(xs))), weight, bias)`` for tokens xs B x hw x C on an
        h x w grid, a depthwise k x k ``dw`` with zero padding k // 2 and a 2 x C ``weight``
        -> B x h x w x 2, without a full-size intermediate map."""
        b, n, c = xs.shape
        h, w = size
        k = dw.kernel_size[0]
        assert n == h * w and dw.weight.shape == (c, 1, k, k) and weight.shape == (2, c)
        taps = _f32(dw.weight).view(c, k * k).t().contiguous()  # (k * k) x C, tap-major
        # Locals: a contiguous copy must outlive the call that reads its pointer.
        xs, dw_b, ln_w, ln_b = _f32(xs), _f32(dw.bias), _f32(norm.weight), _f32(norm.bias)
        weight, bias = _f32(weight), _f32(bias)
        out = xs.new_empty(b, h, w, 2)
        failed = self._lib.offset_head(
            xs.data_ptr(),
            b,
            h,
            w,
            c,
            taps.data_ptr(),
            dw_b.data_ptr(),
            k,
            ln_w.data_ptr(),
            ln_b.data_ptr(),
            norm.eps,
            weight.data_ptr(),
            bias.data_ptr(),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        if failed:
            raise MemoryError(f"offset_head: no memory for {w} x {c} row buffers")
        return out

    def sample_mix(
        self,
        src: torch.Tensor,
        keys: torch.Tensor,
        pe: torch.Tensor,
        offsets: torch.Tensor,
        alpha: torch.Tensor,
        size: tuple[int, int],
        deformed_pe: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stable-SAM's routed keys and values in one pass (see plugin_kernels.c):

            values = lerp(keys, bilinear(src, p + offsets), alpha)
            keys'  = values + pe                              (grid PE)
                   = values + lerp(pe, bilinear(pe, p + offsets), alpha)   (deformed PE)

        src, keys: B x hw x C; pe: 1|B x hw x C; offsets: B x h x w x 2 (dx, dy) in cells;
        alpha: B (weight of the deformed features) -> (values, keys'), each B x hw x C."""
        b, n, c = keys.shape
        h, w = size
        src, keys, pe = _f32(src), _f32(keys), _f32(pe)
        offsets, alpha = _f32(offsets), _f32(alpha.reshape(b))
        assert src.shape == keys.shape and pe.shape[1:] == (n, c) and pe.shape[0] in (1, b)
        assert offsets.numel() == 2 * b * n and n == h * w
        values, keys_out = torch.empty_like(keys), torch.empty_like(keys)
        self._lib.sample_mix(
            src.data_ptr(),
            keys.data_ptr(),
            pe.data_ptr(),
            int(pe.shape[0] != 1),
            int(deformed_pe),
            offsets.data_ptr(),
            alpha.data_ptr(),
            b,
            h,
            w,
            c,
            values.data_ptr(),
            keys_out.data_ptr(),
            torch.get_num_threads(),
        )
        return values, keys_out

    def route_mlp(
        self,
        token: torch.Tensor,
        fc1: torch.nn.Linear,
        norm: torch.nn.LayerNorm,
        fc2: torch.nn.Linear,
    ) -> torch.Tensor:
        """``fc2(gelu(norm(fc1(token)))).softmax(-1)`` for B x C tokens and a 2-output fc2
        -> B x 2."""
        b, c = token.shape
        hidden = fc1.out_features
        assert fc1.in_features == c and fc2.in_features == hidden and fc2.out_features == 2
        token, w1, b1 = _f32(token), _f32(fc1.weight), _f32(fc1.bias)
        ln_w, ln_b, w2, b2 = _f32(norm.weight), _f32(norm.bias), _f32(fc2.weight), _f32(fc2.bias)
        out = token.new_empty(b, 2)
        self._lib.route_mlp(
            token.data_ptr(),
            b,
            c,
            w1.data_ptr(),
            b1.data_ptr(),
            hidden,
            ln_w.data_ptr(),
            ln_b.data_ptr(),
            norm.eps,
            w2.data_ptr(),
            b2.data_ptr(),
            out.data_ptr(),
        )
        return out

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """The GELU the head computes, elementwise (for tests)."""
        x = _f32(x)
        out = torch.empty_like(x)
        self._lib.gelu(x.data_ptr(), out.data_ptr(), x.numel())
        return out


def _f32(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise TypeError(f"compiled kernels take float32 CPU tensors, not {t.dtype} on {t.device}")
    return t.contiguous()


_kernels: list[PluginKernels | None] = []


def plugin_kernels() -> PluginKernels | None:
    """The plugin kernels, compiled on first use; None where they are unavailable or switched
    off (``STEADYSAM_NATIVE=0``)."""
    if not enabled():
        return None
    if not _kernels:
        lib = load("plugin_kernels")
        _kernels.append(None if lib is None else PluginKernels(lib))
    return _kernels[0]
