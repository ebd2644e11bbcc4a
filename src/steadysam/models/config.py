"""Architecture configuration: one dataclass describes every SAM / FocSAM size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RefinerConfig:
    """FocSAM focus refiner (spec §4). Its channel width is the prompt embedding width."""

    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    window_size: int = 16
    expand_ratio: float = 1.4


@dataclass
class SamConfig:
    """SAM architecture; ``refiner`` set makes it FocSAM.

    ``encoder_norm_eps`` is 1e-6 in official SAM and 1e-5 in FocSAM's ViT (spec §2.1).
    ``preprocess`` names the image convention the weights were trained with: ``sam`` or ``focsam``.
    """

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    encoder_norm_eps: float = 1e-6
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    preprocess: str = "sam"
    refiner: RefinerConfig | None = field(default=None)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SamConfig fields: {sorted(unknown)}")
        ref = d.pop("refiner", None)
        for k in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d, refiner=RefinerConfig(**ref) if ref is not None else None)
