"""Synthetic prompts from a ground-truth mask: GT boxes, noisy boxes and random points.

Shared by prompt-robustness evaluation (``steadysam eval-prompts``, docs/eval.md) and Stable-SAM's
robust training strategy (RTS, docs/stable-sam.md "RTS: robust training"). Everything is numpy
and every random draw comes from an explicit ``np.random.Generator``, so a seed fixes the
prompts exactly.

Coordinates are original image pixels, x = column, y = row, the convention of
``Predictor.predict`` and of the click simulators (``steadysam.clicks``): a box is
``(x0, y0, x1, y1)`` with the min/max *pixel indices* of the object (torchvision's
``masks_to_boxes``), so every coordinate lies in ``[0, W-1] x [0, H-1]``; a point is the index of
a foreground pixel.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "KINDS",
    "Box",
    "Prompt",
    "PromptSetting",
    "draw_prompt",
    "mask_box",
    "noisy_box",
    "parse_settings",
    "random_points",
    "rts_prompt",
]

Box = tuple[float, float, float, float]

KINDS = ("gt-box", "noisy-box", "points")
# Accepted setting values: noise scales as in DN-DETR / sam-hq ``box_noise`` (a scale of 1 moves
# the centre by up to half the box and the size by up to 100 %; 2 is already absurd), and point
# counts as in HQ-SAM's ``masks_sample_points`` (10) with room for sweeps.
MAX_NOISE_SCALE = 2.0
MAX_POINTS = 100
_FORMS = "accepted forms: 'gt-box', 'noisy-box:S' with 0 < S <= 2, 'points:K' with 1 <= K <= 100"


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """An H x W bool mask; raises ValueError for other shapes and for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D H x W array, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("the mask is empty: no prompt can be drawn from an object with no pixels")
    return mask


def mask_box(mask: np.ndarray) -> Box:
    """Tight box of a mask, as torchvision's ``masks_to_boxes``.

    Arguments:
        mask: H x W bool (or 0/1) array.

    Returns:
        (x0, y0, x1, y1): min/max column and row of the foreground pixels (floats). A one-pixel
        object gives x0 == x1.
    """
    mask = _as_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


def noisy_box(box: Box, scale: float, rng: np.random.Generator, size: tuple[int, int]) -> Box:
    """DN-DETR-style box noise, as sam-hq's ``box_noise`` (docs/stable-sam.md, "RTS: robust
    training").

    In (cx, cy, w, h): ``cx += u1 * w/2 * scale``, ``cy += u2 * h/2 * scale``,
    ``w += u3 * w * scale``, ``h += u4 * h * scale`` with ``u ~ U(-1, 1)`` (drawn in that order,
    four draws, also when ``scale`` is 0 so the generator advances the same way). The noisy width
    and height are kept >= 1 px (sam-hq lets them go negative for scales > 1).

    Arguments:
        box: (x0, y0, x1, y1) in pixels (``mask_box``).
        scale: noise scale >= 0; 0 returns ``box`` unchanged.
        rng: the generator to draw from.
        size: (H, W) of the image.

    Returns:
        (x0, y0, x1, y1) clamped into [0, W-1] x [0, H-1] (the pixel-index range of ``mask_box``;
        sam-hq clamps to [0, 1024] in its 1024-px frame) with x1 > x0 and y1 > y0: a box pushed
        off an edge is kept 1 px wide against that edge. Needs H, W >= 2.
    """
    if not scale >= 0 or not math.isfinite(scale):
        raise ValueError(f"noise scale must be a finite number >= 0, not {scale!r}")
    H, W = int(size[0]), int(size[1])
    if H < 2 or W < 2:
        raise ValueError(f"image size (H, W) = {(H, W)} is too small for a non-empty box")
    u = rng.uniform(-1.0, 1.0, size=4)
    if scale == 0:
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + u[0] * w / 2 * scale
    cy = (y0 + y1) / 2 + u[1] * h / 2 * scale
    w = max(w + u[2] * w * scale, 1.0)
    h = max(h + u[3] * h * scale, 1.0)
    nx0, nx1 = _clamp_span(cx - w / 2, cx + w / 2, W - 1)
    ny0, ny1 = _clamp_span(cy - h / 2, cy + h / 2, H - 1)
    return nx0, ny0, nx1, ny1


def _clamp_span(lo: float, hi: float, top: int) -> tuple[float, float]:
    """Clamp [lo, hi] into [0, top]; if that leaves less than 1 px, keep 1 px at the edge."""
    lo, hi = min(max(lo, 0.0), top), min(max(hi, 0.0), top)
    if hi - lo < 1.0:
        lo = min(lo, top - 1.0)
        hi = lo + 1.0
    return float(lo), float(hi)


def random_points(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k foreground pixels drawn uniformly, as HQ-SAM's ``masks_sample_points``.

    Arguments:
        mask: H x W bool (or 0/1) array, not empty.
        k: number of points, >= 1. Drawn without replacement; with replacement only when the
            object has fewer than k pixels.
        rng: the generator to draw from.

    Returns:
        k x 2 float array of (x, y) pixel indices (all meant as positive clicks).
    """
    if int(k) != k or k < 1:
        raise ValueError(f"the number of points must be an integer >= 1, not {k!r}")
    mask = _as_mask(mask)
    ys, xs = np.nonzero(mask)
    idx = rng.choice(len(xs), size=int(k), replace=len(xs) < k)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float64)


@dataclass(frozen=True)
class PromptSetting:
    """One prompt-quality level of the evaluation.

    Attributes:
        kind: ``gt-box``, ``noisy-box`` or ``points``.
        value: the noise scale (float) for ``noisy-box``, the number of points (int) for
            ``points``, None for ``gt-box``.

    ``str(setting)`` gives the form ``parse_settings`` reads ("noisy-box:0.4", "points:3").
    """

    kind: str
    value: float | int | None = None

    def __post_init__(self) -> None:
        value = self.value
        # Normalise numeric types (numpy scalars, an int scale) so that equal settings compare
        # and print equal.
        if self.kind == "noisy-box" and isinstance(value, numbers.Real) and not _is_bool(value):
            value = float(value)
        elif self.kind == "points" and isinstance(value, numbers.Integral) and not _is_bool(value):
            value = int(value)
        object.__setattr__(self, "value", value)
        _check(self.kind, value, f"{self.kind}:{value}" if value is not None else self.kind)

    @property
    def deterministic(self) -> bool:
        """True when every draw gives the same prompt (the GT box), so one draw suffices."""
        return self.kind == "gt-box"

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        return f"{self.kind}:{format(self.value, 'g')}"


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _check(kind: str, value: Any, item: str) -> None:
    """Raise a ValueError naming ``item`` unless (kind, value) is a valid setting."""
    if kind == "gt-box":
        ok = value is None
    elif kind == "noisy-box":
        ok = isinstance(value, float) and math.isfinite(value) and 0 < value <= MAX_NOISE_SCALE
    elif kind == "points":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_POINTS
    else:
        ok = False
    if not ok:
        raise ValueError(f"bad prompt setting {item!r}; {_FORMS}")


def _parse_one(item: str) -> PromptSetting:
    kind, sep, raw = item.partition(":")
    kind, raw = kind.strip(), raw.strip()
    value: float | int | None = None
    if kind == "gt-box" and sep:
        raise ValueError(f"bad prompt setting {item!r}: gt-box takes no value; {_FORMS}")
    try:
        if kind == "noisy-box":
            value = float(raw)
        elif kind == "points":
            value = int(raw)
    except ValueError:
        raise ValueError(f"bad prompt setting {item!r}; {_FORMS}") from None
    _check(kind, value, item)
    return PromptSetting(kind, value)


def parse_settings(text: str) -> list[PromptSetting]:
    """Parse a comma-separated list such as ``"gt-box,noisy-box:0.4,points:1,points:3"``.

    Order is kept; an empty list, an unknown or malformed item and a repeated setting raise a
    ValueError naming the item and the accepted forms.
    """
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise ValueError(f"no prompt settings given; {_FORMS}")
    settings: list[PromptSetting] = []
    for item in items:
        if not item:
            raise ValueError(f"empty item in prompt settings {text!r}; {_FORMS}")
        setting = _parse_one(item)
        if setting in settings:
            raise ValueError(f"prompt setting {str(setting)!r} is given twice in {text!r}")
        settings.append(setting)
    return settings


@dataclass
class Prompt:
    """A box and/or positive/negative points, in original image pixels.

    Attributes:
        box: (x0, y0, x1, y1) or None.
        points: N x 2 float array of (x, y) or None.
        labels: (N,) int array, 1 positive / 0 negative, or None.
    """

    box: Box | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists of floats/ints), e.g. to record the drawn prompts."""
        return {
            "box": None if self.box is None else [float(v) for v in self.box],
            "points": None if self.points is None else np.asarray(self.points).tolist(),
            "labels": None if self.labels is None else [int(v) for v in self.labels],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Prompt:
        """Inverse of ``to_json``."""
        box, points, labels = data.get("box"), data.get("points"), data.get("labels")
        return cls(
            box=None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
            points=None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2),
            labels=None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1),
        )

    def predict_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Predictor.predict`` (point_coords, point_labels, box)."""
        return {
            "point_coords": self.points,
            "point_labels": self.labels,
            "box": None if self.box is None else np.asarray(self.box, dtype=np.float64),
        }


def _points_prompt(mask: np.ndarray, k: int, rng: np.random.Generator) -> Prompt:
    points = random_points(mask, k, rng)
    return Prompt(points=points, labels=np.ones(len(points), dtype=np.int64))


def draw_prompt(setting: PromptSetting, mask: np.ndarray, rng: np.random.Generator) -> Prompt:
    """Draw one prompt of quality ``setting`` for the object ``mask`` (H x W)."""
    if setting.kind == "gt-box":
        return Prompt(box=mask_box(mask))
    if setting.kind == "noisy-box":
        return Prompt(box=noisy_box(mask_box(mask), float(setting.value), rng, mask.shape[:2]))
    return _points_prompt(mask, int(setting.value), rng)


def rts_prompt(
    mask: np.ndarray,
    rng: np.random.Generator,
    noise_range: tuple[float, float] = (0.0, 0.5),
    k_range: tuple[int, int] = (1, 10),
    probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3),
) -> Prompt:
    """Stable-SAM robust-training prompt (docs/stable-sam.md, "RTS: robust training"): with
    probabilities ``probs`` the GT box, a noisy box with scale ~ U(noise_range), or
    k ~ U{k_range[0]..k_range[1]} (inclusive) random positive points inside the mask.

    Arguments:
        mask: H x W bool object mask (after augmentation, in the frame the prompt is used in).
        rng: the generator to draw from.
        noise_range: (low, high) of the uniform noise scale, 0 <= low <= high.
        k_range: (low, high) inclusive range of the number of points, 1 <= low <= high.
        probs: probabilities of (GT box, noisy box, points), non-negative, summing to 1.
    """
    lo, hi = (float(v) for v in noise_range)
    if not 0 <= lo <= hi:
        raise ValueError(f"noise_range must satisfy 0 <= low <= high, got {noise_range!r}")
    klo, khi = (int(v) for v in k_range)
    if not 1 <= klo <= khi:
        raise ValueError(f"k_range must satisfy 1 <= low <= high, got {k_range!r}")
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (3,) or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"probs must be 3 non-negative numbers summing to 1, got {probs!r}")
    choice = int(rng.choice(3, p=p / p.sum()))
    if choice == 0:
        return Prompt(box=mask_box(mask))
    if choice == 1:
        scale = float(rng.uniform(lo, hi))
        return Prompt(box=noisy_box(mask_box(mask), scale, rng, np.shape(mask)[:2]))
    return _points_prompt(mask, int(rng.integers(klo, khi + 1)), rng)
