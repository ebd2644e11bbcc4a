"""Time the default FocusRefiner on CPU: 1 x 256 x 64 x 64 embedding, quarter-image focus box.

Usage: .venv/bin/python bench/bench_refiner.py [--runs N] [--threads T] [--box L T R B]
"""

from __future__ import annotations

import argparse
import time

import torch
from floor import count_gflops, matmul_peak_gflops

from steadysam.memory import retain_freed_memory
from steadysam.models.focus_refiner import FocusRefiner, box_mask, focus_box


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--box", type=int, nargs=4, default=[256, 256, 768, 768])
    ap.add_argument("--expand", type=float, default=1.4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    retain_freed_memory()  # as the Predictor does

    model = FocusRefiner().eval()
    feats = torch.randn(1, 256, 64, 64)
    token = torch.randn(1, 1, 256)
    # Box given before expansion: turn it into "coarse logits" and go through focus_box.
    left, top, right, bottom = args.box
    logits = torch.full((1, 1, 1024, 1024), -1.0)
    logits[..., top:bottom, left:right] = 1.0
    boxes = focus_box(logits, 1024, args.expand)
    mask = box_mask(boxes, 1024)
    print(f"box {args.box} expanded x{args.expand} -> {boxes[0].tolist()}")

    focus = torch.nn.functional.adaptive_max_pool2d(mask, (64, 64))[:, 0]
    counts = []
    for blk in model.blocks:
        pos = blk.window_index(64, 64, focus.device)
        counts.append(int(focus.reshape(1, -1)[:, pos].amax(-1).ne(0).sum()))
    print(f"selected windows per block (of 16): {counts}, total {sum(counts)}")

    with torch.inference_mode():
        for _ in range(2):
            model(feats, mask, token)
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            model(feats, mask, token)
            times.append(time.perf_counter() - t0)
    ms = [1e3 * t for t in times]
    print(
        f"threads={args.threads} runs={args.runs} min {min(ms):.1f} ms, "
        f"median {sorted(ms)[len(ms) // 2]:.1f} ms, per window {min(ms) / sum(counts):.2f} ms"
    )
    # Window self-attention runs in SDPA, which the counter does not see: q k^T and p v over
    # N = S^2 tokens and N + 1 keys (the zero slot), C channels, per selected window.
    n, c = model.blocks[0].window_size ** 2, feats.shape[1]
    gflop = (
        count_gflops(lambda: model(feats, mask, token)) + sum(counts) * 4 * n * (n + 1) * c / 1e9
    )
    peak = matmul_peak_gflops()
    print(
        f"fp32 floor: {gflop:.1f} GFLOP at the {peak:.0f} GFLOP/s matmul peak = "
        f"{1e3 * gflop / peak:.0f} ms"
    )


if __name__ == "__main__":
    main()
