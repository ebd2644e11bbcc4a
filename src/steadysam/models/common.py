import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fastpath import fast_paths_enabled


def _onednn_linear() -> object | None:
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_ONEDNN_LINEAR = _onednn_linear()


_ACTIVATIONS = {"gelu": F.gelu, "tanh": torch.tanh, "relu": F.relu}


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear`` followed by an activation (``gelu``: the exact erf GELU, ``tanh``,
    ``relu``) or by ``+ residual`` (not both).

    For fp32 CPU inference this is one oneDNN matmul with the bias, activation or residual
    applied in its epilogue (the op PyTorch's own compiler emits for this pattern): it skips
    the bias-initialised output and the separate pass over it that ``addmm`` + activation
    make, ~25 % of ViT-B's MLP, and oneDNN is also faster than MKL on the refiner's tall
    DCN matmul. Elsewhere (autograd, other devices or dtypes) it is the plain composition."""
    assert activation is None or residual is None
    if (
        _ONEDNN_LINEAR is not None
        and fast_paths_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not (
            torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, weight, bias, residual))
        )
    ):
        # oneDNN takes a slow reference path (seconds) on strided operands: pass dense ones.
        x2, weight = x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
        if residual is not None:
            residual = residual.contiguous()
            out = _ONEDNN_LINEAR(x2, residual.reshape(-1, weight.shape[0]), weight, bias, "add")
        else:
            out = _ONEDNN_LINEAR(x2, weight, bias, activation or "none", [], "none")
        return out.view(*x.shape[:-1], weight.shape[0])
    out = F.linear(x, weight, bias)
    if activation is not None:
        return _ACTIVATIONS[activation](out)
    return out if residual is None else residual + out


def fusable_activation(module: nn.Module) -> str | None:
    """The ``fused_linear`` name of an activation module, or None if it cannot be fused."""
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else None
    return {nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(module))


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        """
        Two-layer MLP, Linear -> activation -> Linear, as in segment-anything (the ViT blocks'
        MLP and the two-way transformer's MLP).

        Arguments:
          embedding_dim (int): the channel dimension of the input and the output
          mlp_dim (int): the hidden channel dimension
          act (type[nn.Module]): the activation class between the two layers (GELU in the ViT,
            ReLU in the mask decoder's two-way transformer)
        """
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): ... x embedding_dim
          residual (torch.Tensor or None): ... x embedding_dim, added to the output (fused into
            the second matmul on the fast path)

        Returns:
          torch.Tensor: ... x embedding_dim
        """
        act = fusable_activation(self.act)
        if act is not None:
            h = fused_linear(x, self.lin1.weight, self.lin1.bias, act)
        else:
            h = self.act(self.lin1(x))
        return fused_linear(h, self.lin2.weight, self.lin2.bias, residual=residual)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a B x C x H x W tensor (eps 1e-6, as in SAM).

    The result is in channels-last memory layout: the mask decoder reads image embeddings as
    H*W tokens of C channels, which is then a view instead of a transposing copy per click."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        """
        Arguments:
          num_channels (int): C, the size of the normalised channel axis (and of the learned
            per-channel weight and bias)
          eps (float): the value added to the variance for numerical stability
        """
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Arguments:
          x (torch.Tensor): B x C x H x W, any memory format

        Returns:
          torch.Tensor: B x C x H x W, normalised over C at every pixel, channels-last memory
        """
        if x.is_contiguous(memory_format=torch.channels_last):
            y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        # Channel-first input (the mask prompt's first, 4-channel map): reduce across planes.
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        return x.contiguous(memory_format=torch.channels_last)
