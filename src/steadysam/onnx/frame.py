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

import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..datafiles import ImageError, read_image

CONVENTIONS = ("sam", "focsam")


def as_rgb(image: Any) -> np.ndarray:
    """A path, PIL image or numpy array -> H x W x 3 uint8 RGB (``preprocess.load_image``
    without torch tensors; the same conversions and the same ``ImageError``s)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = np.asarray(image)
        else:
            image = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageError(
            f"unsupported image type {type(image).__name__}: pass a path, a PIL image or an "
            "H x W [x 3|4] numpy array"
        )
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(f"unsupported image shape {arr.shape}: expected H x W, H x W x 3 or x 4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"empty image of shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageError("image contains NaN or infinite values")
        if np.issubdtype(arr.dtype, np.floating) and a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        arr = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """h x w [x c] float32 -> size (H, W) [x c], bilinear, half-pixel centres, no antialias."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    return cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class NpFrame:
    """Where an image sits in the model's S x S input (``steadysam.preprocess.Frame``)."""

    convention: str
    original_size: tuple[int, int]
    padded_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int

    @classmethod
    def create(cls, convention: str, original_size: tuple[int, int], image_size: int) -> NpFrame:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown preprocessing {convention!r}; use one of {CONVENTIONS}")
        H, W = original_size
        padded = (H, W) if convention == "sam" else (-(-H // 32) * 32, -(-W // 32) * 32)
        scale = image_size * 1.0 / max(padded)
        inp = (int(padded[0] * scale + 0.5), int(padded[1] * scale + 0.5))
        return cls(convention, (H, W), padded, inp, image_size)

    def coords_to_model(self, coords: np.ndarray) -> np.ndarray:
        """... x 2 (x, y) original pixels -> model input frame (float64)."""
        out = np.array(coords, dtype=np.float64)
        out[..., 0] *= self.input_size[1] / self.padded_size[1]
        out[..., 1] *= self.input_size[0] / self.padded_size[0]
        return out

    def boxes_to_model(self, boxes: np.ndarray) -> np.ndarray:
        """... x 4 (x0, y0, x1, y1) original pixels -> model input frame."""
        b = np.asarray(boxes, dtype=np.float64)
        return self.coords_to_model(b.reshape(*b.shape[:-1], 2, 2)).reshape(b.shape)

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
