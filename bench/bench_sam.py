"""Side-by-side speed of steadysam and official segment-anything, same weights, one run.

    python bench/bench_sam.py                 # ViT-B encoder, one click, ViT-H peak memory
    python bench/bench_sam.py --skip-memory   # faster

Prints min-of-N wall times and the ratio ours / official. fp32, CPU, torch threads = --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from floor import count_gflops, matmul_peak_gflops  # noqa: E402
from official_sam import SamPredictor, build_official_sam  # noqa: E402

from steadysam import Predictor, build_model  # noqa: E402
from steadysam.memory import retain_freed_memory  # noqa: E402
from steadysam.models.build import VIT_B  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def _min_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _official(arch: dict) -> torch.nn.Module:
    return build_official_sam(
        arch["encoder_embed_dim"],
        arch["encoder_depth"],
        arch["encoder_num_heads"],
        arch["encoder_global_attn_indexes"],
    )


def bench_encoder(repeats: int) -> dict:
    official = _official(VIT_B)
    ours = build_model("sam_vit_b", random_init=True)
    ours.load_state_dict(official.state_dict())
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        a, b = official.image_encoder(x), ours.image_encoder(x)  # warm-up and parity
        diff = (a - b).abs().max().item()
        t_off = t_ours = float("inf")
        for _ in range(repeats):  # interleaved so both see the same machine state
            t_off = min(t_off, _min_time(lambda: official.image_encoder(x), 1))
            t_ours = min(t_ours, _min_time(lambda: ours.image_encoder(x), 1))
    gflops = count_gflops(lambda: ours.image_encoder(x))  # every op is a matmul: bmm attention
    peak = matmul_peak_gflops()
    return {
        "official_s": t_off,
        "ours_s": t_ours,
        "ratio": t_ours / t_off,
        "max_abs_diff": diff,
        "gflop": gflops,
        "matmul_peak_gflops": peak,
        "floor_s": gflops / peak,
        "floor_ratio": gflops / peak / t_off,
    }


def bench_click(repeats: int) -> dict:
    from steadysam.datafiles import read_image

    official = _official(VIT_B)
    ours = build_model("sam_vit_b", random_init=True)
    ours.load_state_dict(official.state_dict())
    image = read_image(DATA / "DAVIS345" / "images" / "000.jpg")
    ref, pred = SamPredictor(official), Predictor(ours)
    ref.set_image(image)
    pred.set_image(image)
    h, w = image.shape[:2]
    pts = [(w // 2, h // 2, True), (w // 4, h // 4, False), (3 * w // 4, h // 2, True)]

    def ours_clicks():
        obj = pred.new_object(mode="focsam")
        for x, y, pos in pts:
            obj.click(x, y, pos)

    def official_clicks():
        prev = None
        for i in range(1, len(pts) + 1):
            pc = np.array([p[:2] for p in pts[:i]], float)
            pl = np.array([int(p[2]) for p in pts[:i]])
            _, _, prev = ref.predict(pc, pl, mask_input=prev, multimask_output=False)

    ours_clicks(), official_clicks()
    t_ours = t_off = float("inf")
    for _ in range(repeats):  # interleaved so both see the same machine state
        t_ours = min(t_ours, _min_time(ours_clicks, 1) / len(pts))
        t_off = min(t_off, _min_time(official_clicks, 1) / len(pts))
    return {
        "image": f"DAVIS345/000.jpg {w}x{h}",
        "official_ms": 1e3 * t_off,
        "ours_ms": 1e3 * t_ours,
        "ratio": t_ours / t_off,
    }


def _peak_rss_child(which: str) -> float:
    """Peak RSS growth (GiB) while computing one ViT-H embedding, in a fresh process: the
    kernel's high-water mark is reset after the model is built (/proc/self/clear_refs), so
    only the forward pass counts."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / "tests")!r})
torch.set_num_threads({torch.get_num_threads()})
if {which!r} == "official":
    from official_sam import build_official_sam
    m = build_official_sam(1280, 32, 16, (7, 15, 23, 31))
else:
    from steadysam import build_model
    m = build_model("sam_vit_h", random_init=True)
x = torch.randn(1, 3, 1024, 1024)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
with torch.inference_mode():
    m.image_encoder(x)
print((status("VmHWM:") - base) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc at its defaults (by default both implementations run with "
        "the settings steadysam's Predictor applies, see steadysam.memory)",
    )
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.default_malloc:
        os.environ["STEADYSAM_MALLOC_TUNING"] = "0"  # also for the Predictor below
    tuned = retain_freed_memory()
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, malloc {'tuned (both)' if tuned else 'default'}"
    }
    print(f"# {res['machine']}", flush=True)
    res["encoder_vit_b_1024"] = r = bench_encoder(args.repeats)
    print(
        f"image encoder ViT-B 1024^2: official {r['official_s']:.2f} s, ours {r['ours_s']:.2f} s, "
        f"ratio {r['ratio']:.2f} (max |diff| {r['max_abs_diff']:.1e})",
        flush=True,
    )
    print(
        f"  fp32 floor: {r['gflop']:.0f} GFLOP at the {r['matmul_peak_gflops']:.0f} GFLOP/s "
        f"matmul peak = {r['floor_s']:.2f} s = {r['floor_ratio']:.2f} x official",
        flush=True,
    )
    res["click_vit_b"] = r = bench_click(max(10 * args.repeats, 20))
    print(
        f"one click ({r['image']}, prompt enc + decoder + upsampling): official "
        f"{r['official_ms']:.1f} ms, ours {r['ours_ms']:.1f} ms, ratio {r['ratio']:.2f}",
        flush=True,
    )
    if not args.skip_memory:
        res["vit_h_peak_gib"] = r = {w: _peak_rss_child(w) for w in ("official", "ours")}
        print(
            f"ViT-H embedding peak RSS growth: official {r['official']:.2f} GiB, "
            f"ours {r['ours']:.2f} GiB",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
