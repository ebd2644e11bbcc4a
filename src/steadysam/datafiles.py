"""Reading the files datasets are made of: the one reader of image files, the one reader of mask
files, and the errors of files and datasets that cannot be used.

Evaluation, training and the predictor (``preprocess.load_image`` of a path, ``steadysam
segment``) all read image files here, so a file gives the same pixels everywhere. The decoder is
OpenCV's, as evaluation has always used (RITM's and the official FocSAM pipelines read images with
``cv2.imread`` too, so published NoC numbers depend on it): Pillow decodes most files to the same
pixels, but not every file (EXIF-rotated photos, CMYK JPEGs, 16-bit images differ).

Torch-free, so evaluation and the CLI can import it without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_DECODER",
    "IMAGE_EXTS",
    "DatasetError",
    "ImageError",
    "image_size",
    "label_map",
    "read_image",
    "read_mask",
]

# Extensions dataset folders are listed by (images and mask files alike).
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# What decodes image files, recorded where decoded pixels are stored (training's embedding
# cache), so that stored results of another decoder are recognised as such.
IMAGE_DECODER = "opencv"

# PIL modes whose values are kept as stored: palette indices, grey levels, 16/32-bit ids, and
# RGB colours (turned into ids by label_map). Other modes are converted (see read_mask).
_RAW_MASK_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "RGB")
_EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the picture by 90 degrees (width and height swap when upright).
_TRANSPOSING = (5, 6, 7, 8)


class DatasetError(ValueError):
    """A dataset that cannot be used as a whole (wrong root, unknown name, missing path,
    malformed annotations, missing dependency): evaluation and training stop on it."""


class ImageError(ValueError):
    """An image or mask that cannot be read or interpreted.

    Arguments:
        message: the whole message (it names the file).
        reason: why, without the file's name, for messages that name the file themselves;
            defaults to ``message``.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


def first_line(e: BaseException) -> str:
    """The informative first line of an exception's message (its type name when empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise ImageError(f"cannot read {what} {str(p)!r}: no such file", "no such file")
    if not p.is_file():
        raise ImageError(f"cannot read {what} {str(p)!r}: not a file", "not a file")
    return p


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB, decoded by OpenCV (``IMREAD_COLOR``).

    OpenCV turns the picture upright by its EXIF orientation, repeats a grey image over the three
    channels, drops an alpha channel and scales 16-bit images to 8 bits. A file OpenCV cannot
    decode at all (a format only Pillow knows, such as GIF) is read by Pillow, converted to RGB.

    Arguments:
        path: the image file; any name (spaces, non-ASCII characters).

    Raises ImageError naming the file when it is missing or neither decoder can read it (with
    Pillow's reason: not an image, truncated, ...).
    """
    p = _existing_file(path, "image")
    try:
        # imdecode(fromfile) rather than imread: it copes with any path on every platform.
        buf = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read image {str(p)!r}: {e}", str(e)) from e
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if bgr is not None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        with Image.open(p) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:  # Pillow raises several types for corrupt files
        why = "cannot decode image: corrupt, truncated or an unsupported format"
        reason = f"{first_line(e)} ({why})"
        raise ImageError(f"cannot read image {str(p)!r}: {reason}", reason) from None


def to_rgb(image: Any) -> np.ndarray:
    """Any supported image -> H x W x 3 uint8 RGB, without torch (the ONNX predictor's path;
    ``steadysam.preprocess.load_image`` adds torch tensors).

    Accepts file paths (read by :func:`read_image`, as evaluation and training read them), PIL
    images and numpy arrays (H x W, H x W x 1, H x W x 3, H x W x 4; uint8, uint16, bool or
    float in [0, 1] or [0, 255]). Raises :class:`ImageError` naming what is wrong."""
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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of the array :func:`read_image` returns for a file, from the file's header only (no
    pixel is decoded).

    Arguments:
        path: the image file.

    Raises Pillow's errors for a file it cannot identify.
    """
    with Image.open(path) as im:
        w, h = im.size
        # OpenCV turns the picture upright, which swaps width and height for orientations 5-8;
        # Pillow's TIFF reader reports the upright size already, its other readers the stored one.
        if im.format != "TIFF" and im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING:
            w, h = h, w
    return h, w


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, str]:
    """A mask file's raw values and its PIL mode.

    Palette files give their indices, grey and 16/32-bit files their values (H x W), RGB files
    their colours (H x W x 3). 1-bit and grey+alpha files become grey (0 / 255); any other mode
    (RGBA, CMYK, ...) becomes RGB. Masks are read with Pillow: a mask's palette indices are its
    labels, which OpenCV would turn into colours.

    Arguments:
        path: the mask file.

    Raises ImageError naming the file when it is missing or cannot be read.
    """
    p = _existing_file(path, "mask")
    try:
        with Image.open(p) as im:
            mode = im.mode
            if mode in ("1", "LA"):
                im = im.convert("L")
            elif mode not in _RAW_MASK_MODES:
                im = im.convert("RGB")
            arr = np.array(im)
    except Exception as e:  # Pillow raises several types for corrupt files
        reason = first_line(e)
        raise ImageError(f"cannot read mask {str(p)!r}: {reason}", reason) from e
    return arr, mode


def label_map(mask: np.ndarray) -> np.ndarray:
    """H x W int64 labels of a raw mask (:func:`read_mask`): a colour mask's label is
    R + 256 G + 256² B (the COCO panoptic id formula; int64, so it cannot wrap), any other
    mask's the value as stored.

    Arguments:
        mask: H x W or H x W x 3 raw mask values.
    """
    a = mask.astype(np.int64)
    if a.ndim == 3:
        return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]
    return a
