"""Image and coordinate conventions: the one place that maps between original pixels and the
model's square input frame.

Two conventions, both reproduced exactly:

``sam``     official ``SamPredictor``: RGB uint8, longest side resized to S with PIL bilinear
            (antialiased), normalised, zero-padded bottom/right to S x S.
``focsam``  official FocSAM (docs/focsam.md §1.1): BGR order normalised with the RGB-ordered
            mean/std,
            zero-padded (in normalised space) to multiples of 32, then the float tensor resized
            bilinearly without antialias so the longest side is S, zero-padded to S x S. Clicks
            are scaled with the 32-padded size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datafiles import ImageError, read_image

CONVENTIONS = ("sam", "focsam")


def load_image(image: Any) -> np.ndarray:
    """Any supported image -> H x W x 3 uint8 RGB.

    Accepts file paths (read by ``steadysam.datafiles.read_image``, the decoder evaluation and
    training use), PIL images and numpy arrays (H x W, H x W x 1, H x W x 3, H x W x 4; uint8,
    uint16, bool or float in [0, 1] or [0, 255]); torch tensors as H x W x C arrays. Raises
    ``ImageError`` (a ValueError, defined in ``steadysam.datafiles``) naming what is wrong."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = np.asarray(image)
        else:
            image = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
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


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size after resizing so the longest side is long_side (segment-anything's rounding)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class Frame:
    """Where an image sits in the model's S x S input.

    original_size: (H, W); padded_size: the size the resize is computed from ((H, W) for
    ``sam``, rounded up to multiples of 32 for ``focsam``); input_size: (h', w') of the resized
    padded image inside the S x S frame."""

    convention: str
    original_size: tuple[int, int]
    padded_size: tuple[int, int]
    input_size: tuple[int, int]
    image_size: int

    @classmethod
    def create(cls, convention: str, original_size: tuple[int, int], image_size: int) -> Frame:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown preprocessing {convention!r}; use one of {CONVENTIONS}")
        H, W = original_size
        padded = (H, W) if convention == "sam" else (-(-H // 32) * 32, -(-W // 32) * 32)
        return cls(convention, (H, W), padded, preprocess_shape(*padded, image_size), image_size)

    def coords_to_model(self, coords: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """... x 2 (x, y) original pixels -> model input frame."""
        sx = self.input_size[1] / self.padded_size[1]
        sy = self.input_size[0] / self.padded_size[0]
        out = coords.astype(np.float64) if isinstance(coords, np.ndarray) else coords.float()
        out = out.copy() if isinstance(out, np.ndarray) else out.clone()
        out[..., 0] = out[..., 0] * sx
        out[..., 1] = out[..., 1] * sy
        return out

    def boxes_to_model(self, boxes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """... x 4 (x0, y0, x1, y1) original pixels -> model input frame."""
        shape = boxes.shape
        return self.coords_to_model(boxes.reshape(*shape[:-1], 2, 2)).reshape(shape)

    def logits_to_original(self, logits: torch.Tensor) -> torch.Tensor:
        """B x M x h x w low-res logits -> B x M x H x W logits at original resolution."""
        S = self.image_size
        h, w = logits.shape[-2:]
        if S % h == 0 and S % w == 0:
            # Upsample only the low-res rows / columns the crop needs (+1 for the bilinear
            # neighbour): the scale stays exactly S / h, so the kept pixels are bit-identical.
            fy, fx = S // h, S // w
            rows = min(h, -(-self.input_size[0] // fy) + 1)
            cols = min(w, -(-self.input_size[1] // fx) + 1)
            x = F.interpolate(
                logits[..., :rows, :cols],
                (rows * fy, cols * fx),
                mode="bilinear",
                align_corners=False,
            )
        else:
            x = F.interpolate(logits, (S, S), mode="bilinear", align_corners=False)
        x = x[..., : self.input_size[0], : self.input_size[1]]
        x = F.interpolate(x, self.padded_size, mode="bilinear", align_corners=False)
        return x[..., : self.original_size[0], : self.original_size[1]]


def image_to_tensor(
    image: np.ndarray,
    frame: Frame,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x S x S normalised, padded model input."""
    S = frame.image_size
    mean = pixel_mean.to(device).view(-1, 1, 1)
    std = pixel_std.to(device).view(-1, 1, 1)
    if frame.convention == "sam":
        h, w = frame.input_size
        resized = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        x = torch.as_tensor(resized, device=device).permute(2, 0, 1).float()
        x = (x - mean) / std
    else:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        x = torch.as_tensor(bgr, device=device).permute(2, 0, 1).float()
        x = (x - mean) / std
        (H, W), (Hp, Wp) = frame.original_size, frame.padded_size
        x = F.pad(x, (0, Wp - W, 0, Hp - H))
        x = F.interpolate(
            x[None], frame.input_size, mode="bilinear", align_corners=False, antialias=False
        )[0]
    h, w = x.shape[-2:]
    return F.pad(x, (0, S - w, 0, S - h))[None]
