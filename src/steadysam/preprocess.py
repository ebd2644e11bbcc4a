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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datafiles import to_rgb
from .geometry import CONVENTIONS, FrameGeometry, preprocess_shape  # noqa: F401 (re-exported)


def load_image(image: Any) -> np.ndarray:
    """Any supported image -> H x W x 3 uint8 RGB: :func:`steadysam.datafiles.to_rgb`, plus
    torch tensors taken as H x W [x C] arrays. Raises ``ImageError`` (a ValueError, defined in
    ``steadysam.datafiles``) naming what is wrong."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return to_rgb(image)


@dataclass(frozen=True)
class Frame(FrameGeometry):
    """:class:`steadysam.geometry.FrameGeometry` with the torch side: low-res logits back to
    the original image."""

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
