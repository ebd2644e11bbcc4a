"""The modules that are traced into ONNX graphs: tensors in, tensors out, fixed control flow.

Each wraps the model's own submodules (same parameters, same math as the reference path of
``steadysam.use_fast_paths(False)``) and moves what PyTorch decides in Python per call into
graph inputs or dense tensor ops:

``EncoderGraph``      the image encoder, 1 x 3 x S x S preprocessed image -> embedding.
``SamDecoderGraph``   prompt encoder + mask decoder (+ a Stable-SAM plugin inside it) with a
                      dynamic number of points, box corners as labelled points and the mask prompt
                      switched by ``has_mask_input`` (segment-anything's ONNX interface); every
                      mask token's output at once, so one graph serves single- and multi-mask.
``HQFusionGraph``     HQ-SAM's once-per-image global-local fusion, (embedding, early feature)
                      -> HQ feature.
``HQDecoderGraph``    HQ-SAM's decoder: the SAM decoder graph's inputs plus the HQ feature and an
                      ``hq_token_only`` switch; two outputs, single-mask (SAM's token 0) and
                      multimask (SAM's best token by predicted IoU), each with the HQ mask.
``DenseRefinerGraph`` FocSAM's focus refiner with every window computed and the update kept only
                      in the windows that touch the focus grid (the refiner's own result
                      exactly: windows are independent); the focus box itself is numpy in
                      ``steadysam.onnx.frame`` (data-dependent bounding box and rounding).

A decoder variant (e.g. HQ-SAM's) adds its class to ``DECODER_GRAPHS``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.focus_refiner import FocusRefiner, RefineBlock
from ..models.hq_mask_decoder import HQMaskDecoder, _dot
from ..models.mask_decoder import MaskDecoder
from ..models.sam import Sam


class EncoderGraph(nn.Module):
    """The image encoder as a graph: image 1 x 3 x S x S -> embedding 1 x C x S/16 x S/16
    (HQ-SAM: and the early feature, 1 x S/16 x S/16 x D, the tokens after the first global
    block)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.early_features = model.is_hq

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image (torch.Tensor): 1 x 3 x S x S normalised, zero-padded model input

        Returns:
          torch.Tensor: the image embedding, 1 x C x h x w
          torch.Tensor: HQ-SAM only: the early feature, 1 x h x w x D
        """
        # Contiguous outputs: channels-last memory would only be a trace-time layout.
        if self.early_features:
            emb, early = self.image_encoder(image, early_features=True)
            return emb.contiguous(), early.contiguous()
        return self.image_encoder(image).contiguous()


class HQFusionGraph(nn.Module):
    """HQ-SAM's global-local fusion (``HQMaskDecoder.hq_features``): it depends on the image
    only, so it is its own graph, run once per image as ``steadysam.Predictor`` does."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        if not isinstance(model.mask_decoder, HQMaskDecoder):
            raise ValueError("the model is not HQ-SAM: it has no global-local fusion to export")
        self.mask_decoder = model.mask_decoder

    def forward(self, image_embeddings: torch.Tensor, early_features: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w, the encoder's embedding
          early_features (torch.Tensor): 1 x h x w x D, the encoder's early feature

        Returns:
          torch.Tensor: the HQ feature, 1 x C/8 x 4h x 4w
        """
        return self.mask_decoder.hq_features(image_embeddings, early_features).contiguous()


class SamDecoderGraph(nn.Module):
    """Prompt encoder + SAM's mask decoder on labelled points (segment-anything's ONNX inputs).

    Point labels: 1 foreground, 0 background, -1 padding ("not a point"), 2 / 3 a box's
    top-left / bottom-right corner. The caller lays the points out as ``Sam.decode`` does: the
    clicks, then either one padding point at (0, 0) (no box) or the box's two corners."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """1 x N x 2 input-frame pixels, 1 x N labels -> 1 x N x C sparse embeddings (the
        arithmetic of ``PromptEncoder._embed_points`` / ``_embed_boxes``: a label adds its own
        embedding and exactly 0.0 from the others)."""
        pe = self.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, pe.not_a_point_embed.weight, emb)
        for i, table in enumerate(pe.point_embeddings):
            emb = emb + torch.where(lab == i, table.weight, torch.zeros_like(table.weight))
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The dense prompt: the downscaled mask where ``has_mask_input`` is 1, the learned
        no-mask embedding where it is 0 (exactly either, as x + 0 * y)."""
        pe = self.prompt_encoder
        h, w = pe.image_embedding_size
        dense = pe.mask_downscaling(mask_input)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        has = has_mask_input.reshape(1, 1, 1, 1)
        return has * dense + (1 - has) * no_mask

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w (encoder or refiner output)
          point_coords (torch.Tensor): 1 x N x 2 (x, y) in input-frame pixels
          point_labels (torch.Tensor): 1 x N float labels (see the class docstring)
          mask_input (torch.Tensor): 1 x 1 x 4h x 4w low-res logits of a previous prediction
          has_mask_input (torch.Tensor): shape 1; 1.0 uses mask_input, 0.0 ignores it

        Returns:
          torch.Tensor: low-res logits of every mask token, 1 x (K + 1) x 4h x 4w (token 0 the
            single-mask output, 1..K the multimask outputs)
          torch.Tensor: their predicted IoUs, 1 x (K + 1)
          torch.Tensor: the mask tokens' transformer outputs, 1 x (K + 1) x C (token 0 is
            FocSAM's click-fused query for the refiner)
        """
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        masks, iou, tokens = self.mask_decoder.predict_masks(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            slice(None),
        )
        return masks.contiguous(), iou, tokens


class HQDecoderGraph(SamDecoderGraph):
    """Prompt encoder + HQ-SAM's mask decoder (``HQMaskDecoder.forward``) with the SAM decoder
    graph's point / mask inputs plus the image's HQ feature and ``hq_token_only``.

    HQ-SAM answers one mask per prompt; this graph returns both of its answers at once, laid out
    as the SAM graph's outputs (index 0 single-mask, 1.. multimask): index 0 is SAM's mask token 0
    (``multimask_output=False``), index 1 SAM's mask token among 1..K with the highest predicted
    IoU (``multimask_output=True``, first on ties, as ``torch.max``), each plus the HQ mask
    unless ``hq_token_only`` is 1 (then the HQ mask alone: hq + 0 * sam, exactly either). All
    output tokens go through the transformer's last attention (PyTorch skips the unused ones;
    each token attends on its own, so that changes nothing)."""

    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        if not isinstance(self.mask_decoder, HQMaskDecoder):
            raise ValueError("HQDecoderGraph needs an HQMaskDecoder")

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        hq_features: torch.Tensor,
        hq_token_only: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Arguments:
          image_embeddings, point_coords, point_labels, mask_input, has_mask_input: as in
            ``SamDecoderGraph.forward``
          hq_features (torch.Tensor): 1 x C/8 x 4h x 4w, the image's fusion (``HQFusionGraph``)
          hq_token_only (torch.Tensor): shape 1; 1.0 the HQ mask alone, 0.0 SAM's plus HQ's

        Returns:
          torch.Tensor: low-res logits 1 x 2 x 4h x 4w: [single-mask answer, multimask answer]
          torch.Tensor: SAM's predicted IoU of the token each used, 1 x 2
        """
        d = self.mask_decoder
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight, d.hf_token.weight])
        tokens = torch.cat((tokens.unsqueeze(0), sparse), 1)
        src = image_embeddings + dense
        b, c, h, w = src.shape
        n = d.num_mask_tokens
        hs, src = d.transformer(
            src, self.prompt_encoder.get_dense_pe(), tokens, outputs=list(range(n + 2))
        )
        iou_all = d.iou_prediction_head(hs[:, 0])  # 1 x n
        sam_hyper = torch.stack(
            [d.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(n)], dim=1
        )  # 1 x n x C/8
        hq_hyper = d.hf_mlp(hs[:, n + 1])[:, None]  # 1 x 1 x C/8
        upscaled = d.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hq_mask = _dot(hq_hyper, d.embedding_maskfeature(upscaled) + hq_features)  # 1 x 1
        best_iou, best = torch.max(iou_all[:, 1:], dim=1)
        cw = sam_hyper.shape[-1]
        best_hyper = torch.gather(sam_hyper[:, 1:], 1, best.reshape(b, 1, 1).expand(b, 1, cw))
        sam_masks = _dot(torch.cat([sam_hyper[:, :1], best_hyper], 1), upscaled)  # 1 x 2
        keep_sam = 1 - hq_token_only.reshape(1, 1, 1, 1)
        masks = keep_sam * sam_masks + hq_mask
        iou = torch.cat([iou_all[:, :1], best_iou[:, None]], 1)
        return masks.contiguous(), iou


class DenseRefinerGraph(nn.Module):
    """FocSAM's refiner in a fixed-shape dense form: every window of every block is computed;
    a window's new features and token are kept iff its cells touch the focus grid (what
    ``RefineBlock`` computes for the selected windows only). Costs the full map every time
    (the PyTorch refiner skips unfocused windows), in exchange for a graph without
    data-dependent shapes."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        if not isinstance(model.refiner, FocusRefiner):
            raise ValueError("the model has no FocSAM focus refiner to export")
        self.refiner = model.refiner
        h, w = model.prompt_encoder.image_embedding_size
        # Window layouts and their inverses depend on the grid only: constants of the graph.
        for i, block in enumerate(self.refiner.blocks):
            s = block.window_size
            hp, wp = -(-h // s) * s, -(-w // s) * s
            pos = block.window_index(hp, wp, torch.device("cpu"))
            self.register_buffer(f"pos{i}", pos, persistent=False)
            self.register_buffer(f"inv{i}", pos.reshape(-1).argsort(), persistent=False)

    def forward(
        self, image_embeddings: torch.Tensor, focus_grid: torch.Tensor, query_token: torch.Tensor
    ) -> torch.Tensor:
        """
        Arguments:
          image_embeddings (torch.Tensor): 1 x C x h x w, the encoder's embedding
          focus_grid (torch.Tensor): 1 x 1 x h x w, 1.0 in the cells the focus box touches
            (the box max-pooled to the grid; ``steadysam.onnx.frame.focus_grid``)
          query_token (torch.Tensor): 1 x 1 x C, mask token 0 of the coarse decoder pass

        Returns:
          torch.Tensor: the refined embedding, 1 x C x h x w
        """
        r = self.refiner
        b, c, h, w = image_embeddings.shape
        focus = focus_grid.reshape(b, h, w)
        x = F.linear(
            image_embeddings.permute(0, 2, 3, 1), r.embed_proj.weight.view(c, c), r.embed_proj.bias
        )
        t = r.token_proj(query_token)
        for i, block in enumerate(r.blocks):
            x, t = self._block(
                block, x, t, focus, getattr(self, f"pos{i}"), getattr(self, f"inv{i}")
            )
        return x.permute(0, 3, 1, 2).contiguous()

    @staticmethod
    def _block(
        block: RefineBlock,
        x: torch.Tensor,
        t: torch.Tensor,
        focus: torch.Tensor,
        pos: torch.Tensor,
        inv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``RefineBlock.forward`` on all windows, keeping the update where selected."""
        b, h, w, c = x.shape
        s = block.window_size
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            focus = F.pad(focus, (0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        nwin, n = pos.shape
        selected = focus.reshape(b, hp * wp)[:, pos].amax(-1).ne(0)  # b x nW
        keep = selected.reshape(b * nwin, 1, 1)
        f = x.reshape(b, hp * wp, c)[:, pos].reshape(b * nwin, n, c)
        tokens = t.expand(b, nwin, c).reshape(b * nwin, 1, c)
        tw = block.img2cls(tokens, f)
        f = torch.where(keep, block.cls2img(f, tw, (s, s)), f)
        tokens = torch.where(keep, tw, tokens)
        x = f.reshape(b, nwin * n, c)[:, inv].reshape(b, hp, wp, c)
        if ph or pw:
            x = x[:, :h, :w]
        t_mean = tokens.reshape(b, nwin, c).mean(1, keepdim=True)
        if block.cls_scale_proj is None:
            return x, t_mean
        rho = selected.to(t.dtype).mean(1).clamp(min=0.01).reshape(b, 1, 1)
        scale = block.cls_scale_proj(-rho.log()).exp()
        return x, scale * (t_mean - t) + t


# Mask decoder class -> its graph module. A variant decoder (HQ-SAM's, with its extra token and
# features) registers its own graph here, with the same inputs and extra ones as it needs.
DECODER_GRAPHS: dict[type[nn.Module], type[nn.Module]] = {
    MaskDecoder: SamDecoderGraph,
    HQMaskDecoder: HQDecoderGraph,
}


def decoder_graph(model: Sam) -> nn.Module:
    """The graph module for ``model``'s mask decoder (exact class match: a subclass may
    compute something else and must register its own)."""
    cls = DECODER_GRAPHS.get(type(model.mask_decoder))
    if cls is None:
        known = ", ".join(k.__name__ for k in DECODER_GRAPHS)
        raise ValueError(
            f"no ONNX graph for mask decoder {type(model.mask_decoder).__name__} "
            f"(known: {known}); register one in steadysam.onnx.graphs.DECODER_GRAPHS"
        )
    return cls(model)
