"""Click simulators for interactive-segmentation evaluation and training.

Two rules are implemented (see docs/eval.md, "Click simulators", and docs/focsam.md §5.1):

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


# Squared distances a lattice point can have, up to _CAP: small maxima are found exactly with
# erosions (E_k = erode(mask, {q: |q|^2 < k}) holds the pixels with DT^2 >= k), which are 10-50x
# cheaper than the transform; only maps whose max DT^2 reaches _CAP pay for the transform.
_CAP = 16
_LEVELS = sorted({a * a + b * b for a in range(5) for b in range(5)} - {0})
_LEVELS = [k for k in _LEVELS if k <= _CAP]
_KERNELS: dict[int, np.ndarray] = {}


def _kernel(k: int) -> np.ndarray:
    """Structuring element {q : |q|^2 < k} (an open digital disk)."""
    if k not in _KERNELS:
        r = int(np.sqrt(k - 0.5))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        _KERNELS[k] = ((yy * yy + xx * xx) < k).astype(np.uint8)
    return _KERNELS[k]


class _ErrorMap:
    """One error map (H x W bool) restricted to its bounding box, with exact distance queries.

    ``bound_sq`` is a free upper bound of the squared max distance: a pixel of an h x w box is
    at most ``(min(h, w) + 1) // 2`` from the background ring around the box. ``zero``: clicks
    whose distance counts as 0 (RITM zeroes clicked pixels after the transform).
    """

    def __init__(self, mask: np.ndarray, zero: Sequence[Click] = ()) -> None:
        self.x0, self.y0, self.w, self.h = cv2.boundingRect(mask.view(np.uint8))
        r = (min(self.w, self.h) + 1) // 2
        self.bound_sq = float(r * r)
        self.crop = mask.view(np.uint8)[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        inside = [(c.y - self.y0, c.x - self.x0) for c in zero]
        self.zero = [(y, x) for y, x in inside if 0 <= y < self.h and 0 <= x < self.w]
        self._dt: np.ndarray | None = None
        self._top: np.ndarray | None = None  # E_max (erosion path)
        self._near: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (transform path)

    def level(self, k: int) -> np.ndarray:
        """h x w uint8, 1 where DT^2 >= k (outside the box is background: border value 0)."""
        if k <= 1:
            e = self.crop.copy()
        else:
            e = cv2.erode(self.crop, _kernel(k), borderType=cv2.BORDER_CONSTANT, borderValue=0)
        for y, x in self.zero:
            e[y, x] = 0
        return e

    def dt(self) -> np.ndarray | None:
        """h x w float32 padded DT of the box (None for an empty map), clicks zeroed."""
        if self._dt is None and self.bound_sq > 0:
            crop = cv2.copyMakeBorder(self.crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, 0)
            dt = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
            for y, x in self.zero:
                dt[y, x] = 0.0
            self._dt = dt
        return self._dt

    def max_sq(self) -> float:
        """Exact squared maximum distance (0.0 when no pixel is left)."""
        if self.bound_sq == 0:
            return 0.0
        if self.bound_sq < _CAP or not self.level(_CAP).any():
            levels = [k for k in _LEVELS if k <= self.bound_sq]
            top = self.level(1)
            if not top.any():
                return 0.0
            lo, hi = 0, len(levels) - 1  # levels[lo] is reached; find the last reached level
            while lo < hi:
                mid = (lo + hi + 1) // 2
                e = self.level(levels[mid])
                if e.any():
                    lo, top = mid, e
                else:
                    hi = mid - 1
            self._top = top
            return float(levels[lo])
        dt = self.dt()
        assert dt is not None
        self._near = _near(dt, float(dt.max()))
        return float(self._near[2].max())

    def first_max(self) -> tuple[int, int]:
        """(row, col) in the image of the first exact maximum in row-major order."""
        if self._top is not None:
            r, c = divmod(int(np.argmax(self._top)), self.w)
        else:
            assert self._near is not None
            rows, cols, sq = self._near
            i = int(np.argmax(sq))
            r, c = int(rows[i]), int(cols[i])
        return self.y0 + r, self.x0 + c

    def candidates(self, max_sq: float, inner_k: float) -> tuple[np.ndarray, np.ndarray]:
        """Row-major (rows, cols) in the box of the FocSAM set ``DT > max / (inner_k + eps)``."""
        if inner_k < 0.0:
            return np.nonzero(self.level(1))
        if inner_k < 1.0:
            raise ValueError(f"inner_k must be >= 1 or < 0, got {inner_k}")
        t_sq = max_sq / (inner_k + FLOAT32_EPS) ** 2
        if self._top is not None:  # DT^2 > t_sq  <=>  DT^2 >= the next lattice level
            k = next(k for k in _LEVELS if k > t_sq)
            return np.nonzero(self._top if k >= max_sq else self.level(k))
        dt = self.dt()
        assert dt is not None
        rows, cols, sq = _near(dt, float(np.sqrt(t_sq)))
        keep = sq > t_sq
        return rows[keep], cols[keep]


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
    fn_map, fp_map = _ErrorMap(fn, zero), _ErrorMap(fp, zero)
    # Measure the map that can reach farther first; skip the other when its bound already
    # settles the sign (strict: ties go negative in both codebases).
    if fn_map.bound_sq >= fp_map.bound_sq:
        fn_sq = fn_map.max_sq()
        fp_sq = fp_map.max_sq() if fp_map.bound_sq >= fn_sq else 0.0
    else:
        fp_sq = fp_map.max_sq()
        fn_sq = fn_map.max_sq() if fn_map.bound_sq > fp_sq else 0.0
    if fn_sq == 0 and fp_sq == 0:
        return None
    positive = fn_sq > fp_sq
    em, max_sq = (fn_map, fn_sq) if positive else (fp_map, fp_sq)
    if rule == "ritm":
        y, x = em.first_max()  # the box crop preserves row-major order
    else:
        rows, cols = em.candidates(max_sq, inner_k)
        rng = rng if rng is not None else np.random.default_rng(0)
        i = rng.randrange(len(rows)) if isinstance(rng, random.Random) else rng.integers(len(rows))
        y, x = em.y0 + int(rows[i]), em.x0 + int(cols[i])
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
