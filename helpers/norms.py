"""Chapter 04: the residual stream, LayerNorm, RMSNorm, and where the norm goes (Pre-LN vs Post-LN).

    LayerNorm  y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta      per token, over d_model
    RMSNorm    y = x / sqrt(mean(x^2) + eps) * gamma                       per token, over d_model
    Pre-LN     x = x + attn(norm1(x));  x = x + ffn(norm2(x))             GPT-2, Llama (+ a final norm)
    Post-LN    x = norm1(x + attn(x));  x = norm2(x + ffn(x))             the 2017 Transformer, BERT

Both norms work on the last axis only: every token is normalized by its own statistics, never by
the batch's or the sequence's. The variance is the biased one (divide by d_model, as
torch.nn.LayerNorm does), and eps sits inside the square root.

torch.nn.RMSNorm and torch.nn.functional.rms_norm default to eps=None, which means
torch.finfo(dtype).eps (about 1.2e-7 in float32), not the 1e-6 used here: pass eps explicitly when
comparing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .shapes import (
    ShapeError,
    fmt_shape,
    require_float,
    require_same_dtype,
    require_tensor,
)

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "layer_norm",
    "post_ln_block",
    "pre_ln_block",
    "residual_norms",
    "rms_norm",
]

Sublayer = Callable[[torch.Tensor], torch.Tensor]


def _require_eps(fn: str, eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"{fn}: eps must be a number >= 0 (e.g. 1e-5); got {eps!r}")
    return float(eps)


def _require_feature_vector(fn: str, name: str, p: object, x: torch.Tensor) -> None:
    """gamma / beta: one number per feature, shape (d_model,) with d_model = x.shape[-1]."""
    require_tensor(fn, name, p)
    if not p.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor; got dtype {p.dtype}")
    if p.dim() != 1 or p.shape[0] != x.shape[-1]:
        raise ShapeError(
            f"{fn}: x is (..., d_model) = {fmt_shape(x.shape)}, so {name} must be (d_model,) = "
            f"({x.shape[-1]},); got {name} {fmt_shape(p.shape)}"
        )


def layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last axis: (..., d_model) -> (..., d_model), like torch.nn.LayerNorm(d_model, eps)."""
    fn = "layer_norm"
    require_float(fn, "x", x, "(..., d_model)")
    _require_feature_vector(fn, "gamma", gamma, x)
    _require_feature_vector(fn, "beta", beta, x)
    require_same_dtype(fn, x=x, gamma=gamma, beta=beta)
    eps = _require_eps(fn, eps)
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1): one mean per token
    var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # (..., 1): biased, divides by d_model
    x_hat = (x - mean) / torch.sqrt(var + eps)  # (..., d_model): mean 0, variance ~1 per token
    return x_hat * gamma + beta  # (..., d_model)


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last axis: (..., d_model) -> (..., d_model), like torch.nn.RMSNorm(d_model, eps=eps)."""
    fn = "rms_norm"
    require_float(fn, "x", x, "(..., d_model)")
    _require_feature_vector(fn, "gamma", gamma, x)
    require_same_dtype(fn, x=x, gamma=gamma)
    eps = _require_eps(fn, eps)
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1): no mean subtracted
    return x / rms * gamma  # (..., d_model)


class LayerNorm(nn.Module):
    """layer_norm as a module: gamma starts at ones, beta at zeros (torch.nn.LayerNorm's init)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = _require_eps("LayerNorm", eps)
        self.weight = nn.Parameter(torch.ones(d_model))  # gamma (d_model,)
        self.bias = nn.Parameter(torch.zeros(d_model))  # beta (d_model,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)  # (..., d_model)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class RMSNorm(nn.Module):
    """rms_norm as a module: gamma starts at ones; there is no beta."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = _require_eps("RMSNorm", eps)
        self.weight = nn.Parameter(torch.ones(d_model))  # gamma (d_model,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)  # (..., d_model)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _sublayer(fn: str, name: str, f: Sublayer, h: torch.Tensor) -> torch.Tensor:
    """Call a sublayer and insist it returns the residual stream's shape (so it can be added)."""
    out = f(h)
    if not isinstance(out, torch.Tensor) or out.shape != h.shape:
        got = fmt_shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ShapeError(
            f"{fn}: {name} must map the residual stream (..., T, d_model) = {fmt_shape(h.shape)} to the "
            f"same shape, so that it can be added back; got {got}"
        )
    return out


def _require_block_inputs(fn: str, x: torch.Tensor, **callables: object) -> None:
    require_float(fn, "x", x, "(..., T, d_model)")
    for name, f in callables.items():
        if not callable(f):
            raise TypeError(f"{fn}: {name} must be callable (a function or an nn.Module); got {type(f).__name__}")


def pre_ln_block(x: torch.Tensor, attn: Sublayer, ffn: Sublayer, norm1: Sublayer, norm2: Sublayer) -> torch.Tensor:
    """Pre-LN block: each sublayer reads a normalized copy; the raw stream carries old state + edit.

    x (..., T, d_model) -> (..., T, d_model); equals nn.TransformerEncoderLayer(norm_first=True).
    """
    fn = "pre_ln_block"
    _require_block_inputs(fn, x, attn=attn, ffn=ffn, norm1=norm1, norm2=norm2)
    x = x + _sublayer(fn, "attn", attn, _sublayer(fn, "norm1", norm1, x))  # (..., T, d_model)
    x = x + _sublayer(fn, "ffn", ffn, _sublayer(fn, "norm2", norm2, x))  # (..., T, d_model)
    return x


def post_ln_block(x: torch.Tensor, attn: Sublayer, ffn: Sublayer, norm1: Sublayer, norm2: Sublayer) -> torch.Tensor:
    """Post-LN block: add the sublayer's edit first, then normalize the sum.

    x (..., T, d_model) -> (..., T, d_model); equals nn.TransformerEncoderLayer(norm_first=False).
    """
    fn = "post_ln_block"
    _require_block_inputs(fn, x, attn=attn, ffn=ffn, norm1=norm1, norm2=norm2)
    x = _sublayer(fn, "norm1", norm1, x + _sublayer(fn, "attn", attn, x))  # (..., T, d_model)
    x = _sublayer(fn, "norm2", norm2, x + _sublayer(fn, "ffn", ffn, x))  # (..., T, d_model)
    return x


def residual_norms(x: torch.Tensor, blocks: Iterable[Sublayer]) -> torch.Tensor:
    """Mean L2 norm of the residual stream's tokens before the first block and after each block.

    x (B, T, d_model), L blocks each (B, T, d_model) -> (B, T, d_model)  ->  (L + 1,):
    entry l is the mean over the B * T tokens of ||x_l[b, t, :]||_2, where x_0 = x and
    x_l = blocks[l-1](x_{l-1}).
    """
    fn = "residual_norms"
    require_float(fn, "x", x, "(B, T, d_model)")
    norms = [x.norm(dim=-1).mean()]  # scalar: ||token||_2 (B, T) averaged
    for index, block in enumerate(blocks):
        if not callable(block):
            raise TypeError(f"{fn}: blocks[{index}] must be callable; got {type(block).__name__}")
        x = _sublayer(fn, f"blocks[{index}]", block, x)  # (B, T, d_model)
        norms.append(x.norm(dim=-1).mean())
    return torch.stack(norms)  # (L + 1,)
