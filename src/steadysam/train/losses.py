"""Training losses (spec §7.5): normalised focal loss (NFL, RITM) and FocSAM's point loss (PTL).

Both are computed at the S x S model input: low-res decoder logits are upsampled bilinearly
(align_corners=False) first.
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
