"""Stable-SAM's plugin at one token->image attention of the mask decoder: DSP + DRP.

The two-way transformer asks its ``plugin`` (when set) for the keys and values of one
token->image cross attention (``TwoWayAttentionBlock.plugin``, ``TwoWayTransformer.final_plugin``).
This module answers with the routed mix of deformed and regular image features

    x_mix = lerp(x_p, x*_{p+Δp}, alpha_d) = alpha_d x*_{p+Δp} + (1 - alpha_d) x_p

as keys (+ positional encoding) and values. Only that attention sees x_mix: the image->token
attention and everything after it keep the regular features x_p (Stable-SAM, final figure).
Written as x_p plus a correction, an untrained plugin (x* = x_p, Δp = 0) returns x_p bit for bit.
For fp32 CPU inference the sampling, the mix and the + PE run as one compiled pass per token
(steadysam.native.sample_mix: the same function, ~2.5x faster than the ops it replaces).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..fastpath import fast_paths_enabled
from ..native import PluginKernels, plugin_kernels
from .config import PluginConfig
from .deformable_sampling import DeformableSampling, cpu_inference
from .dynamic_routing import DynamicRouting

# State-dict names of the plugin modules; the plugin lives inside the mask decoder.
PLUGIN_MODULE_NAMES = ("plugin", "final_plugin")


def is_plugin_key(key: str) -> bool:
    """Whether a state-dict key belongs to a Stable-SAM plugin."""
    return any(p in PLUGIN_MODULE_NAMES for p in key.split("."))


def site_module_name(site: str) -> str:
    """Where a site's plugin sits inside ``mask_decoder.transformer``."""
    if site == "final_t2i":
        return "final_plugin"
    return f"layers.{int(site[len('layer') : -len('_t2i')])}.plugin"


class StablePlugin(nn.Module):
    """DSP + DRP for one token->image attention.

    Arguments:
        dim: decoder width C.
        config: the plugin's :class:`PluginConfig`.
        num_output_tokens: output tokens before the prompt tokens (IoU + mask tokens), for the
            ``mean`` routing token.

    ``last_routing`` keeps the most recent routing weights (B x 2, detached) so callers can show
    which mode the router chose.
    """

    def __init__(self, dim: int, config: PluginConfig, num_output_tokens: int) -> None:
        super().__init__()
        self.dsp = DeformableSampling(
            dim, config.kernel_size, config.sample_source, config.offset_range
        )
        self.drp = DynamicRouting(dim, config.drp_hidden)
        self.pe_mode = config.pe_mode
        self.drp_token = config.drp_token
        self.routing = config.routing
        self.hard_threshold = config.hard_threshold
        self.num_output_tokens = num_output_tokens
        self.last_routing: torch.Tensor | None = None

    def route(self, queries: torch.Tensor) -> torch.Tensor:
        """Tokens B x N x C -> weight of the deformed features, B x 1 x 1."""
        if self.drp_token == "iou":
            token = queries[:, 0]
        elif self.drp_token == "mean":
            token = queries[:, : self.num_output_tokens].mean(dim=1)
        else:  # mask0: the single-mask output token
            token = queries[:, 1]
        alpha = self.drp(token)
        self.last_routing = alpha.detach()
        a = alpha[:, :1]
        if self.routing == "hard" and not self.training:
            a = (a > self.hard_threshold).to(a.dtype)
        return a[:, :, None]

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        key_pe: torch.Tensor,
        size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after self-attention (B x N x C), image x_p (B x hw x C), its PE (1|B x hw x C)
        on an h x w grid -> (attention keys, attention values), each B x hw x C."""
        a = self.route(queries)
        # Weight exactly 0 for every prompt (hard routing's regular mode, or a saturated soft
        # router): x_mix = x_p, so skip the offset network and the sampling. Not while
        # recording autograd, where every plugin parameter must take part (DDP).
        skip = (self.routing == "hard" and not self.training) or not torch.is_grad_enabled()
        skip = skip and fast_paths_enabled()  # the reference math always runs both branches
        if skip and not bool(a.any()):
            return keys + key_pe, keys
        deformed = self.pe_mode == "deformed"
        kernels = self._mix_kernels(keys, key_pe)
        if kernels is not None:  # sampling, routing mix and + PE in one pass (same function)
            xs, off = self.dsp.offsets(keys, size)
            src = xs if self.dsp.sample_source == "projected" else keys
            values, k = kernels.sample_mix(src, keys, key_pe, off, a, size, deformed)
            return k, values
        x_def, pe_def, _ = self.dsp(keys, size, key_pe if deformed else None)
        values = self._mix(a, x_def, keys)
        if pe_def is None:
            return values + key_pe, values
        return values + self._mix(a, pe_def, key_pe.expand_as(pe_def)), values

    def _mix_kernels(self, keys: torch.Tensor, key_pe: torch.Tensor) -> PluginKernels | None:
        """The compiled kernels for fp32 CPU inference (None elsewhere: the ops below)."""
        if not cpu_inference(keys) or keys.dtype != torch.float32:
            return None
        return plugin_kernels() if key_pe.dtype == torch.float32 else None

    def _mix(self, a: torch.Tensor, deformed: torch.Tensor, regular: torch.Tensor) -> torch.Tensor:
        if self.routing == "hard" and not self.training:  # a is 0 or 1: pick, exactly
            if bool(a.all()):
                return deformed
            return torch.where(a.bool(), deformed, regular)
        # regular + a * (deformed - regular) in one pass; exact where the two are equal. A
        # single prompt's weight as a Python number: the scalar kernel is ~30 % faster.
        if a.numel() == 1 and not a.requires_grad and fast_paths_enabled():
            w = float(a)
            if w == 1.0:  # lerp at weight 1 is ``deformed`` exactly: skip the pass
                return deformed
            # Without autograd, into ``deformed`` (fresh from the sampling, still in cache).
            out = None if torch.is_grad_enabled() else deformed
            return torch.lerp(regular, deformed, w, out=out)
        return torch.lerp(regular, deformed, a)
