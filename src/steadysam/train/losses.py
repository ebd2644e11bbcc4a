"""Training losses.

FocSAM (docs/focsam.md §7.5): normalised focal loss (NFL, RITM) and the point loss (PTL), both at
the S x S model input (low-res decoder logits upsampled bilinearly, align_corners=False, first).

Stable-SAM's RTS (docs/stable-sam.md, "RTS"): HQ-SAM's BCE + Dice on points sampled PointRend-style
(mostly where the logits are least certain) from the low-res logits and the mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1.19e-7  # the official constant (~ float32 machine epsilon)


def upsample(logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """B x 1 x h x w logits -> B x 1 x S x S (no-op when already that size)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)


def normalized_focal_loss(
    logits: torch.Tensor,
    gt: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 2.0,
    eps: float = EPS,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """RITM's NFL, mean over the batch.

    Arguments:
      logits: B x 1 x h x w (upsampled to gt's size if smaller).
      gt: B x S x S (or B x 1 x S x S) binary target.
      valid: optional mask of pixels that count (default: all).

    Per image, with p = sigmoid(logit), p_t = 1 - |p - y|, beta = (1 - p_t)^gamma,
    alpha_t = alpha (y = 1) or 1 - alpha (y = 0), Z = N / (sum beta + eps) detached:
    loss = sum(-alpha_t * Z * beta * log(min(p_t + eps, 1))) / N, N = number of valid pixels.
    """
    y = gt.reshape(gt.shape[0], 1, *gt.shape[-2:]).to(logits.dtype)
    x = upsample(logits, tuple(y.shape[-2:]))
    w = torch.ones_like(y) if valid is None else valid.reshape(y.shape).to(y.dtype)
    p = torch.sigmoid(x)
    pt = torch.where(w > 0, 1.0 - (p - y).abs(), torch.ones_like(p))
    beta = (1.0 - pt) ** gamma
    a = torch.where(y > 0.5, alpha, 1.0 - alpha) * w
    n = w.sum(dim=(1, 2, 3))
    z = (n / (beta.sum(dim=(1, 2, 3)) + eps)).detach()
    pix = -a * beta * torch.log(torch.clamp(pt + eps, max=1.0))
    per_image = z * pix.sum(dim=(1, 2, 3)) / n.clamp(min=1.0)
    return per_image.mean()


def point_loss(
    logits: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor, size: int
) -> torch.Tensor:
    """FocSAM's PTL: mean over all real clicks of (sigmoid(logit at the click) - z)^2.

    Arguments:
      logits: B x 1 x h x w low-res logits (upsampled to size x size first).
      coords: B x N x 2 integer click pixels (x, y) in the S x S frame.
      labels: B x N, 1 positive (z = 1), 0 negative (z = 0), -1 padding (excluded).
    """
    x = upsample(logits, size)[:, 0]  # B x S x S
    real = labels >= 0
    if not bool(real.any()):
        return x.sum() * 0.0
    b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(labels)
    xs = coords[..., 0].long().clamp(0, size - 1)
    ys = coords[..., 1].long().clamp(0, size - 1)
    v = torch.sigmoid(x[b[real], ys[real], xs[real]])
    return ((v - labels[real].to(v.dtype)) ** 2).mean()


def mask_iou(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean IoU of (upsampled logits > 0) vs gt over the batch (a metric, no gradient)."""
    with torch.no_grad():
        y = gt.reshape(gt.shape[0], -1).bool()
        p = (upsample(logits, tuple(gt.shape[-2:])) > 0).reshape(gt.shape[0], -1)
        inter = (p & y).sum(1).float()
        union = (p | y).sum(1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean()


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of B x C x H x W maps at B x N x 2 points (x, y) in [0, 1] of the map's
    extent -> B x C x N (detectron2's ``point_sample``, align_corners=False: 0 and 1 are the
    outer edges, so maps of any resolution over the same frame agree)."""
    grid = (2.0 * coords - 1.0).to(x.dtype)[:, :, None, :]
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)[..., 0]


def uncertain_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PointRend's training points (detectron2 ``get_uncertain_point_coords_with_randomness``):
    draw ``num_points * oversample_ratio`` uniform points, keep the
    ``importance_sample_ratio * num_points`` whose logit is closest to 0 and add uniform points
    up to ``num_points``.

    Arguments:
      logits: B x 1 x h x w mask logits (no gradient needed).
      generator: CPU generator for the uniform draws (for reproducible runs).

    Returns: B x num_points x 2 coordinates (x, y) in [0, 1].
    """
    b, dev = logits.shape[0], logits.device
    n_over = int(num_points * oversample_ratio)
    n_uncertain = int(importance_sample_ratio * num_points)
    coords = torch.rand(b, n_over, 2, generator=generator).to(dev)
    uncertainty = -point_sample(logits.detach().float(), coords)[:, 0].abs()
    idx = torch.topk(uncertainty, n_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    rest = torch.rand(b, num_points - n_uncertain, 2, generator=generator).to(dev)
    return torch.cat([picked, rest], dim=1)


def bce_dice_loss(
    point_logits: torch.Tensor, point_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ-SAM's mask losses on sampled points, each the mean over the B masks.

    Arguments:
      point_logits: B x N logits; point_labels: B x N targets in [0, 1].

    Returns (bce, dice): bce = mean over the points of the binary cross-entropy with logits;
    dice = 1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1), p = sigmoid(logit).
    """
    y = point_labels.to(point_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(point_logits, y, reduction="none").mean(1)
    p = point_logits.sigmoid()
    dice = 1.0 - (2.0 * (p * y).sum(1) + 1.0) / (p.sum(1) + y.sum(1) + 1.0)
    return bce.mean(), dice.mean()


def sampled_mask_loss(
    logits: torch.Tensor,
    gt: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bce, dice) of B x 1 x h x w low-res logits against the B x S x S mask, on
    ``num_points`` uncertainty-sampled points per mask (HQ-SAM / Mask2Former). The mask is
    sampled as a float map at the same points, so the two resolutions need not match."""
    y = gt.reshape(gt.shape[0], 1, *gt.shape[-2:]).to(logits.dtype)
    with torch.no_grad():
        coords = uncertain_points(
            logits, num_points, oversample_ratio, importance_sample_ratio, generator
        )
        labels = point_sample(y, coords)[:, 0]
    return bce_dice_loss(point_sample(logits, coords)[:, 0], labels)
