"""``build_model``: a model from a name, a checkpoint, or both."""

from __future__ import annotations

import os

from .models.build import build_sam, sam_config
from .models.sam import Sam


def build_model(
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
) -> Sam:
    """Build a SAM / FocSAM model by architecture name (random weights unless a checkpoint is
    given or pretrained=True)."""
    if name is None:
        raise ValueError("name a model (e.g. 'sam_vit_b') or pass checkpoint=PATH")
    if checkpoint is not None or pretrained:
        raise NotImplementedError("checkpoint loading is not implemented yet")
    return build_sam(sam_config(name))
