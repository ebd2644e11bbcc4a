"""Side-by-side speed of onnxruntime (steadysam.onnx.OnnxPredictor) and PyTorch
(steadysam.Predictor, default fast paths, fp32) on the same weights and image, one run.

    python bench/bench_onnx.py                       # demo_focsam and ViT-B FocSAM (random weights)
    python bench/bench_onnx.py --models demo_focsam  # quick
    python bench/bench_onnx.py --models demo_sam,demo_focsam,demo_stable_focsam --agreement 10

Per model: the export (seconds, once), then min-of-N wall times of the encoder (set_image,
preprocessing included, cache cleared), the 1st click (decoder), the 2nd click (FocSAM: the
coarse decoder pass + refiner + decoder) and a 3rd click (decoder on the refined embedding),
for PyTorch, onnxruntime fp32 and onnxruntime with the int8 decoder; ratios are
onnxruntime / PyTorch (below 1: onnxruntime faster). CPU, --threads threads for both.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

from steadysam import Predictor, build_model  # noqa: E402
from steadysam.datafiles import read_image  # noqa: E402
from steadysam.onnx import OnnxPredictor  # noqa: E402
from steadysam.onnx.export import export_onnx  # noqa: E402

MODELS = {
    "demo_sam": dict(name="demo_sam"),
    "demo_focsam": dict(name="demo_focsam"),
    "demo_stable_focsam": dict(name="demo_stable_focsam"),
    "focsam_vit_b": dict(name="focsam_vit_b", random_init=True),
}


def _min_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _clicks(pred, rgb, repeats: int) -> dict[str, float]:
    """Times of the 1st, 2nd and 3rd click of an object (each on a fresh session state)."""
    h, w = rgb.shape[:2]
    seq = [(w * 0.5, h * 0.5, True), (w * 0.2, h * 0.2, False), (w * 0.6, h * 0.4, True)]
    out = {}
    for k, name in enumerate(("click1", "click2_refine", "click3")):

        def run(k=k):
            s = pred.new_object()
            for x, y, p in seq[:k]:
                s.click(x, y, p)
            t = time.perf_counter()
            s.click(*seq[k])
            return time.perf_counter() - t

        run()  # warm-up
        out[name] = min(run() for _ in range(repeats))
    return out


def bench(key: str, rgb: np.ndarray, repeats: int, threads: int) -> dict:
    model = build_model(**MODELS[key]).eval()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        folder = export_onnx(model, Path(d) / key, name=key, int8=True)
        export_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in folder.glob("*.onnx")) / 2**20
        preds = {
            "torch": Predictor(model, cache_size=1),
            "onnx": OnnxPredictor(folder, threads=threads, cache_size=1),
            "onnx_int8": OnnxPredictor(folder, decoder="int8", threads=threads, cache_size=1),
        }
        res = {"export_s": export_s, "onnx_files_mib": size}
        for label, p in preds.items():

            def encode(p=p):
                p._memory.clear()  # time the encoder, not the cache
                p.set_image(rgb)

            encode()
            r = {"encoder": _min_time(encode, repeats)} if label != "onnx_int8" else {}
            with torch.inference_mode():
                r.update(_clicks(p, rgb, repeats))
            res[label] = r
    return res


def agreement(key: str, images: int, clicks: int) -> dict:
    """onnxruntime vs PyTorch on real images over simulated click sequences (RITM clicker on
    the PyTorch masks, both predictors get the same clicks; focsam protocol): worst
    |logit| difference, worst embedding difference, min and mean mask IoU; and the int8
    decoder against the fp32 graph (its own clicks): mean / min mask IoU."""
    from steadysam.clicks import Clicker
    from steadysam.datafiles import read_mask

    model = build_model(**MODELS[key]).eval()
    res = {"logits": 0.0, "embedding": 0.0, "ious": [], "int8_ious": [], "samples": 0}
    with tempfile.TemporaryDirectory() as d:
        folder = export_onnx(model, Path(d) / key, name=key, int8=True)
        tp, op = Predictor(model), OnnxPredictor(folder)
        q8 = OnnxPredictor(folder, decoder="int8")
        for ds in ("GrabCut", "Berkeley"):
            for img in sorted((DATA / ds / "images").iterdir())[:images]:
                raw, _ = read_mask(next((DATA / ds / "masks").glob(img.stem + ".*")))
                gt = (raw[..., 0] if raw.ndim == 3 else raw) > 0
                rgb = read_image(img)
                for p in (tp, op, q8):
                    p.set_image(rgb)
                emb = tp.get_image_embedding().float().numpy()
                res["embedding"] = max(
                    res["embedding"], float(np.abs(op.get_image_embedding() - emb).max())
                )
                sessions = [tp.new_object(), op.new_object(), q8.new_object()]
                clicker, pred = Clicker(gt), np.zeros_like(gt)
                for _ in range(clicks):
                    c = clicker.make_next_click(pred)
                    if c is None:
                        break
                    with torch.inference_mode():
                        pred = sessions[0].click(c.x, c.y, c.positive)
                    got = sessions[1].click(c.x, c.y, c.positive)
                    q = sessions[2].click(c.x, c.y, c.positive)
                    diff = np.abs(sessions[1].logits - sessions[0].logits.numpy()).max()
                    res["logits"] = max(res["logits"], float(diff))
                    res["ious"].append(_iou(pred, got))
                    res["int8_ious"].append(_iou(got, q))
                res["samples"] += 1
    return res


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo_focsam,focsam_vit_b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--agreement",
        type=int,
        metavar="N",
        help="instead of timing: agreement on the first N GrabCut and N Berkeley images",
    )
    ap.add_argument("--clicks", type=int, default=10, help="clicks per object (--agreement)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = sorted((DATA / "GrabCut" / "images").iterdir())[0]
    rgb = read_image(image)
    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"image {image.name} {rgb.shape[1]}x{rgb.shape[0]}, min of {args.repeats}"
    )
    results = {}
    if args.agreement:
        for key in args.models.split(","):
            r = results[key] = agreement(key, args.agreement, args.clicks)
            ious, q8 = np.array(r.pop("ious")), np.array(r.pop("int8_ious"))
            r.update(
                clicks=len(ious),
                min_iou=ious.min(),
                mean_iou=ious.mean(),
                int8_mean_iou=q8.mean(),
                int8_min_iou=q8.min(),
            )
            print(
                f"{key}: {r['samples']} objects, {r['clicks']} clicks: max |logits| diff "
                f"{r['logits']:.2e}, max |embedding| diff {r['embedding']:.2e}, mask IoU "
                f"min {r['min_iou']:.5f} mean {r['mean_iou']:.6f}; int8 decoder vs fp32: "
                f"mean IoU {r['int8_mean_iou']:.4f}, min {r['int8_min_iou']:.4f}"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=float))
        return
    for key in args.models.split(","):
        if key not in MODELS:
            sys.exit(f"unknown model {key!r}; choose from {sorted(MODELS)}")
        r = results[key] = bench(key, rgb, args.repeats, args.threads)
        print(f"\n{key}: export {r['export_s']:.1f} s, {r['onnx_files_mib']:.1f} MiB of .onnx")
        print(f"{'':<15}{'torch':>10}{'onnx':>10}{'ratio':>8}{'onnx int8':>11}{'ratio':>8}")
        for part in ("encoder", "click1", "click2_refine", "click3"):
            t, o = r["torch"][part], r["onnx"][part]
            row = f"{part:<15}{t * 1e3:>8.1f}ms{o * 1e3:>8.1f}ms{o / t:>8.2f}"
            if part in r["onnx_int8"]:
                q = r["onnx_int8"][part]
                row += f"{q * 1e3:>9.1f}ms{q / t:>8.2f}"
            print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
