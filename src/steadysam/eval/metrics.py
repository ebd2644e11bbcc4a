"""Segmentation metrics: IoU, boundary IoU, NoC, NoF, mIoU@k, ΔIoU stability, pairwise-IoU
stability of repeated prompts, seconds per click.

Conventions (docs/eval.md has the long form):

* ``noc(ious, t)`` - FocSAM/RITM NoC: 1-based index of the first click whose IoU >= t, else the
  budget (= ``len(ious)``; every sample runs the full budget, no early stop).
* ``nof`` - objects whose IoU **never** reaches t within the budget (the issue's NoF).
* ``nof_ritm`` - RITM's printed ``>=20@t`` count: objects with NoC == budget, so an object that
  first reaches t exactly on the last click is counted as a failure too.
* Boundary IoU (Cheng et al. 2021, as HQ-SAM computes mBIoU): the boundary of a mask is the mask
  minus its erosion by a 3 x 3 kernel applied ``d = max(1, round(0.02 * image diagonal))`` times
  after 1-px zero padding (so the image border counts as boundary); BIoU is the IoU of the two
  boundaries.
* Prompt stability (``mean_pairwise_iou``, Stable-SAM protocol): mean IoU over all pairs of the
  masks predicted from K prompts of one quality level for one object.
* Stability (FocSAM Figure 4): ΔIoU_t = IoU_t - IoU_{t-1} from the second click on; a *drop* is
  ΔIoU < -1 % (-0.01 in IoU units).

A statistic with no data (NoC of a run without a successful sample, the mean of no drops, the
drop rate of a 1-click budget) is None, never NaN: summary.json stays strict JSON, and the
tables show "–".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

THRESHOLDS = (0.85, 0.90, 0.95)
MIOU_AT = (1, 2, 3, 4, 5, 10, 15, 20)  # FocSAM's click01...click20 columns
DROP_THRESHOLD = -0.01
# 1 %-wide ΔIoU bins from -100 % to -1 % (99 bins); every drop is < -0.01, so none is lost.
HIST_EDGES = tuple(np.round(np.linspace(-1.0, -0.01, 100), 4).tolist())


def thr_key(t: float) -> str:
    """JSON key of a threshold: 0.9 -> "90"."""
    return str(int(round(t * 100)))


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Binary IoU of H x W ``pred`` vs H x W ``gt``; ``ignore`` pixels leave both counts (RITM).

    Returns 0.0 when the union is empty (FocSAM returns 0 for an empty GT as well).
    """
    if ignore is not None:
        pred = pred & ~ignore
        gt = gt & ~ignore
    inter = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred) + np.count_nonzero(gt) - inter
    return float(inter / union) if union else 0.0


BOUNDARY_DILATION_RATIO = 0.02
_KERNEL3 = np.ones((3, 3), np.uint8)


def boundary_dilation(size: tuple[int, int], ratio: float = BOUNDARY_DILATION_RATIO) -> int:
    """Boundary width ``d`` in pixels for an image of size (H, W): max(1, round(ratio * diag))."""
    h, w = size
    return max(1, int(round(ratio * float(np.hypot(h, w)))))


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Inner boundary of width ``dilation`` of an H x W mask (Cheng et al.'s ``mask_to_boundary``).

    The mask minus its erosion by a 3 x 3 kernel applied ``dilation`` times after a 1-px zero
    padding. Computed on the mask's bounding box plus that 1-px ring (all zeros, so the result
    is the same as on the full image, at a fraction of the cost for small objects).

    Returns:
        H x W bool.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return out
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = mask[y0:y1, x0:x1].astype(np.uint8)
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # OpenCV turns iterations of a full rectangular kernel into one larger kernel itself.
    eroded = cv2.erode(padded, _KERNEL3, iterations=int(dilation))[1:-1, 1:-1]
    out[y0:y1, x0:x1] = (crop > 0) & (eroded == 0)
    return out


def boundary_iou(
    pred: np.ndarray,
    gt: np.ndarray,
    ignore: np.ndarray | None = None,
    dilation_ratio: float = BOUNDARY_DILATION_RATIO,
) -> float:
    """Boundary IoU of H x W ``pred`` vs ``gt`` (Cheng et al. 2021; HQ-SAM's mBIoU per image).

    With ``ignore``, both masks first lose the ignore pixels, as in :func:`iou`: a prediction
    whose edge lies anywhere inside the GrabCut/Berkeley ignore band (which surrounds the
    object) then has the same boundary as the GT there. 0.0 when both boundaries are empty.
    """
    d = boundary_dilation(gt.shape[:2], dilation_ratio)
    if ignore is not None:
        pred, gt = pred & ~ignore, gt & ~ignore
    return iou(mask_boundary(pred, d), mask_boundary(gt, d))


def mean_pairwise_iou(masks: Sequence[np.ndarray]) -> float | None:
    """Mean IoU over the K(K-1)/2 pairs of K H x W masks (docs/eval.md, "Prompt robustness").

    Two empty masks agree perfectly and count as IoU 1.0 here (unlike :func:`iou` against a
    GT). Returns None for fewer than two masks.
    """
    if len(masks) < 2:
        return None
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    union_all = stack.any(axis=0)
    rows, cols = np.flatnonzero(union_all.any(axis=1)), np.flatnonzero(union_all.any(axis=0))
    if rows.size == 0:
        return 1.0
    # All pairwise intersections at once as K x K matrix products over the union's box, in
    # chunks of 2**20 pixels: float32 counts stay exact (< 2**24), memory stays small.
    flat = stack[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].reshape(len(masks), -1)
    inter = np.zeros((len(masks), len(masks)), np.float64)
    for start in range(0, flat.shape[1], 1 << 20):
        chunk = flat[:, start : start + (1 << 20)].astype(np.float32)
        inter += chunk @ chunk.T
    area = np.diag(inter)
    union = area[:, None] + area[None, :] - inter
    pairs = np.triu_indices(len(masks), k=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        vals = np.where(union[pairs] > 0, inter[pairs] / union[pairs], 1.0)
    return float(vals.mean())


def noc(ious: Sequence[float], t: float, budget: int | None = None) -> int:
    """Number of clicks to reach IoU >= t (1-based), or ``budget`` if never reached.

    ``budget`` defaults to ``len(ious)``; a smaller budget evaluates the prefix, so a 100-click
    run also yields the 20-click numbers.
    """
    budget = len(ious) if budget is None else budget
    for i, v in enumerate(ious[:budget]):
        if v >= t:
            return i + 1
    return budget


def reached(ious: Sequence[float], t: float, budget: int | None = None) -> bool:
    budget = len(ious) if budget is None else budget
    return any(v >= t for v in ious[:budget])


def delta_ious(ious: Sequence[float]) -> np.ndarray:
    """ΔIoU between consecutive clicks (length len(ious) - 1)."""
    a = np.asarray(ious, dtype=np.float64)
    return np.diff(a) if a.size > 1 else np.zeros(0)


def worst_drop(ious: Sequence[float]) -> float:
    """Most negative ΔIoU of one sample (0.0 when IoU never decreases)."""
    d = delta_ious(ious)
    return float(min(0.0, d.min())) if d.size else 0.0


def sample_metrics(ious: Sequence[float], thresholds: Iterable[float] = THRESHOLDS) -> dict:
    """Per-sample NoC per threshold and stability numbers, stored in each JSON line."""
    d = delta_ious(ious)
    return {
        "noc": {thr_key(t): noc(ious, t) for t in thresholds},
        "worst_drop": worst_drop(ious),
        "num_drops": int(np.count_nonzero(d < DROP_THRESHOLD)),
    }


def _noc_block(all_ious: list[list[float]], budget: int, thresholds: Iterable[float]) -> dict:
    out: dict[str, dict[str, float | None]] = {"noc": {}, "noc_std": {}, "nof": {}, "nof_ritm": {}}
    for t in thresholds:
        k = thr_key(t)
        nocs = np.array([noc(s, t, budget) for s in all_ious], dtype=np.float64)
        if not nocs.size:  # no sample: no statistic (None), not NaN or a count of 0
            for key in out:
                out[key][k] = None
            continue
        out["noc"][k] = float(nocs.mean())
        out["noc_std"][k] = float(nocs.std())
        out["nof"][k] = int(sum(not reached(s, t, budget) for s in all_ious))
        out["nof_ritm"][k] = int(np.count_nonzero(nocs == budget))
    return out


def stability(all_ious: list[list[float]]) -> dict[str, Any]:
    """FocSAM Figure 4 statistics: drops worse than -1 %, their histogram, worst drop per sample.

    ``drop_rate`` is None without any click transition (no sample, or a 1-click budget),
    ``mean_drop`` / ``median_drop`` without any drop, the ``worst_drop_*`` without a sample."""
    deltas = [delta_ious(s) for s in all_ious]
    drops = np.concatenate([d[d < DROP_THRESHOLD] for d in deltas]) if deltas else np.zeros(0)
    worst = np.array([worst_drop(s) for s in all_ious]) if all_ious else np.zeros(0)
    counts, _ = np.histogram(drops, bins=np.array(HIST_EDGES))
    num_deltas = int(sum(d.size for d in deltas))
    return {
        "drop_threshold": DROP_THRESHOLD,
        "num_deltas": num_deltas,
        "num_drops": int(drops.size),
        "drop_rate": float(drops.size / num_deltas) if num_deltas else None,
        "samples_with_drop": int(np.count_nonzero(worst < DROP_THRESHOLD)),
        "mean_drop": float(drops.mean()) if drops.size else None,
        "median_drop": float(np.median(drops)) if drops.size else None,
        "worst_drop_mean": float(worst.mean()) if worst.size else None,
        "worst_drop_min": float(worst.min()) if worst.size else None,
        "histogram": {"edges": list(HIST_EDGES), "counts": counts.tolist()},
    }


def timing(records: list[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per click from per-sample ``timing`` dicts (see runner).

    ``spc`` follows the FocSAM paper: encoder time of the sample's image + decoder + refiner,
    divided by the sample's clicks (each object pays for its image's encoding, as the official
    loop re-encodes per object). ``spc_decoder`` is the decoder-only figure in parentheses.
    """
    clicks = sum(r["num_clicks"] for r in records)
    if not records or clicks == 0:
        return {}
    tot = {k: sum(r["timing"][k] for r in records) for k in ("encoder", "decoder", "refiner")}
    tot["harness"] = sum(r["timing"]["harness"] for r in records)
    tot["wall"] = sum(r["timing"]["wall"] for r in records)
    images = {r["image"]: r["timing"]["encoder"] for r in records}
    return {
        "spc": (tot["encoder"] + tot["decoder"] + tot["refiner"]) / clicks,
        "spc_decoder": tot["decoder"] / clicks,
        "spc_refiner": tot["refiner"] / clicks,
        "spc_harness": tot["harness"] / clicks,
        "spc_wall": (tot["wall"] + sum(images.values())) / clicks,
        "encoder_per_image": sum(images.values()) / len(images),
        "num_clicks": clicks,
    }


def summarize(
    records: list[Mapping[str, Any]],
    budget: int,
    thresholds: Iterable[float] = THRESHOLDS,
) -> dict[str, Any]:
    """Run-level metrics from successful per-sample records (each has ``ious`` of length budget).

    Without any record the per-click means (``miou``, ``miou_at``) and NoC are None."""
    thresholds = tuple(thresholds)
    all_ious = [list(r["ious"]) for r in records]
    out: dict[str, Any] = {"num_samples": len(records), "clicks": budget}
    out.update(_noc_block(all_ious, budget, thresholds))
    if budget > 20:
        # Same run, 20-click budget on the prefix (paper Table 2 "20NoC@90").
        out["at20"] = _noc_block(all_ious, 20, thresholds)
    if budget == 100:
        out["noc100_95"] = out["noc"]["95"] if "95" in out["noc"] else None
    arr = np.array(all_ious, dtype=np.float64).reshape(len(all_ious), budget)
    miou = [float(v) for v in arr.mean(axis=0)] if len(all_ious) else [None] * budget
    out["miou"] = miou
    out["miou_at"] = {str(k): miou[k - 1] for k in MIOU_AT if k <= budget}
    out["no_click_steps"] = int(sum(len(r.get("no_click_steps", ())) for r in records))
    out["stability"] = stability(all_ious)
    out["worst_samples"] = [
        {"id": r["id"], "worst_drop": r["worst_drop"]}
        for r in sorted(records, key=lambda r: r["worst_drop"])[:10]
        if r["worst_drop"] < DROP_THRESHOLD
    ]
    out["timing"] = timing(records)
    return out
