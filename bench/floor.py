"""What the hardware allows: fp32 matmul throughput and the FLOPs of a forward pass.

A forward pass that does F floating-point operations in matmuls / convolutions cannot finish
in less than F / (peak matmul rate) on this machine in fp32, whatever the implementation; the
benchmarks print that floor next to the measured times.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import steadysam.models.common as common
from steadysam import use_fast_paths


def matmul_peak_gflops(repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of MKL and oneDNN on ViT-B's MLP matmul (4096 x 768 @ 768 x 3072)."""
    x, w = torch.randn(4096, 768), torch.randn(3072, 768)
    flops = 2 * 4096 * 768 * 3072
    candidates = [lambda: F.linear(x, w)]
    if common._ONEDNN_LINEAR is not None:
        op = common._ONEDNN_LINEAR
        candidates.append(lambda: op(x, w, None, "none", [], "none"))
    best = float("inf")
    with torch.inference_mode():
        for fn in candidates:
            fn()
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of the matmuls and convolutions ``fn`` runs (PyTorch's FlopCounterMode), on the
    reference math (``steadysam.use_fast_paths(False)``): no fused oneDNN op, whose FLOPs the
    counter does not know. CPU flash attention (SDPA) is not counted: callers add it."""
    with use_fast_paths(False), torch.inference_mode(), FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops() / 1e9
