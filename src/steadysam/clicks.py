"""Click simulators for interactive-segmentation evaluation and training.

Two rules are implemented (see docs/eval.md and design/eval-protocol.md §2.1, focsam-spec §5.1):

``ritm``
    RITM/isegm ``Clicker._get_next_click``: error maps (ignore pixels removed) are zero-padded by
    one pixel, exact Euclidean distance transform, distances of already-clicked pixels zeroed
    *after* the transform, positive iff the farthest false-negative distance is strictly larger
    than the farthest false-positive distance (ties -> negative), location = first maximum in
    raster (row-major) order. Deterministic.
``focsam``
    FocSAM ``fast_generate_single_click``: clicked pixels removed from the error maps *before* the
    transform, same padding / sign rule, no ignore label, location drawn uniformly at random among
    pixels with ``DT > max / (inner_k + 1.19e-7)`` (``inner_k`` 1.0 at test = the maxima, 1.7 in
    training; a negative ``inner_k`` means the whole error region).

Everything is numpy + OpenCV. Masks are ``H x W`` arrays (bool or 0/1); clicks are
``Click(x, y, positive)`` in original image pixels (x = column, y = row).

The distance transform is computed on the bounding box of the error map plus one pixel: the
one-pixel ring around the box is all background (image padding or non-error pixels), and the
projection of any farther background pixel onto that ring is at least as close, so the exact
Euclidean DT inside the box is identical to the full-image one - at a fraction of the cost.

Maxima and ties are decided on exact squared distances (integers, recovered as
``rint(dt ** 2)``), not on OpenCV's float32 output: its last bit depends on the SIMD code path
(image width, CPU), so two pixels at the same true distance, e.g. sqrt(58), can differ by one
ulp. Exact comparison makes "first maximum in raster order" and "ties -> negative" mean what
they say, on every machine, for distances up to ~2000 px.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "Click",
    "Clicker",
    "FLOAT32_EPS",
    "RULES",
    "next_click",
    "padded_distance_transform",
]

RULES = ("ritm", "focsam")
# torch.finfo(torch.float).eps, the constant the FocSAM code adds to inner_k.
FLOAT32_EPS = float(np.finfo(np.float32).eps)

Rng = np.random.Generator | random.Random


class Click(NamedTuple):
    """One simulated click in original image pixels (x = column, y = row)."""

    x: int
    y: int
    positive: bool


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W mask, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask.astype(bool)


class _ErrorMap:
    """One error map (H x W bool) with a lazily computed, bbox-cropped padded exact DT.

    ``bound_sq`` is a free upper bound of the squared max distance: a pixel of an h x w box is
    at most ``(min(h, w) + 1) // 2`` from the background ring around the box. It lets
    ``next_click`` skip the second transform when the first one already decides the sign.
    """

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.x0, self.y0, self.w, self.h = cv2.boundingRect(mask.view(np.uint8))
        r = (min(self.w, self.h) + 1) // 2
        self.bound_sq = float(r * r)
        self._dt: np.ndarray | None = None
        self._near: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def dt(self, clicks: Sequence[Click] = ()) -> np.ndarray | None:
        """h x w float32 DT of the box (None for an empty map); ``clicks`` zeroed (RITM)."""
        if self._dt is None and self.bound_sq > 0:
            x0, y0, w, h = self.x0, self.y0, self.w, self.h
            box = self.mask.view(np.uint8)[y0 : y0 + h, x0 : x0 + w]
            crop = cv2.copyMakeBorder(box, 1, 1, 1, 1, cv2.BORDER_CONSTANT, 0)
            dt = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
            for c in clicks:  # RITM multiplies the DT by its not-clicked map afterwards
                if 0 <= c.y - y0 < h and 0 <= c.x - x0 < w:
                    dt[c.y - y0, c.x - x0] = 0.0
            self._dt = dt
        return self._dt

    def max_sq(self, clicks: Sequence[Click] = ()) -> float:
        """Exact squared maximum distance (0.0 when no pixel is left)."""
        dt = self.dt(clicks)
        if dt is None:
            return 0.0
        m = float(dt.max())
        if m == 0:
            return 0.0
        self._near = _near(dt, m)
        return float(self._near[2].max())

    def first_max(self) -> tuple[int, int]:
        """(row, col) in the image of the first exact maximum in row-major order."""
        assert self._near is not None
        rows, cols, sq = self._near
        i = int(np.argmax(sq))
        return self.y0 + int(rows[i]), self.x0 + int(cols[i])


def _cropped_dt(mask: np.ndarray) -> tuple[np.ndarray | None, int, int]:
    """Padded exact Euclidean DT of ``mask`` (H x W bool) restricted to its bounding box:
    ``(dt, y0, x0)`` with ``dt`` (h x w float32) covering rows ``y0:y0+h``, columns
    ``x0:x0+w``; ``dt`` is None for an empty mask (every distance is 0)."""
    em = _ErrorMap(mask)
    return em.dt(), em.y0, em.x0


def padded_distance_transform(mask: np.ndarray) -> np.ndarray:
    """Full-size H x W float32 DT of a binary mask zero-padded by one pixel (reference helper;
    values are the correctly rounded float32 of the exact distances)."""
    mask = _as_bool(mask, "mask")
    out = np.zeros(mask.shape, np.float32)
    dt, y0, x0 = _cropped_dt(np.ascontiguousarray(mask))
    if dt is not None:
        exact = np.sqrt(np.rint(dt.astype(np.float64) ** 2)).astype(np.float32)
        out[y0 : y0 + dt.shape[0], x0 : x0 + dt.shape[1]] = exact
    return out


# Relative slack covering OpenCV's float32 noise (a few ulps, ~1e-7) when pre-selecting pixels.
_SLACK = 1e-6


def _near(dt: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-major (rows, cols, exact squared distances) of the pixels with DT >~ ``d``."""
    rows, cols = np.nonzero(dt >= np.float32(d * (1.0 - _SLACK)))
    return rows, cols, np.rint(dt[rows, cols].astype(np.float64) ** 2)


def _choose(dt: np.ndarray, max_sq: float, inner_k: float, rng: Rng) -> tuple[int, int]:
    """FocSAM candidate set ``DT > max / (inner_k + eps)`` and a uniform draw; (row, col)."""
    if inner_k >= 1.0:
        d_thr = np.sqrt(max_sq) / (inner_k + FLOAT32_EPS)
        rows, cols, sq = _near(dt, d_thr)
        keep = sq > d_thr * d_thr
        rows, cols = rows[keep], cols[keep]
    elif inner_k < 0.0:
        rows, cols = np.nonzero(dt > 0)
    else:
        raise ValueError(f"inner_k must be >= 1 or < 0, got {inner_k}")
    n = len(rows)
    i = rng.randrange(n) if isinstance(rng, random.Random) else int(rng.integers(n))
    return int(rows[i]), int(cols[i])


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    clicks: Sequence[Click] = (),
    *,
    rule: str = "ritm",
    ignore: np.ndarray | None = None,
    inner_k: float = 1.0,
    rng: Rng | None = None,
) -> Click | None:
    """Simulate the next corrective click.

    Args:
        gt: H x W ground-truth object mask (bool or 0/1).
        pred: H x W current binary prediction (all False before the first click).
        clicks: clicks already made on this object (their pixels are never clicked again).
        rule: ``"ritm"`` (deterministic) or ``"focsam"`` (random tie-break).
        ignore: optional H x W mask of pixels that count neither as error nor for IoU (``ritm``
            only; the ``focsam`` rule has no ignore label and rejects one).
        inner_k: FocSAM candidate-region factor (1.0 at test, 1.7 in training).
        rng: ``numpy.random.Generator`` or ``random.Random`` for the ``focsam`` draw; a fresh
            ``default_rng(0)`` when None, so results are always reproducible.

    Returns:
        The new ``Click`` or None when no error pixel is left (the caller keeps its prompts).
    """
    if rule not in RULES:
        raise ValueError(f"unknown click rule {rule!r}; expected one of {RULES}")
    gt = _as_bool(gt, "gt")
    pred = _as_bool(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt {gt.shape} and pred {pred.shape} differ in shape")
    fn = gt & ~pred
    fp = pred & ~gt
    if ignore is not None:
        if rule == "focsam":
            raise ValueError("the focsam rule has no ignore label; merge ignore into background")
        valid = ~_as_bool(ignore, "ignore")
        if valid.shape != gt.shape:
            raise ValueError(f"ignore {valid.shape} and gt {gt.shape} differ in shape")
        fn &= valid
        fp &= valid

    if rule == "focsam":  # FocSAM removes clicked pixels before the transform
        for c in clicks:
            fn[c.y, c.x] = False
            fp[c.y, c.x] = False
    zero = clicks if rule == "ritm" else ()
    fn_map, fp_map = _ErrorMap(fn), _ErrorMap(fp)
    # Transform the map that can reach farther first; skip the other when its bound already
    # settles the sign (strict: ties go negative in both codebases).
    if fn_map.bound_sq >= fp_map.bound_sq:
        fn_sq = fn_map.max_sq(zero)
        fp_sq = fp_map.max_sq(zero) if fp_map.bound_sq >= fn_sq else 0.0
    else:
        fp_sq = fp_map.max_sq(zero)
        fn_sq = fn_map.max_sq(zero) if fn_map.bound_sq > fp_sq else 0.0
    if fn_sq == 0 and fp_sq == 0:
        return None
    positive = fn_sq > fp_sq
    em, max_sq = (fn_map, fn_sq) if positive else (fp_map, fp_sq)
    if rule == "ritm":
        y, x = em.first_max()  # the box crop preserves row-major order
    else:
        dt = em.dt()
        assert dt is not None
        r, c = _choose(dt, max_sq, inner_k, rng if rng is not None else np.random.default_rng(0))
        y, x = em.y0 + r, em.x0 + c
    return Click(x=x, y=y, positive=positive)


class Clicker:
    """Stateful click simulator for one object: keeps its clicks and applies ``next_click``.

    Args:
        gt: H x W ground-truth object mask.
        rule, ignore, inner_k, rng: as in :func:`next_click`.
    """

    def __init__(
        self,
        gt: np.ndarray,
        *,
        rule: str = "ritm",
        ignore: np.ndarray | None = None,
        inner_k: float = 1.0,
        rng: Rng | None = None,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown click rule {rule!r}; expected one of {RULES}")
        self.gt = _as_bool(gt, "gt")
        self.ignore = None if ignore is None else _as_bool(ignore, "ignore")
        self.rule = rule
        self.inner_k = inner_k
        self.rng: Rng = rng if rng is not None else np.random.default_rng(0)
        self.clicks: list[Click] = []

    def make_next_click(self, pred: np.ndarray) -> Click | None:
        """Simulate, record and return the next click for H x W ``pred`` (None: no error left)."""
        click = next_click(
            self.gt,
            pred,
            self.clicks,
            rule=self.rule,
            ignore=self.ignore,
            inner_k=self.inner_k,
            rng=self.rng,
        )
        if click is not None:
            self.clicks.append(click)
        return click

    def __len__(self) -> int:
        return len(self.clicks)
