"""Iterative click simulation for training (docs/focsam.md §7.3, §7.4), all under no_grad / eval.

One call simulates one group of samples (one source: its own gamma) in the S x S model frame:
a first click from an empty prediction (inner_k 1.0), then ``rounds`` rounds of decoder
prediction with all clicks and the previous logits as mask prompt, each adding one click
(inner_k 1.7). For FocSAM stage 2 the refiner runs once, before round ``refine_step`` (or after
the last round when ``refine_step == rounds``), on the coarse prediction of the clicks so far;
later rounds use the refined embedding.

With a box per sample (stage sam, ``sim.box_prob``: SAM's own training mixes boxes and clicks)
the jittered GT box replaces the first click and stays a prompt in every round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..clicks import Click, next_click
from ..models.sam import Sam
from ..prompts import Box, mask_box
from .losses import upsample

# SAM's training-time box jitter (sam-hq2 ``sample_box_points``; docs/training.md, "The
# recipe"): each coordinate moves by U(-1, 1) x min(BOX_NOISE x box side, BOX_NOISE_MAX_PX at
# 1024 px input).
BOX_NOISE = 0.1
BOX_NOISE_MAX_PX = 20.0


def truncated_geometric(gamma: float, high: int, rng: np.random.Generator) -> int:
    """k in 0..high with P(k) ∝ gamma^k."""
    p = gamma ** np.arange(high + 1, dtype=np.float64)
    return int(rng.choice(high + 1, p=p / p.sum()))


def click_tensors(
    clicks: list[list[Click]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample click lists -> (coords B x N x 2 float (x, y), labels B x N), shorter lists
    padded with label -1 ("not a point")."""
    n = max(1, max(len(c) for c in clicks))
    coords = torch.zeros(len(clicks), n, 2)
    labels = torch.full((len(clicks), n), -1, dtype=torch.long)
    for i, cs in enumerate(clicks):
        for j, c in enumerate(cs):
            coords[i, j, 0], coords[i, j, 1] = c.x, c.y
            labels[i, j] = int(c.positive)
    return coords.to(device), labels.to(device)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, image_size: int) -> Box:
    """The GT box of an H x W mask (``prompts.mask_box``) with SAM's training jitter, clamped to
    the mask's frame; the 20 px cap is scaled to ``image_size`` (it is set at 1024 px)."""
    box = np.asarray(mask_box(mask))
    cap = BOX_NOISE_MAX_PX * image_size / 1024
    dx = min(BOX_NOISE * (box[2] - box[0]), cap)
    dy = min(BOX_NOISE * (box[3] - box[1]), cap)
    box = box + rng.uniform(-1.0, 1.0, 4) * np.array([dx, dy, dx, dy])
    h, w = mask.shape
    x0, y0, x1, y1 = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1]).tolist()
    return x0, y0, x1, y1


@dataclass
class Simulation:
    """The prompts of the training forward pass for one group.

    coords / labels: final clicks (B x N x 2, B x N; padding label -1).
    prev_logits: B x 1 x 4h x 4w logits of the last simulated round (None after 0 rounds).
    boxes: B x 4 box prompts (x0, y0, x1, y1) kept in every round, or None.
    Stage 2 only, the refine-time state: coarse_logits B x 1 x 4h x 4w and query token B x 1 x C
    of the coarse pass on the original embedding, and the rounds / refine step drawn."""

    coords: torch.Tensor
    labels: torch.Tensor
    prev_logits: torch.Tensor | None
    rounds: int
    refine_step: int | None = None
    coarse_logits: torch.Tensor | None = None
    query_token: torch.Tensor | None = None
    boxes: torch.Tensor | None = None

    @property
    def points(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The decoder's point prompt: None when only boxes were given (as at inference, a box
        alone gets no padding point)."""
        return _points(self.coords, self.labels, self.boxes)


def _points(
    coords: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    if boxes is not None and not bool((labels >= 0).any()):
        return None
    return coords, labels


def _add_clicks(
    clicks: list[list[Click]],
    gts: list[np.ndarray],
    logits: torch.Tensor | None,
    size: int,
    inner_k: float,
    rng: np.random.Generator,
) -> None:
    if logits is None:
        preds = [np.zeros_like(g) for g in gts]
    else:
        preds = list((upsample(logits.float(), size)[:, 0] > 0).cpu().numpy())
    for cs, gt, pred in zip(clicks, gts, preds, strict=True):
        c = next_click(gt, pred, cs, rule="focsam", inner_k=inner_k, rng=rng)
        if c is not None:  # no error left: the sample keeps its prompts
            cs.append(c)


@torch.no_grad()
def simulate(
    model: Sam,
    embeddings: torch.Tensor,
    gts: list[np.ndarray],
    rounds: int,
    rng: np.random.Generator,
    refine_step: int | None = None,
    expand_ratio: tuple[float, float] = (1.4, 1.4),
    first_inner_k: float = 1.0,
    inner_k: float = 1.7,
    boxes: torch.Tensor | None = None,
) -> Simulation:
    """Simulate ``rounds`` corrective rounds for B samples.

    Arguments:
      embeddings: B x C x h x w image embeddings (detached).
      gts: B ground-truth masks, S x S bool, in the model frame.
      refine_step: FocSAM stage 2: run the refiner before this round (0..rounds); None: SAM.
      expand_ratio: (h, w) focus-box expansion for the refiner run inside the simulation.
      boxes: B x 4 box prompts: they replace the first click and are decoded with the clicks
        in every round.
    """
    was_training = model.training
    model.eval()
    try:
        size = model.image_size
        clicks: list[list[Click]] = [[] for _ in gts]
        if boxes is None:
            _add_clicks(clicks, gts, None, size, first_inner_k, rng)
        emb, prev = embeddings, None
        coarse = token = None
        for r in range(rounds + 1):
            pts = _points(*click_tensors(clicks, embeddings.device), boxes)
            if r == refine_step:
                coarse, _, token = model.decode(
                    embeddings, points=pts, boxes=boxes, mask_input=prev, return_tokens=True
                )
                emb = model.refine(embeddings, coarse, token, expand_ratio)
            if r == rounds:
                break
            prev = model.decode(emb, points=pts, boxes=boxes, mask_input=prev)[0]
            _add_clicks(clicks, gts, prev, size, inner_k, rng)
        coords, labels = click_tensors(clicks, embeddings.device)
        return Simulation(coords, labels, prev, rounds, refine_step, coarse, token, boxes)
    finally:
        model.train(was_training)
