"""Stable-SAM's dynamic routing plugin (DRP): how much of the deformed features to use."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..native import PluginKernels, plugin_kernels
from .common import is_plain, is_plain_linear
from .deformable_sampling import cpu_inference


class DynamicRouting(nn.Module):
    """One decoder token -> routing weights (alpha_deformed, alpha_regular), softmax-normalised.

    Arguments:
        dim: token width C.
        hidden: MLP width (32 = C / 8 gives the paper's ~0.08 M plugin at C = 256).

    The last layer starts at zero, so an untrained router gives 0.5 / 0.5.
    """

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, 2)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """B x C -> B x 2 weights summing to 1 (index 0: deformed, 1: regular). For fp32 CPU
        inference one compiled call (steadysam.native) computes the same function."""
        kernels = self._kernels(token)
        if kernels is not None:
            return kernels.route_mlp(token, self.fc1, self.norm, self.fc2)
        return self.fc2(self.act(self.norm(self.fc1(token)))).softmax(dim=-1)

    def _kernels(self, token: torch.Tensor) -> PluginKernels | None:
        if not cpu_inference(token) or token.dtype != torch.float32:
            return None
        plain = is_plain_linear(self.fc1, token) and is_plain_linear(self.fc2, token)
        plain = plain and is_plain(self.norm, nn.LayerNorm) and is_plain(self.act, nn.GELU)
        if not plain or self.act.approximate != "none" or self.norm.weight is None:
            return None
        if self.fc1.bias is None or self.fc2.bias is None or self.norm.bias is None:
            return None
        return plugin_kernels()
