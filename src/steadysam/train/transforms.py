"""Per-sample transforms of the training pipeline (docs/focsam.md §7.1): colour augmentation and
mapping a ground-truth mask into the model's S x S input frame (the image itself goes through
``steadysam.preprocess.image_to_tensor``, the one place for image conventions)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..preprocess import Frame


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg: float32 multiply-add, clip, truncate to uint8.
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distortion(
    bgr: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` with its defaults on an H x W x 3 uint8 BGR image.

    Each step happens with probability 1/2, in mmseg's order: brightness (+U(-32, 32)),
    contrast (xU(0.5, 1.5)) either second or last, saturation (xU(0.5, 1.5) of OpenCV's S
    channel), hue (integer shift in [-18, 18) on OpenCV's 0..180 scale). The draws use
    ``rng.integers(2)`` / ``rng.uniform`` exactly where mmseg calls ``np.random``.
    """
    img = bgr
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


def color_augment_rgb(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PhotoMetricDistortion on an RGB image, applied in BGR order as the recipe does (the hue
    and saturation steps go through OpenCV's BGR<->HSV)."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return np.ascontiguousarray(photometric_distortion(bgr, rng)[:, :, ::-1])


def mask_to_frame(mask: np.ndarray, frame: Frame) -> torch.Tensor:
    """H x W bool object mask -> S x S bool mask aligned with ``image_to_tensor(image, frame)``.

    Same geometry as the image (``focsam``: pad to /32, resize; ``sam``: resize), bilinear on
    the 0/1 mask thresholded at 1/2, zero padding to S x S. An object that vanishes (smaller
    than a pixel after downscaling) keeps every output pixel it overlaps (area resize > 0), so
    a non-empty object never becomes empty."""
    H, W = frame.original_size
    if mask.shape != (H, W):
        raise ValueError(f"mask {mask.shape} does not match the image size {(H, W)}")
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    Hp, Wp = frame.padded_size
    m = F.pad(m, (0, Wp - W, 0, Hp - H))[None, None]
    h, w = frame.input_size
    out = F.interpolate(m, (h, w), mode="bilinear", align_corners=False)[0, 0] > 0.5
    if not bool(out.any()) and bool(m.any()):
        area = cv2.resize(m[0, 0].numpy(), (w, h), interpolation=cv2.INTER_AREA)
        out = torch.from_numpy(area > 0)
    S = frame.image_size
    return F.pad(out, (0, S - w, 0, S - h))
