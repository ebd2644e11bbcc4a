"""Stable-SAM's dynamic routing plugin (DRP): how much of the deformed features to use."""

from __future__ import annotations

import torch
import torch.nn as nn


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
        """B x C -> B x 2 weights summing to 1 (index 0: deformed, 1: regular)."""
        return self.fc2(self.act(self.norm(self.fc1(token)))).softmax(dim=-1)
