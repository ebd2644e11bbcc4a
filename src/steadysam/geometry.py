"""Where an image sits in the model's square input frame: sizes and coordinates, without torch
(shared by ``steadysam.preprocess`` and the torch-free ONNX predictor).

The two conventions (details in ``steadysam.preprocess``): ``sam`` resizes the image so its
longest side is S; ``focsam`` first pads it to multiples of 32 and scales clicks with that
padded size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

CONVENTIONS = ("sam", "focsam")
_F = TypeVar("_F", bound="FrameGeometry")


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size after resizing so the longest side is long_side (segment-anything's rounding)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclass(frozen=True)
class FrameGeometry:
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
    def create(
        cls: type[_F], convention: str, original_size: tuple[int, int], image_size: int
    ) -> _F:
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown preprocessing {convention!r}; use one of {CONVENTIONS}")
        H, W = original_size
        padded = (H, W) if convention == "sam" else (-(-H // 32) * 32, -(-W // 32) * 32)
        return cls(convention, (H, W), padded, preprocess_shape(*padded, image_size), image_size)

    def coords_to_model(self, coords: Any) -> Any:
        """... x 2 (x, y) original pixels -> model input frame (a numpy array in float64, a
        torch tensor in float32)."""
        sx = self.input_size[1] / self.padded_size[1]
        sy = self.input_size[0] / self.padded_size[0]
        out = coords.astype(np.float64) if isinstance(coords, np.ndarray) else coords.float()
        out = out.copy() if isinstance(out, np.ndarray) else out.clone()
        out[..., 0] = out[..., 0] * sx
        out[..., 1] = out[..., 1] * sy
        return out

    def boxes_to_model(self, boxes: Any) -> Any:
        """... x 4 (x0, y0, x1, y1) original pixels -> model input frame."""
        shape = boxes.shape
        return self.coords_to_model(boxes.reshape(*shape[:-1], 2, 2)).reshape(shape)
