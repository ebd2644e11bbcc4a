import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_hooks

from ..fastpath import fast_paths_enabled, private_op_failed, private_op_usable

_OP_NAME = "torch.ops.mkldnn._linear_pointwise"


def _onednn_linear() -> object | None:
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_ONEDNN_LINEAR = _onednn_linear()

# Dtypes the fused op gets: fp32, and bf16 where oneDNN has bf16 kernels (the bf16 predictor).
_FUSED_DTYPES = (torch.float32, torch.bfloat16)

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

    For fp32 / bf16 CPU inference this is one oneDNN matmul with the bias, activation or
    residual applied in its epilogue (the op PyTorch's own compiler emits for this pattern): it
    skips the bias-initialised output and the separate pass over it that ``addmm`` + activation
    make, ~25 % of ViT-B's MLP, and oneDNN is also faster than MKL on the refiner's tall
    DCN matmul. Elsewhere (autograd, other devices or dtypes, ``use_fast_paths(False)``, or
    after the op failed once at call time) it is the plain composition."""
    assert activation is None or residual is None
    if (
        _ONEDNN_LINEAR is not None
        and fast_paths_enabled()
        and x.device.type == "cpu"
        and x.dtype in _FUSED_DTYPES
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and (residual is None or residual.dtype == x.dtype)
        and not (
            torch.is_grad_enabled()
            and any(t is not None and t.requires_grad for t in (x, weight, bias, residual))
        )
        and private_op_usable(_OP_NAME)
    ):
        # oneDNN takes a slow reference path (seconds) on strided operands: pass dense ones.
        x2, w2 = x.reshape(-1, x.shape[-1]).contiguous(), weight.contiguous()
        try:
            if residual is not None:
                res = residual.contiguous().reshape(-1, w2.shape[0])
                out = _ONEDNN_LINEAR(x2, res, w2, bias, "add")
            else:
                out = _ONEDNN_LINEAR(x2, w2, bias, activation or "none", [], "none")
        except (RuntimeError, NotImplementedError, TypeError) as e:
            private_op_failed(_OP_NAME, e)  # warns once; the composition below from now on
        else:
            return out.view(*x.shape[:-1], w2.shape[0])
    out = F.linear(x, weight, bias)
    if activation is not None:
        return _ACTIVATIONS[activation](out)
    return out if residual is None else residual + out


def is_plain(module: nn.Module, cls: type[nn.Module] = nn.Linear) -> bool:
    """Whether a fast path may read ``module``'s weights instead of calling it: exactly ``cls``
    (not a subclass, a LoRA-style wrapper, a quantised or parametrised module) with no forward
    hooks of its own and no global ones. Anything else is always called as a module."""
    return type(module) is cls and not _hooked(module)


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or _module_hooks._global_forward_hooks
        or _module_hooks._global_forward_pre_hooks
    )


def is_plain_linear(module: nn.Module, x: torch.Tensor | None = None) -> bool:
    """``is_plain(module, nn.Linear)`` with weights of ``x``'s dtype (when given)."""
    return is_plain(module) and (x is None or module.weight.dtype == x.dtype)


def fusable_activation(module: nn.Module) -> str | None:
    """The ``fused_linear`` name of an activation module, or None if it cannot be fused."""
    if _hooked(module):
        return None
    if type(module) is nn.GELU:
        return "gelu" if module.approximate == "none" else None
    return {nn.ReLU: "relu", nn.Tanh: "tanh"}.get(type(module))


def linear(
    module: nn.Module,
    x: torch.Tensor,
    act: nn.Module | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``act(module(x))`` or ``residual + module(x)`` (not both), through :func:`fused_linear`
    when the fast paths are on, ``module`` is a plain ``nn.Linear`` of ``x``'s dtype and
    ``act`` (if any) is fusable; otherwise the modules are called as they are (hooks, wrappers
    and quantised layers take part)."""
    assert act is None or residual is None
    if fast_paths_enabled() and is_plain_linear(module, x):
        name = None if act is None else fusable_activation(act)
        if act is None or name is not None:
            return fused_linear(x, module.weight, module.bias, name, residual)
    out = module(x)
    if act is not None:
        return act(out)
    return out if residual is None else residual + out


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
        return linear(self.lin2, linear(self.lin1, x, self.act), residual=residual)


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
            w = self.weight  # its shape, not x's: a constant when traced for ONNX
            y = F.layer_norm(x.permute(0, 2, 3, 1), w.shape, w, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        # Channel-first input (the mask prompt's first, 4-channel map): reduce across planes.
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        x = self.weight[:, None, None] * x + self.bias[:, None, None]
        return x.contiguous(memory_format=torch.channels_last)
