"""Training setup: the model (architecture + initial weights + frozen parts), the optimiser and
its schedule, and the torchrun process group."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.build import build_sam
from ..models.sam import Sam
from .config import PARTS, ConfigError, OptimConfig, TrainConfig


def build_train_model(cfg: TrainConfig) -> Sam:
    """The model of ``cfg.model`` with its initial weights and ``requires_grad`` set per part.

    A checkpoint without a refiner may initialise a model with one (FocSAM stage 2 from the
    stage-1 SAM): the refiner keeps its own init (spec §4.9). Any other difference is an error.
    """
    torch.manual_seed(cfg.seed)  # the same random init on every rank and every resume
    model = build_sam(cfg.arch())
    if cfg.model.checkpoint:
        from ..checkpoints import load_checkpoint

        state, _, _ = load_checkpoint(cfg.model.checkpoint)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ConfigError(f"model.checkpoint {cfg.model.checkpoint!r}: {e}") from None
        bad = [k for k in result.missing_keys if not k.startswith("refiner.")]
        if bad or result.unexpected_keys:
            raise ConfigError(
                f"model.checkpoint {cfg.model.checkpoint!r} does not fit {cfg.model.name} "
                f"(+arch): missing {bad[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    set_trainable(model, cfg.model.trainable)
    if "image_encoder" in cfg.model.trainable:
        ensure_encoder_differentiable()
    return model


def set_trainable(model: Sam, trainable: list[str]) -> None:
    """requires_grad True exactly for the parameters of the listed parts."""
    for part in PARTS:
        module = getattr(model, part, None)
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(part in trainable)


def ensure_encoder_differentiable() -> None:
    """``models.image_encoder.rel_pos_attention`` builds its bias with ``torch.add(out=...)``,
    which autograd rejects, so the encoder cannot be trained. Until the models fix lands, swap
    in a mathematically identical function (one bias chunk, plain broadcast add) when a probe
    shows the problem; once the models code is differentiable this does nothing."""
    from ..models import image_encoder as ie

    q = torch.zeros(1, 1, 4, 2, requires_grad=True)
    rel = torch.zeros(3, 2, requires_grad=True)
    try:
        ie.rel_pos_attention(q, q, q, rel, rel, (2, 2), 1.0).sum().backward()
        return
    except RuntimeError:
        pass
    get_rel_pos, original = ie.get_rel_pos, ie.rel_pos_attention

    def rel_pos_attention(q, k, v, rel_pos_h, rel_pos_w, size, scale, chunk_bytes=16 << 20):
        if not torch.is_grad_enabled():  # inference keeps the chunked, memory-bounded original
            return original(q, k, v, rel_pos_h, rel_pos_w, size, scale, chunk_bytes)
        h, w = size
        b, nh, _, dim = q.shape
        r_q = q.reshape(b * nh, h, w, dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, h * w, h * w)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    ie.rel_pos_attention = rel_pos_attention


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )


def lr_factor(it: int, total: int, warmup: int, start_factor: float) -> float:
    """LinearLR(start_factor) over the first ``warmup`` iterations, then PolyLR(power 1) down
    to 0 at ``total`` (mmengine closed forms; the value used for iteration ``it``)."""
    if it < warmup:
        return start_factor + (1.0 - start_factor) * it / warmup
    if total <= warmup:
        return 1.0
    return max(0.0, 1.0 - (it - warmup) / (total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    o = cfg.optim
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg.iters, o.warmup_iters, o.warmup_start_factor)
    )


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Process group from torchrun's environment (gloo on CPU, nccl on GPU); single process
    without it."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, dev)
