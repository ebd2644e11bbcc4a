"""bf16 inference speed, side by side in one run: official segment-anything fp32, steadysam
fp32 and steadysam bf16 (``Predictor(precision="bf16")``'s modules), same weights.

    python bench/bench_bf16.py                 # ViT-B encoder, quarter-image refiner
    python bench/bench_bf16.py --vit-h         # + the ViT-H embedding (ours fp32 vs bf16)
    python bench/bench_bf16.py --vit-h --official-vit-h   # + official ViT-H fp32 (~1 min)

Prints min-of-N wall times and ratios to official fp32. On a CPU without bf16 instructions
(AVX512_BF16 / AMX) bf16 runs in oneDNN's emulation, slower than fp32: the bench says so and
measures it anyway (``STEADYSAM_BF16_EMULATION=1``), so that the figure of that machine is
known too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from official_sam import build_official_sam  # noqa: E402

from steadysam import build_model  # noqa: E402
from steadysam.memory import retain_freed_memory  # noqa: E402
from steadysam.models.focus_refiner import FocusRefiner, box_mask, focus_box  # noqa: E402
from steadysam.precision import EMULATION_ENV, CastModule, bf16_support  # noqa: E402


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """min wall time of each function, calls interleaved so all see the same machine."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():  # warm-up: oneDNN primitives, allocator
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def bench_encoder(name: str, arch: tuple, repeats: int, official_too: bool) -> dict:
    torch.manual_seed(0)
    official = build_official_sam(*arch).eval()
    ours = build_model(name, random_init=True).eval()
    ours.load_state_dict(official.state_dict())
    bf16 = CastModule(ours.image_encoder, torch.bfloat16)
    x = torch.randn(1, 3, 1024, 1024)
    fns = {"ours_fp32": lambda: ours.image_encoder(x), "ours_bf16": lambda: bf16(x)}
    if official_too:
        fns = {"official_fp32": lambda: official.image_encoder(x), **fns}
    else:
        del official
    with torch.inference_mode():
        t = _interleaved(fns, repeats)
        ref = ours.image_encoder(x)
        rel = _rel(bf16(x), ref)
    res = {f"{k}_s": v for k, v in t.items()}
    res["bf16_rel_error"] = rel
    if official_too:
        res["ratio_fp32"] = t["ours_fp32"] / t["official_fp32"]
        res["ratio_bf16"] = t["ours_bf16"] / t["official_fp32"]
    return res


def bench_refiner(repeats: int) -> dict:
    torch.manual_seed(0)
    model = FocusRefiner().eval()
    bf16 = CastModule(model, torch.bfloat16)
    feats, token = torch.randn(1, 256, 64, 64), torch.randn(1, 1, 256)
    logits = torch.full((1, 1, 1024, 1024), -1.0)
    logits[..., 256:768, 256:768] = 1.0  # a quarter of the image, expanded x1.4 below
    mask = box_mask(focus_box(logits, 1024, 1.4), 1024)
    with torch.inference_mode():
        t = _interleaved(
            {"fp32": lambda: model(feats, mask, token), "bf16": lambda: bf16(feats, mask, token)},
            repeats,
        )
        rel = _rel(bf16(feats, mask, token), model(feats, mask, token))
    return {"fp32_ms": 1e3 * t["fp32"], "bf16_ms": 1e3 * t["bf16"], "bf16_rel_error": rel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--vit-h", action="store_true", help="also the ViT-H embedding")
    ap.add_argument("--official-vit-h", action="store_true", help="with official ViT-H fp32")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    native, why = bf16_support("cpu")
    if not native:
        os.environ[EMULATION_ENV] = "1"
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}",
        "bf16": "native" if native else "EMULATED",
        "bf16_support": why,
    }
    print(f"# {res['machine']}; bf16 {res['bf16']}: {why}", flush=True)
    res["vit_b"] = r = bench_encoder("sam_vit_b", (768, 12, 12, (2, 5, 8, 11)), args.repeats, True)
    print(
        f"ViT-B encoder 1024^2: official fp32 {r['official_fp32_s']:.2f} s, ours fp32 "
        f"{r['ours_fp32_s']:.2f} s ({r['ratio_fp32']:.2f}x), ours bf16 {r['ours_bf16_s']:.2f} s "
        f"(**{r['ratio_bf16']:.2f}x** official fp32; relative error {r['bf16_rel_error']:.1e})",
        flush=True,
    )
    res["refiner"] = r = bench_refiner(max(args.repeats, 5))
    print(
        f"FocSAM refiner, 12 blocks, quarter-image box x1.4: fp32 {r['fp32_ms']:.0f} ms, "
        f"bf16 **{r['bf16_ms']:.0f} ms** (relative error {r['bf16_rel_error']:.1e})",
        flush=True,
    )
    if args.vit_h:
        arch = (1280, 32, 16, (7, 15, 23, 31))
        res["vit_h"] = r = bench_encoder("sam_vit_h", arch, 1, args.official_vit_h)
        line = f"ViT-H embedding: ours fp32 {r['ours_fp32_s']:.1f} s, "
        line += f"bf16 **{r['ours_bf16_s']:.1f} s**"
        if args.official_vit_h:
            line += f", official fp32 {r['official_fp32_s']:.1f} s"
        print(line + f" (relative error {r['bf16_rel_error']:.1e})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
