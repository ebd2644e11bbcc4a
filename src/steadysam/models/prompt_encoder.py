"""SAM's prompt encoder: points, boxes and a low-res mask to sparse and dense embeddings."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .common import LayerNorm2d


class PromptEncoder(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        """
        Encodes prompts for SAM's mask decoder: points and box corners become sparse tokens
        (random Fourier features of the position plus a learned embedding per kind), a low-res
        mask becomes a dense map on the image embedding grid.

        Arguments:
          embed_dim (int): the prompts' embedding dimension (the mask decoder's width)
          image_embedding_size (tuple(int, int)): the spatial size (h, w) of the image
            embedding; dense embeddings have this size and mask inputs are 4h x 4w
          input_image_size (tuple(int, int)): the size (H, W), in pixels, of the padded image
            input to the image encoder: the frame point and box coordinates are given in
          mask_in_chans (int): the number of hidden channels used for encoding input masks
            (mask_in_chans // 4 after the first convolution, mask_in_chans after the second)
          activation (type[nn.Module]): the activation used when encoding input masks
        """
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # neg point, pos point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe: torch.Tensor | None = None
        self._dense_pe_key: tuple | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """The positional encoding of the image embedding grid, the same encoding point
        prompts get, evaluated at the cell centres.

        Returns:
          torch.Tensor: 1 x embed_dim x h x w, (h, w) = image_embedding_size

        Cached (a few ms of sin/cos per click otherwise): the key includes the Gaussian
        matrix's version counter, which any in-place update such as load_state_dict bumps."""
        if self.training or torch.is_grad_enabled():
            return self.pe_layer(self.image_embedding_size).unsqueeze(0)
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (g.device, g.dtype, g._version, id(g))
        if self._dense_pe_key != key:
            self._dense_pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            self._dense_pe_key = key
        return self._dense_pe

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # shift to pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, self.not_a_point_embed.weight + 0.0 * emb, emb)
        emb = emb + torch.where(lab == 0, self.point_embeddings[0].weight, 0.0)
        emb = emb + torch.where(lab == 1, self.point_embeddings[1].weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes + 0.5
        coords = boxes.reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        emb[:, 0, :] += self.point_embeddings[2].weight
        emb[:, 1, :] += self.point_embeddings[3].weight
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        batch_size: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Embeds the prompts of B decoder calls.

        Arguments:
          points (tuple(torch.Tensor, torch.Tensor) or None): coordinates B x N x 2 as (x, y)
            pixels of the input frame (input_image_size), and labels B x N: 1 positive,
            0 negative, -1 padding ("not a point"). Without boxes, one padding point is
            appended (as in segment-anything).
          boxes (torch.Tensor or None): B x 4 boxes (x0, y0, x1, y1) in input-frame pixels
          masks (torch.Tensor or None): B x 1 x 4h x 4w low-res mask logits (e.g. the previous
            prediction); None uses the learned no-mask embedding
          batch_size (int or None): B; by default taken from the first prompt given, or 1

        Returns:
          torch.Tensor: sparse embeddings B x M x embed_dim, M = N (+ 1 padding point when
            there is no box) + 2 when a box is given (its two corners)
          torch.Tensor: dense embeddings B x embed_dim x h x w
        """
        if batch_size is None:
            given = [t for t in (points[0] if points else None, boxes, masks) if t is not None]
            batch_size = given[0].shape[0] if given else 1
        device = self.no_mask_embed.weight.device
        sparse = torch.empty((batch_size, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], 1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch_size, -1, self.image_embedding_size[0], self.image_embedding_size[1]
            )
        return sparse, dense


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        """
        Arguments:
          num_pos_feats (int): the number of random spatial frequencies; the encoding has
            2 * num_pos_feats channels (sin and cos of each)
          scale (float or None): the standard deviation of the Gaussian frequency matrix
            (buffer positional_encoding_gaussian_matrix, 2 x num_pos_feats); None or <= 0
            means 1.0
        """
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """
        Arguments:
          size (tuple(int, int)): the grid size (h, w)

        Returns:
          torch.Tensor: 2 * num_pos_feats x h x w, the encoding of the cell centres
            ((j + 0.5) / w, (i + 0.5) / h)
        """
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """
        Arguments:
          coords_input (torch.Tensor): B x N x 2 coordinates (x, y) in pixels of the frame
          image_size (tuple(int, int)): the frame's size (H, W); x is divided by W, y by H

        Returns:
          torch.Tensor: B x N x 2 * num_pos_feats
        """
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))
