"""FocSAM focus refiner (docs/focsam.md §4) and the focus box that tells it where to look
(docs/focsam.md §1.3).

Parameter names equal the FocSAM checkpoint's ``refine_head.*`` keys without the prefix.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled
from .common import is_plain
from .refiner_parts import CrossAttentionBlock, MSAModule

Ratio = float | torch.Tensor


def focus_box(
    coarse_logits: torch.Tensor,
    input_size: int = 1024,
    expand_ratio: Ratio | tuple[Ratio, Ratio] = 1.4,
) -> torch.Tensor:
    """Expanded bounding box of the coarse prediction, in model-input pixels.

    Arguments:
      coarse_logits (torch.Tensor): B x 1 x h x w low-res mask logits (e.g. 256 x 256).
      input_size (int): side of the square model input the box lives in.
      expand_ratio: one ratio, or (h_ratio, w_ratio); each may be a float or a tensor of shape
        () or (B,) for per-image ratios (training draws them from U(1.0, 1.4)).

    Returns:
      (torch.Tensor): B x 4 int64 boxes (left, top, right, bottom), right / bottom exclusive.

    Logits are upsampled bilinearly to input_size^2 and thresholded at 0; an empty prediction
    gives the whole image. The box is scaled about its centre and rounded half-to-even in fp32,
    exactly like the official ``expand_bbox``.
    """
    b = coarse_logits.shape[0]
    size = (input_size, input_size)
    logits = F.interpolate(coarse_logits.float(), size, mode="bilinear", align_corners=False)
    fg = logits.reshape(b, input_size, input_size) > 0
    rows, cols = fg.any(2), fg.any(1)  # B x S: row / column contains foreground
    ar = torch.arange(input_size, device=fg.device)
    n = input_size
    top = torch.where(rows, ar, n).amin(1)
    bottom = torch.where(rows, ar, -1).amax(1) + 1
    left = torch.where(cols, ar, n).amin(1)
    right = torch.where(cols, ar, -1).amax(1) + 1
    empty = ~rows.any(1)
    top, left = top.masked_fill(empty, 0), left.masked_fill(empty, 0)
    bottom, right = bottom.masked_fill(empty, n), right.masked_fill(empty, n)

    h_ratio, w_ratio = expand_ratio if isinstance(expand_ratio, tuple) else (expand_ratio,) * 2
    top, bottom = _expand(top, bottom, h_ratio, n)
    left, right = _expand(left, right, w_ratio, n)
    return torch.stack([left, top, right, bottom], dim=1)


def _expand(lo: torch.Tensor, hi: torch.Tensor, ratio: Ratio, size: int):
    # fp32 throughout, as in the official code (a python float ratio is applied in fp32 too).
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=lo.device)
    c = (lo + hi) / 2.0
    new_lo = torch.round(c - ratio * (c - lo)).clamp(min=0)
    new_hi = torch.round(c - ratio * (c - hi)).clamp(max=size)
    return new_lo.long(), new_hi.long()


def box_mask(boxes: torch.Tensor, size: int, grid_size: int | None = None) -> torch.Tensor:
    """Rasterise B x 4 (left, top, right, bottom) boxes into a B x 1 x size x size float mask.

    With ``grid_size`` the result is instead B x 1 x grid_size x grid_size and equals
    ``F.adaptive_max_pool2d(box_mask(boxes, size), grid_size)`` (the cheap path for the refiner,
    which only needs that pooled grid).
    """
    n = grid_size or size
    ar = torch.arange(n, device=boxes.device)
    # Adaptive pooling bin i spans [floor(i * size / n), ceil((i + 1) * size / n)).
    start, end = (ar * size) // n, ((ar + 1) * size + n - 1) // n
    left, top, right, bottom = (boxes[:, i, None] for i in range(4))
    rows = (start < bottom) & (end > top)
    cols = (start < right) & (end > left)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1).float()


def focus_box_mask(
    coarse_logits: torch.Tensor,
    input_size: int = 1024,
    expand_ratio: Ratio | tuple[Ratio, Ratio] = 1.4,
    grid_size: int | None = None,
) -> torch.Tensor:
    """B x 1 x h x w coarse logits -> B x 1 x input_size x input_size float box mask (see
    ``focus_box``); with ``grid_size``, directly its max-pooled B x 1 x grid_size^2 version."""
    return box_mask(focus_box(coarse_logits, input_size, expand_ratio), input_size, grid_size)


class RefineBlock(nn.Module):
    """One Dwin block: only windows that touch the focus region are updated.

    Windows are S x S tiles of the map (zero-padded at the bottom / right if needed); in a shift
    block the tiling is displaced by S // 2 with cyclic wrap-around and, unlike Swin, no attention
    mask, so a wrapped window mixes opposite image borders.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        shift: bool,
        cls_scale: bool,
    ) -> None:
        """
        Arguments:
          embed_dim (int): the channel dimension C of the map and the token
          num_heads (int): the number of attention heads of img2cls and cls2img
          mlp_ratio (float): the ratio of img2cls's MLP hidden width to embed_dim
          window_size (int): the side S of the windows, in embedding-grid cells
          shift (bool): if True, the tiling is shifted by S // 2 with cyclic wrap-around (the
            odd blocks)
          cls_scale (bool): if True, the token update is rescaled by the inverse selected
            fraction through a learned ``cls_scale_proj`` (every block but the last)
        """
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.img2cls = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio)
        self.cls2img = MSAModule(embed_dim, num_heads)
        if cls_scale:
            self.cls_scale_proj = nn.Linear(1, 1)
            nn.init.ones_(self.cls_scale_proj.weight)
            nn.init.zeros_(self.cls_scale_proj.bias)
        else:
            self.cls_scale_proj = None

    def window_index(self, hp: int, wp: int, device: torch.device) -> torch.Tensor:
        """nW x S*S flat positions in the padded hp x wp map of each window's tokens (row-major
        windows, row-major tokens); a shift block's windows start S // 2 further, wrapping."""
        s = self.window_size
        shift = s // 2 if self.shift else 0
        ys = (torch.arange(hp, device=device) + shift) % hp
        xs = (torch.arange(wp, device=device) + shift) % wp
        pos = (ys[:, None] * wp + xs[None, :]).view(hp // s, s, wp // s, s)
        return pos.transpose(1, 2).reshape(-1, s * s)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, focus: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          x (torch.Tensor): the map, B x H x W x C (channels last)
          t (torch.Tensor): the token, B x 1 x C
          focus (torch.Tensor): the focus grid (the max-pooled box mask), B x H x W; a window
            is updated iff it holds a nonzero cell

        Returns:
          torch.Tensor: the updated map, B x H x W x C
          torch.Tensor: the aggregated token, B x 1 x C
        """
        b, h, w, c = x.shape
        s = self.window_size
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            focus = F.pad(focus, (0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        pos = self.window_index(hp, wp, x.device)  # nW x N
        nwin = pos.shape[0]
        selected = focus.reshape(b, hp * wp)[:, pos].amax(-1).ne(0).reshape(-1)  # B*nW
        sel = selected.nonzero().squeeze(1)

        tokens = t.expand(b, nwin, c).reshape(b * nwin, c)
        if sel.numel() > 0:
            rows = (sel // nwin * (hp * wp))[:, None] + pos[sel % nwin]  # nSel x N
            flat = x.reshape(b * hp * wp, c)
            f = flat.index_select(0, rows.reshape(-1)).view(sel.numel(), s * s, c)
            tw = self.img2cls(tokens.index_select(0, sel).unsqueeze(1), f)
            f = self.cls2img(f, tw, (s, s))
            flat = flat.index_copy(0, rows.reshape(-1), f.reshape(-1, c))
            x = flat.view(b, hp, wp, c)
            tokens = tokens.index_copy(0, sel, tw.squeeze(1))
        if ph or pw:
            x = x[:, :h, :w]

        t_mean = tokens.view(b, nwin, c).mean(1, keepdim=True)
        if self.cls_scale_proj is None:
            return x, t_mean
        # Rescale the update by the inverse selected fraction: with the init (w=1, b=0) the new
        # token is exactly the mean over the selected windows.
        rho = selected.view(b, nwin).to(t.dtype).mean(1).clamp(min=0.01).view(b, 1, 1)
        scale = self.cls_scale_proj(-rho.log()).exp()
        return x, scale * (t_mean - t) + t


class FocusRefiner(nn.Module):
    """Refines a SAM image embedding around the focused object (FocSAM's ``refine_head``).

    Even blocks are plain, odd blocks shifted; every block but the last rescales its token update
    by the focused fraction (``cls_scale_proj``). The whole map goes through ``embed_proj``; cells
    outside every selected window leave the refiner as embed_proj(F).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        window_size: int = 16,
        expand_ratio: float | tuple[float, float] = 1.4,
    ) -> None:
        """
        Arguments:
          embed_dim (int): the channel dimension C, the prompt / image embedding width
          depth (int): the number of refine blocks (even ones plain, odd ones shifted)
          num_heads (int): the number of attention heads in every block (head width
            embed_dim // num_heads)
          mlp_ratio (float): the ratio of the token MLP's hidden width to embed_dim
          window_size (int): the side of the windows, in embedding-grid cells (16 in FocSAM)
          expand_ratio (float or tuple(float, float)): the default focus-box expansion, one
            ratio or (h_ratio, w_ratio), used by ``focus_mask`` and ``Sam.refine`` (1.4 at
            test time; not used by ``forward``, which receives the mask)
        """
        super().__init__()
        self.expand_ratio = expand_ratio
        self.embed_proj = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)
        self.token_proj = nn.Linear(embed_dim, embed_dim)
        self.blocks = nn.ModuleList(
            RefineBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size,
                shift=i % 2 == 1,
                cls_scale=i < depth - 1,
            )
            for i in range(depth)
        )

    def focus_mask(self, coarse_logits: torch.Tensor, input_size: int = 1024) -> torch.Tensor:
        """
        Arguments:
          coarse_logits (torch.Tensor): B x 1 x h x w low-res logits of the coarse pass
          input_size (int): the side S of the square model input the box lives in

        Returns:
          torch.Tensor: B x 1 x S x S float box mask, expanded by ``expand_ratio``
        """
        return focus_box_mask(coarse_logits, input_size, self.expand_ratio)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        focus_mask: torch.Tensor,
        query_token: torch.Tensor,
    ) -> torch.Tensor:
        """
        Arguments:
          image_embeddings (torch.Tensor): B x C x H x W SAM image embedding.
          focus_mask (torch.Tensor): B x 1 x h x w focus mask (e.g. the 1024 x 1024 box mask); a
            grid cell is in focus if the max over its adaptive max-pool bin is nonzero.
          query_token (torch.Tensor): B x 1 x C or B x C decoder mask-token-0 output (the
            click-fused query of the coarse pass, docs/focsam.md §3).

        Returns:
          (torch.Tensor): B x C x H x W refined embedding (channels-last memory).
        """
        b, c, h, w = image_embeddings.shape
        if query_token.dim() == 2:
            query_token = query_token.unsqueeze(1)
        if query_token.shape != (b, 1, c):
            raise ValueError(f"query_token must be B x 1 x C, got {tuple(query_token.shape)}")
        focus = F.adaptive_max_pool2d(focus_mask.float(), (h, w)).reshape(b, h, w)
        if fast_paths_enabled() and is_plain(self.embed_proj, nn.Conv2d):
            # 1x1 conv as a linear layer on a channels-last map (same weights).
            x = F.linear(
                image_embeddings.permute(0, 2, 3, 1),
                self.embed_proj.weight.view(c, c),
                self.embed_proj.bias,
            )
        else:
            x = self.embed_proj(image_embeddings).permute(0, 2, 3, 1)
        t = self.token_proj(query_token)
        for block in self.blocks:
            x, t = block(x, t, focus)
        return x.permute(0, 3, 1, 2)  # channels-last memory, as the decoder reads it
