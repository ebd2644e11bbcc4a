"""Did a click make the mask worse? The change a click brought, measured against the previous
mask.

FocSAM counts a click as a drop when IoU with the ground truth falls by more than 1 %
(ΔIoU < -1 %). An annotator has no ground truth, so the app measures what a click *should* have
done against what it did: a positive click asks for the changed region under it to be added, a
negative click for the region under it to be removed. The *intended* mask is the previous mask
with exactly that one 8-connected changed region applied; every other change (pixels gained or
lost away from the click) is a side effect. ::

    delta_iou = IoU(new mask, intended mask) - 1      (0 = the click only did what it asked)
    drop      = delta_iou < -0.01

``iou_previous`` = IoU(new, previous) is shown beside it (how much the mask changed at all).
"""

from __future__ import annotations

import cv2
import numpy as np

DROP_THRESHOLD = -0.01  # FocSAM's criterion: ΔIoU < -1 %


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two H x W bool masks; two empty masks agree fully (1.0)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def click_change(
    previous: np.ndarray | None,
    new: np.ndarray,
    click: tuple[float, float, bool] | None,
) -> dict[str, float | bool | None]:
    """The change a prompt brought.

    Arguments:
        previous: H x W bool mask before the prompt (None: the object had none).
        new: H x W bool mask after it.
        click: (x, y, positive) of a click in original pixels; None for a box (a box
            restates the whole object, so only ``iou_previous`` is measured).

    Returns ``iou_previous`` (None without a previous mask), ``delta_iou`` (None for a first
    prompt or a box) and ``drop`` (delta_iou < -1 %).
    """
    if previous is None:
        return {"iou_previous": None, "delta_iou": None, "drop": False}
    result: dict[str, float | bool | None] = {
        "iou_previous": round(iou(previous, new), 6), "delta_iou": None, "drop": False
    }
    if click is None:
        return result
    x, y, positive = click
    col, row = int(x), int(y)
    changed = (new & ~previous) if positive else (previous & ~new)
    intended = previous
    if changed[row, col]:
        _, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
        region = labels == labels[row, col]
        intended = (previous | region) if positive else (previous & ~region)
    delta = iou(new, intended) - 1.0
    result["delta_iou"] = round(delta, 6)
    result["drop"] = bool(delta < DROP_THRESHOLD)
    return result
