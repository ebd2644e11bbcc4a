"""Architecture configuration: one dataclass describes every SAM / FocSAM size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The model's parts: its top-level modules (``Sam.image_encoder``, ...), whose names begin every
# state-dict key; a SAM model has no refiner.
PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "refiner")
# Stable-SAM's plugin (DSP + DRP) lives inside the mask decoder, so it is no top-level module,
# but training and parameter counts treat it as a part of its own ("mask_decoder" then means
# SAM's decoder weights without it).
PLUGIN_PART = "plugin"


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` if every key is a field of the dataclass ``cls``, else a ValueError naming the
    unknown ones (a config file from another version or with a typo is not half-read)."""
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return d


@dataclass
class RefinerConfig:
    """FocSAM focus refiner (docs/focsam.md §4). Its channel width is the prompt embedding width.

    ``depth``: refine blocks (even plain, odd shifted); ``num_heads``: attention heads per
    block; ``mlp_ratio``: hidden width of the token MLP / channel width; ``window_size``: window
    side in embedding-grid cells; ``expand_ratio``: focus-box expansion at inference.
    """

    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    window_size: int = 16
    expand_ratio: float = 1.4


PLUGIN_SITES = ("layer0_t2i", "layer1_t2i", "final_t2i")


@dataclass
class PluginConfig:
    """Stable-SAM plugin (DSP + DRP) in the mask decoder; defaults follow the paper's figure and
    the choices documented in docs/stable-sam.md.

    ``sites``: token->image attentions that get a plugin: ``layer{i}_t2i`` (two-way block i) or
    ``final_t2i``; the paper uses the second block only. ``pe_mode``: keys keep SAM's grid PE
    (``grid``) or get the PE sampled at the deformed points (``deformed``). ``drp_token``: the
    token the router reads after that block's self-attention: ``mask0`` (single-mask output
    token), ``iou`` or ``mean`` of the output tokens. ``routing``: ``soft`` mixes by the
    router's weights; ``hard`` switches to deformed sampling iff its weight > hard_threshold
    (inference only; training is always soft). ``sample_source``: ``projected`` samples the
    1x1-projected map (final figure), ``raw`` the features themselves (arXiv v1).
    ``offset_range``: None = unbounded offsets (cells), R = R * tanh.
    """

    sites: tuple[str, ...] = ("layer1_t2i",)
    pe_mode: str = "grid"
    drp_token: str = "mask0"
    routing: str = "soft"
    hard_threshold: float = 0.5
    drp_hidden: int = 32
    kernel_size: int = 5
    sample_source: str = "projected"
    offset_range: float | None = None

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        choices = {
            "pe_mode": ("grid", "deformed"),
            "drp_token": ("mask0", "iou", "mean"),
            "routing": ("soft", "hard"),
            "sample_source": ("projected", "raw"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"plugin.{name} must be one of {allowed}, not {getattr(self, name)!r}"
                )
        bad = [s for s in self.sites if s not in PLUGIN_SITES]
        if bad or not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError(
                f"plugin.sites must be distinct items of {PLUGIN_SITES}, not {self.sites}"
            )
        if self.drp_hidden < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError("plugin.drp_hidden must be >= 1 and plugin.kernel_size odd")
        if self.offset_range is not None and not self.offset_range > 0:
            raise ValueError(f"plugin.offset_range must be > 0 or None, not {self.offset_range}")
        if not 0.0 <= self.hard_threshold <= 1.0:
            raise ValueError(f"plugin.hard_threshold must be in [0, 1], not {self.hard_threshold}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PluginConfig:
        return cls(**_known_fields(cls, d))


@dataclass
class HQConfig:
    """HQ-SAM's additions to the mask decoder (Ke et al. 2023; docs/hq-sam.md): the HQ output
    token, its MLP and the global-local feature fusion, which reads the image encoder's output
    after its first global-attention block. Their widths follow from the encoder and decoder
    widths, so the only setting is how the HQ mask is returned.

    ``token_only``: the default of the official predictor's ``hq_token_only`` for this model:
    False returns the SAM mask's logits plus the HQ mask's (the official default), True the
    HQ mask alone (the HQ-SAM paper's evaluation). An inference setting, not architecture.
    """

    token_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.token_only, bool):
            raise ValueError(f"hq.token_only must be True or False, not {self.token_only!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HQConfig:
        return cls(**_known_fields(cls, d))


@dataclass
class SamConfig:
    """SAM architecture; ``refiner`` set makes it FocSAM.

    ``encoder_*`` are the ViT's width, depth, heads, global-attention block indexes (0-based),
    window side (tokens), MLP ratio and LayerNorm eps; ``image_size`` is the side S of the
    square model input in pixels and ``patch_size`` the ViT patch side (the embedding grid is
    S / patch_size); ``prompt_embed_dim`` is the width of the prompt encoder, the mask decoder,
    the refiner and the encoder's output; ``mask_in_chans`` the mask-prompt convolutions' width;
    ``decoder_*`` the two-way transformer's depth, MLP width and heads; ``num_multimask_outputs``
    and ``iou_head_*`` are :class:`MaskDecoder`'s arguments of the same names; ``pixel_mean`` /
    ``pixel_std`` the normalisation statistics in RGB order (applied unchanged to BGR images
    under the ``focsam`` convention, as FocSAM does: docs/focsam.md §1.1).
    ``encoder_norm_eps`` is 1e-6 in official SAM and 1e-5 in FocSAM's ViT (docs/focsam.md §2.1).
    ``preprocess`` names the image convention the weights were trained with: ``sam`` or ``focsam``.
    ``plugin`` set adds Stable-SAM's plugin to the mask decoder (with or without a refiner).
    ``hq`` set makes it HQ-SAM (:class:`HQConfig`; not combined with a refiner).
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
    plugin: PluginConfig | None = field(default=None)
    hq: HQConfig | None = field(default=None)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamConfig:
        d = dict(_known_fields(cls, d))
        ref = d.pop("refiner", None)
        plugin = d.pop("plugin", None)
        hq = d.pop("hq", None)
        for k in ("encoder_global_attn_indexes", "pixel_mean", "pixel_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(
            **d,
            refiner=RefinerConfig(**ref) if ref is not None else None,
            plugin=PluginConfig.from_dict(plugin) if plugin is not None else None,
            hq=HQConfig.from_dict(hq) if hq is not None else None,
        )
