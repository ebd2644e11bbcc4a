"""Training setup: the model (architecture + initial weights + frozen parts), the optimiser and
its schedule (the torchrun process group: ``steadysam.distributed``)."""

from __future__ import annotations

import torch

from ..models.build import build_sam
from ..models.config import PARTS, PLUGIN_PART
from ..models.sam import Sam
from ..models.stable_plugin import is_plugin_key
from .config import ConfigError, OptimConfig, TrainConfig


def build_train_model(cfg: TrainConfig) -> Sam:
    """The model of ``cfg.model`` with its initial weights and ``requires_grad`` set per part.

    A checkpoint without a refiner may initialise a model with one (FocSAM stage 2 from the
    stage-1 SAM): the refiner keeps its own init (docs/focsam.md §4.9); likewise a checkpoint
    without a Stable-SAM plugin for a model with one: the plugin keeps its identity init, so the
    model starts as exactly the checkpoint's SAM. Any other difference is an error.
    """
    torch.manual_seed(cfg.seed)  # the same random init on every rank and every resume
    model = build_sam(cfg.arch())
    pos = model.image_encoder.pos_embed
    if cfg.model.pos_embed_init == "sincos" and pos is not None and not cfg.model.checkpoint:
        with torch.no_grad():
            pos.copy_(sincos_2d(pos.shape[-1], pos.shape[1], pos.shape[2])[None])
    if cfg.model.checkpoint:
        from ..weights.files import load_checkpoint

        state, _, _ = load_checkpoint(cfg.model.checkpoint)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ConfigError(f"model.checkpoint {cfg.model.checkpoint!r}: {e}") from None
        bad = [k for k in result.missing_keys if not _may_start_fresh(k)]
        if bad or result.unexpected_keys:
            raise ConfigError(
                f"model.checkpoint {cfg.model.checkpoint!r} does not fit {cfg.model.name} "
                f"(+arch): missing {bad[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    set_trainable(model, cfg.model.trainable)
    return model


def _may_start_fresh(key: str) -> bool:
    """Parts a checkpoint may lack: they keep the init they were built with."""
    return key.startswith("refiner.") or is_plugin_key(key)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table, h x w x dim: the first half of the channels
    encodes the row, the second half the column, each as [sin(p w_k), cos(p w_k)] with
    w_k = 10000^(-k / (dim / 4)), p the integer grid index."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim % 4 == 0, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def axis(n: int) -> torch.Tensor:  # n x dim/2
        out = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows = axis(h)[:, None, :].expand(h, w, dim // 2)
    cols = axis(w)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=-1).float()


def set_trainable(model: Sam, trainable: list[str]) -> None:
    """requires_grad True exactly for the parameters of the listed parts.

    The Stable-SAM plugin sits inside the mask decoder but is a part of its own: the modules
    are set first, then the plugin's parameters, so ``[plugin]`` trains the plugin alone and
    ``[mask_decoder]`` SAM's decoder without it."""
    for part in PARTS:
        module = getattr(model, part, None)
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(part in trainable)
    for p in model.plugin_parameters():
        p.requires_grad_(PLUGIN_PART in trainable)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )


def lr_factor(it: int, total: int, warmup: int, start_factor: float, decay: bool = True) -> float:
    """LinearLR(start_factor) over the first ``warmup`` iterations, then PolyLR(power 1) down
    to 0 at ``total`` (mmengine closed forms; the value used for iteration ``it``), or constant
    after the warm-up without ``decay``."""
    if it < warmup:
        return start_factor + (1.0 - start_factor) * it / warmup
    if total <= warmup or not decay:
        return 1.0
    return max(0.0, 1.0 - (it - warmup) / (total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda it: lr_factor(it, cfg.iters, o.warmup_iters, o.warmup_start_factor, o.decay),
    )
