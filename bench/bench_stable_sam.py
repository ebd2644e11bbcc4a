"""What Stable-SAM's plugin costs per click: SAM ViT-B with and without the plugin, same weights,
side by side in one run (and official segment-anything's click for reference).

    python bench/bench_stable_sam.py            # 40 interleaved repeats of a 3-click object

A click = prompt encoder + mask decoder + upsampling to the image size, as in bench_sam.py, on
a DAVIS frame (854x480), with a fixed 64x64 embedding (the encoder is not timed: the plugin
does not touch it). The plugin carries non-zero random weights so its offsets are non-zero
(an untrained plugin samples exactly on the grid, which costs the same but would hide
nothing). Prints the best of N times per click, their ratio to our plain SAM click, and the
median over the N repeats of each repeat's ratio. The plugin runs its compiled kernels
(steadysam.native) where a C compiler is available; one row repeats soft routing with them off
(STEADYSAM_NATIVE=0, the PyTorch-ops fast path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from official_sam import SamPredictor, build_official_sam  # noqa: E402

from steadysam import (  # noqa: E402
    Predictor,
    build_model,
    native,  # noqa: E402
)
from steadysam.memory import retain_freed_memory  # noqa: E402
from steadysam.models.build import VIT_B, attach_plugin  # noqa: E402
from steadysam.models.config import PluginConfig  # noqa: E402

SIZE = (480, 854)
CLICKS = [(427, 240, True), (213, 120, False), (640, 240, True)]


def _plugin_model(official: torch.nn.Module, routing: str, bias: float) -> torch.nn.Module:
    model = build_model("sam_vit_b", random_init=True)
    model.load_state_dict(official.state_dict())
    attach_plugin(model, PluginConfig(routing=routing))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.plugin_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
        model.plugins()[0].drp.fc2.bias.copy_(torch.tensor([bias, 0.0]))
    return model.eval()


def _session(model: torch.nn.Module, emb: torch.Tensor):
    pred = Predictor(model)
    pred.set_embedding(emb, SIZE)

    def clicks() -> None:
        obj = pred.new_object(mode="focsam")
        for x, y, pos in CLICKS:
            obj.click(x, y, pos)

    return clicks


def _official_session(official: torch.nn.Module, emb: torch.Tensor):
    ref = SamPredictor(official)
    ref.features, ref.is_image_set = emb, True
    ref.original_size = SIZE
    scale = 1024 / max(SIZE)
    ref.input_size = tuple(int(s * scale + 0.5) for s in SIZE)

    def clicks() -> None:
        prev = None
        for i in range(1, len(CLICKS) + 1):
            pc = np.array([c[:2] for c in CLICKS[:i]], float)
            pl = np.array([int(c[2]) for c in CLICKS[:i]])
            _, _, prev = ref.predict(pc, pl, mask_input=prev, multimask_output=False)

    return clicks


def _without_kernels(fn):
    def clicks() -> None:
        os.environ["STEADYSAM_NATIVE"] = "0"
        try:
            fn()
        finally:
            os.environ.pop("STEADYSAM_NATIVE")

    return clicks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, fp32",
        flush=True,
    )
    official = build_official_sam(
        VIT_B["encoder_embed_dim"],
        VIT_B["encoder_depth"],
        VIT_B["encoder_num_heads"],
        VIT_B["encoder_global_attn_indexes"],
    ).eval()
    plain = build_model("sam_vit_b", random_init=True)
    plain.load_state_dict(official.state_dict())
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    soft = _plugin_model(official, "soft", 0.0)
    if os.environ.get("STEADYSAM_NATIVE") == "0":
        raise SystemExit("unset STEADYSAM_NATIVE: one row turns the kernels off itself")
    print(f"# plugin kernels: {native.status('plugin_kernels')}", flush=True)
    runs = {
        "official SAM": _official_session(official, emb),
        "steadysam SAM": _session(plain.eval(), emb),
        "Stable-SAM, soft routing": _session(soft, emb),
        "Stable-SAM, soft routing, PyTorch ops": _without_kernels(_session(soft, emb)),
        "Stable-SAM, hard routing -> deformed": _session(_plugin_model(official, "hard", 4.0), emb),
        "Stable-SAM, hard routing -> regular": _session(_plugin_model(official, "hard", -4.0), emb),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        order = list(runs)
        rng = random.Random(0)
        for _ in range(args.repeats):  # interleaved so all see the same machine state, in a
            rng.shuffle(order)  # new order each time: no row always follows the same one
            for name in order:
                fn = runs[name]
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) / len(CLICKS))
    # Two estimates of the ratio on a shared machine: of the best times, and the median over
    # repeats of each repeat's ratio (a repeat runs every row back to back, so a slow spell
    # of the machine hits numerator and denominator alike).
    base = times["steadysam SAM"]
    res = {}
    print(f"{'':<40} {'best':>6}      {'ratio of bests':>14}  {'median ratio':>12}")
    for name, ts in times.items():
        best, ratio = min(ts), min(ts) / min(base)
        paired = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        res[name] = {"ms": 1e3 * best, "ratio_of_bests": ratio, "median_ratio": paired}
        print(f"{name:<40} {1e3 * best:6.1f} ms   {ratio:12.2f}x  {paired:11.2f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
