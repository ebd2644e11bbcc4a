"""What HQ-SAM costs next to SAM, ViT-B, same weights, side by side in one run.

    python bench/bench_hq.py                  # 3 interleaved repeats of each measurement
    python bench/bench_hq.py --device cuda    # on a GPU (times synchronised)
    python bench/bench_hq.py --encoder-only --repeats 8   # before / after only, more repeats

Encoder (one 1024 x 1024 image): the image encoder as it was before it exposed the early
feature (``before``: the pre-change forward loop, replayed here on the same modules), the
encoder now for SAM (``encode(x)``) and for HQ-SAM (``encode(x, early_features=True)``, which
keeps the first global block's output alive instead of copying it), and the official
segment-anything / segment-anything-hq encoders for reference. The early-feature exposure
must not slow the encoder: the ``after / before`` ratios should be 1.00 within noise.

Click (prompt encoder + mask decoder + upsampling to a 854 x 480 frame; 3-click objects, the
previous logits fed back, as bench_stable_sam.py): SAM, HQ-SAM with the per-image global-local
fusion computed once (what ``Predictor`` does) and the official HQ-SAM predictor, which
recomputes the fusion on every click. The fusion alone is timed too. Min-of-N times, ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from official_hq import HQSamPredictor, build_official_hq_sam  # noqa: E402
from official_sam import build_official_sam  # noqa: E402

from steadysam import Predictor, build_model  # noqa: E402
from steadysam.memory import retain_freed_memory  # noqa: E402
from steadysam.models.build import VIT_B  # noqa: E402

SIZE = (480, 854)
CLICKS = [(427, 240, True), (213, 120, False), (640, 240, True)]


def _before(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ImageEncoderViT.forward as it was before the early feature (git 285af1d)."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        pos = encoder.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(
                pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        x = x + pos
    for blk in encoder.blocks:
        x = blk(x)
    return encoder.neck(x.permute(0, 3, 1, 2))


def _best(runs: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict:
    best = {name: float("inf") for name in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        sync()
        for _ in range(repeats):  # interleaved so all see the same machine state
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                sync()
                best[name] = min(best[name], time.perf_counter() - t)
    return best


def _sessions(model: torch.nn.Module, official_hq: torch.nn.Module, emb, early, device):
    """Per-click runs: steadysam SAM / HQ-SAM sessions and the official HQ predictor."""

    def ours(m: torch.nn.Module, hq: bool):
        pred = Predictor(m)
        pred.set_embedding(emb, SIZE, early if hq else None)
        pred.new_object(mode="focsam")  # computes (and keeps) the image's fusion once

        def clicks() -> None:
            obj = pred.new_object(mode="focsam")
            for x, y, pos in CLICKS:
                obj.click(x, y, pos)

        return clicks

    ref = HQSamPredictor(official_hq)
    ref.features, ref.interm_features, ref.is_image_set = emb, [early], True
    ref.original_size = SIZE
    scale = 1024 / max(SIZE)
    ref.input_size = tuple(int(s * scale + 0.5) for s in SIZE)

    def official_clicks() -> None:
        prev = None
        for i in range(1, len(CLICKS) + 1):
            pc = np.array([c[:2] for c in CLICKS[:i]], float)
            pl = np.array([int(c[2]) for c in CLICKS[:i]])
            _, _, prev = ref.predict(pc, pl, mask_input=prev, multimask_output=False)

    return ours, official_clicks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="encoder repeats (clicks: 10x)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument(
        "--encoder-only",
        action="store_true",
        help="only steadysam's encoder before / after (no official encoders, no clicks)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, fp32, {device}",
        flush=True,
    )
    vit = (
        VIT_B["encoder_embed_dim"],
        VIT_B["encoder_depth"],
        VIT_B["encoder_num_heads"],
        VIT_B["encoder_global_attn_indexes"],
    )
    official_hq = build_official_hq_sam(*vit).eval().to(device)
    official_sam = build_official_sam(*vit)
    official_sam.load_state_dict(official_hq.state_dict(), strict=False)
    official_sam = official_sam.eval().to(device)
    hq = build_model("hq_sam_vit_b", random_init=True)
    hq.load_state_dict(official_hq.state_dict())
    sam = build_model("sam_vit_b", random_init=True)
    sam.load_state_dict(official_sam.state_dict())
    hq, sam = hq.eval().to(device), sam.eval().to(device)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)).to(device)

    encoders = {
        "before (pre-change forward)": lambda: _before(sam.image_encoder, x),
        "after, SAM: encode(x)": lambda: sam.encode(x),
        "after, HQ-SAM: encode(x, early_features=True)": lambda: hq.encode(x, early_features=True),
    }
    if not args.encoder_only:
        encoders["official SAM encoder"] = lambda: official_sam.image_encoder(x)
        encoders["official HQ-SAM encoder"] = lambda: official_hq.image_encoder(x)
    enc = _best(encoders, args.repeats, sync)
    res: dict[str, dict[str, float]] = {}
    base = enc["before (pre-change forward)"]
    print("encoder, one 1024x1024 image:")
    for name, t in enc.items():
        res[name] = {"s": t, "ratio_to_before": t / base}
        print(f"  {name:<48} {t:7.3f} s   {t / base:.3f}x before", flush=True)
    if args.encoder_only:
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return
    with torch.inference_mode():
        emb, early = hq.encode(x, early_features=True)
    ours, official_clicks = _sessions(hq, official_hq, emb, early, device)
    per_click = _best(
        {
            "SAM click": ours(sam, False),
            "HQ-SAM click (fusion once per image)": ours(hq, True),
            "official HQ-SAM click (fusion every click)": official_clicks,
        },
        10 * args.repeats,
        sync,
    )
    fusion = _best({"HQ-SAM fusion (once per image)": lambda: hq.hq_features(emb, early)}, 10, sync)

    click = per_click["SAM click"] / len(CLICKS)
    print("per click (3-click objects):")
    for name, t in per_click.items():
        t /= len(CLICKS)
        res[name] = {"ms": 1e3 * t, "ratio_to_sam_click": t / click}
        print(f"  {name:<48} {1e3 * t:7.1f} ms  {t / click:.2f}x SAM click", flush=True)
    for name, t in fusion.items():
        res[name] = {"ms": 1e3 * t, "ratio_to_sam_click": t / click}
        print(f"  {name:<48} {1e3 * t:7.1f} ms  {t / click:.2f}x SAM click", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
