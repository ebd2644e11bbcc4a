"""Mask agreement of bf16 with fp32 over click sequences on real images.

    python bench/bf16_agreement.py --model demo_focsam --dataset GrabCut --data-root ../shared/data

For every object: the RITM clicker simulates the fp32 session (as ``steadysam eval`` does,
refiner at the 2nd click), and the bf16 session receives exactly the same clicks. Prints, per
click index, the mean IoU between the fp32 and the bf16 masks, the share of objects whose
masks are identical, and both sessions' mean IoU with the ground truth. On a CPU without bf16
instructions bf16 runs in emulation (same numerics, slower).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from steadysam import Predictor, build_model
from steadysam.clicks import Clicker
from steadysam.eval.datasets import load_dataset
from steadysam.eval.metrics import iou
from steadysam.precision import EMULATION_ENV, bf16_support


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two predictions; two empty masks agree fully."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="demo_focsam")
    ap.add_argument("--dataset", default="GrabCut")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    args = ap.parse_args()
    native, why = bf16_support("cpu")
    if not native:
        os.environ[EMULATION_ENV] = "1"
    model = build_model(args.model)
    fp32, bf16 = Predictor(model), Predictor(model, precision="bf16")
    ds = load_dataset(args.dataset, args.data_root)
    agree = [[] for _ in range(args.clicks)]
    gt32 = [[] for _ in range(args.clicks)]
    gt16 = [[] for _ in range(args.clicks)]
    for item in ds.items[: args.limit]:
        image = item.load_image()
        fp32.set_image(image)
        bf16.set_image(image)
        for src in item.masks:
            for ob in src.load():
                clicker = Clicker(ob.gt, rule="ritm", ignore=ob.ignore)
                a, b = fp32.new_object(), bf16.new_object()
                pred_a = pred_b = np.zeros_like(ob.gt)
                for step in range(args.clicks):
                    click = clicker.make_next_click(pred_a)
                    if click is not None:
                        pred_a = a.click(click.x, click.y, click.positive)
                        pred_b = b.click(click.x, click.y, click.positive)
                    agree[step].append(_agreement(pred_a, pred_b))
                    gt32[step].append(iou(pred_a, ob.gt, ob.ignore))
                    gt16[step].append(iou(pred_b, ob.gt, ob.ignore))
    n = len(agree[0])
    res = {
        "model": args.model,
        "dataset": args.dataset,
        "objects": n,
        "bf16": "native" if native else "emulated",
        "iou_fp32_bf16": [float(np.mean(v)) for v in agree],
        "identical": [float(np.mean(np.asarray(v) == 1.0)) for v in agree],
        "miou_gt_fp32": [float(np.mean(v)) for v in gt32],
        "miou_gt_bf16": [float(np.mean(v)) for v in gt16],
    }
    print(f"# {args.model} on {args.dataset}: {n} objects, bf16 {res['bf16']} ({why})")
    print("click | IoU(fp32, bf16) | identical | mIoU fp32 | mIoU bf16")
    for k in (0, 1, 4, 9, args.clicks - 1):
        if k < args.clicks:
            print(
                f"{k + 1:5d} | {100 * res['iou_fp32_bf16'][k]:15.2f} | "
                f"{100 * res['identical'][k]:8.1f}% | {100 * res['miou_gt_fp32'][k]:9.2f} | "
                f"{100 * res['miou_gt_bf16'][k]:9.2f}"
            )
    overall = float(np.mean([x for v in agree for x in v]))
    print(f"mean IoU(fp32, bf16) over all {n} x {args.clicks} clicks: {100 * overall:.2f}")
    res["mean_iou_fp32_bf16"] = overall
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
