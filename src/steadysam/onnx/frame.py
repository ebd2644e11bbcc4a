"""numpy counterparts of ``steadysam.preprocess`` and the focus box, for the torch-free
ONNX predictor.

The same two preprocessing conventions (``sam``: PIL bilinear resize of the uint8 RGB image;
``focsam``: BGR order normalised with the RGB-ordered statistics, zero-padded to multiples of
32, bilinear resize of the float image without antialias), the same coordinate frames and the
same focus box (``steadysam.models.focus_refiner.focus_box``). Bilinear resizes of float
images are OpenCV's ``INTER_LINEAR`` (half-pixel centres, edge clamping, no antialias: the
function of ``F.interpolate(mode="bilinear", align_corners=False)``; results agree to float
rounding, ~1e-6). Tests compare each function with its PyTorch original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..geometry import FrameGeometry


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """h x w [x c] float32 -> size (H, W) [x c], bilinear, half-pixel centres, no antialias."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    return cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class NpFrame(FrameGeometry):
    """:class:`steadysam.geometry.FrameGeometry` with the numpy side (``preprocess.Frame`` and
    ``preprocess.image_to_tensor`` without torch)."""

    def logits_to_original(self, logits: np.ndarray) -> np.ndarray:
        """h x w low-res logits -> H x W logits at original resolution (float32)."""
        S = self.image_size
        x = resize_bilinear(np.ascontiguousarray(logits, dtype=np.float32), (S, S))
        x = np.ascontiguousarray(x[: self.input_size[0], : self.input_size[1]])
        x = resize_bilinear(x, self.padded_size)
        return x[: self.original_size[0], : self.original_size[1]]

    def image_to_input(
        self, rgb: np.ndarray, pixel_mean: np.ndarray, pixel_std: np.ndarray
    ) -> np.ndarray:
        """H x W x 3 uint8 RGB -> 1 x 3 x S x S float32 normalised, padded model input."""
        mean = np.asarray(pixel_mean, np.float32)
        std = np.asarray(pixel_std, np.float32)
        if self.convention == "sam":
            h, w = self.input_size
            resized = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
            x = (resized.astype(np.float32) - mean) / std
        else:
            x = (rgb[:, :, ::-1].astype(np.float32) - mean) / std
            (H, W), (Hp, Wp) = self.original_size, self.padded_size
            x = np.pad(x, ((0, Hp - H), (0, Wp - W), (0, 0)))
            x = resize_bilinear(np.ascontiguousarray(x), self.input_size)
        S = self.image_size
        out = np.zeros((1, 3, S, S), np.float32)
        out[0, :, : x.shape[0], : x.shape[1]] = x.transpose(2, 0, 1)
        return out


def focus_box(coarse_logits: np.ndarray, input_size: int, expand_ratio: Any) -> np.ndarray:
    """``steadysam.models.focus_refiner.focus_box`` for one h x w low-res prediction: the
    prediction's bounding box in the S x S input (whole image when empty), scaled about its
    centre in float32 and rounded half-to-even -> int64 (left, top, right, bottom), right /
    bottom exclusive."""
    n = input_size
    up = resize_bilinear(np.ascontiguousarray(coarse_logits, dtype=np.float32), (n, n))
    fg = up > 0
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    if rows.size == 0:
        top, bottom, left, right = 0, n, 0, n
    else:
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h_ratio, w_ratio = (
        tuple(expand_ratio) if isinstance(expand_ratio, (tuple, list)) else (expand_ratio,) * 2
    )
    top, bottom = _expand(top, bottom, h_ratio, n)
    left, right = _expand(left, right, w_ratio, n)
    return np.array([left, top, right, bottom], np.int64)


def _expand(lo: int, hi: int, ratio: float, size: int) -> tuple[int, int]:
    # float32 throughout and half-to-even rounding, as the official expand_bbox in PyTorch.
    r = np.float32(ratio)
    c = np.float32((lo + hi) / 2.0)
    new_lo = max(np.round(c - r * (c - np.float32(lo))), np.float32(0))
    new_hi = min(np.round(c - r * (c - np.float32(hi))), np.float32(size))
    return int(new_lo), int(new_hi)


def focus_grid(box: np.ndarray, size: int, grid_size: int) -> np.ndarray:
    """(left, top, right, bottom) in S x S pixels -> 1 x 1 x g x g float32 grid, 1.0 in every
    cell whose adaptive max-pool bin touches the box (``box_mask(..., grid_size)``)."""
    n = grid_size
    ar = np.arange(n)
    start, end = (ar * size) // n, ((ar + 1) * size + n - 1) // n
    left, top, right, bottom = (int(v) for v in box)
    rows = (start < bottom) & (end > top)
    cols = (start < right) & (end > left)
    return (rows[:, None] & cols[None, :]).astype(np.float32)[None, None]
