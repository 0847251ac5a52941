"""Chapter 08's fast path: the shared model's attention, norms and FFNs on torch's fused kernels.

    fused_attend(q, k, v, mask, bias)   attend's output through F.scaled_dot_product_attention (no weights)
    fused_norm(norm, x)                 a course LayerNorm / RMSNorm through F.layer_norm / F.rms_norm
    fused_ffn(ffn, x)                   a course FFN with torch's activations (SwiGLU: one matmul for gate and up)

Each takes the course modules' own parameters, so the fast path and the course path share one state
dict; the classes of helpers.blocks call these from their `fused_forward` methods
(ModelConfig(kernels="fused")). tests/test_fused_attention.py proves the two paths equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import causal_mask
from ..ffn import FeedForward, SwiGLUFFN
from ..norms import LayerNorm, RMSNorm
from ..shapes import ShapeError, fmt_shape, require_bool_mask, require_float

__all__ = ["fused_attend", "fused_ffn", "fused_norm"]

def fused_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None) -> torch.Tensor:
    """attend's output through torch.nn.functional.scaled_dot_product_attention: out (B, H, T_q, d_head).

    Same inputs and conventions as `attend` (bool mask True = may attend; bias added to the scaled
    scores; a query row with every key blocked gives zeros, which torch's kernel also returns). The
    kernel computes softmax(q kᵀ / sqrt(d_head) + attn_mask) v in tiles without keeping the weights,
    so it is faster and lighter but returns no weights. How the course's inputs map onto it:

        mask only                 attn_mask = mask (bool, the same convention)
        the causal (T, T) mask    is_causal=True (the kernel skips the blocked tiles)
        bias (and mask)           attn_mask = bias where allowed, -inf where blocked (a float mask)
    """
    fn = "fused_attend"
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_float(fn, name, t, "(..., T, d_head)")
    if k.shape[-1] != q.shape[-1] or k.shape[:-1] != v.shape[:-1]:
        raise ShapeError(f"{fn}: q {fmt_shape(q.shape)} = (..., T_q, d_head), k {fmt_shape(k.shape)} and "
                         f"v {fmt_shape(v.shape)} = (..., T_k, d_head) must agree on d_head and T_k")
    scores_shape = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), q.shape[-2], k.shape[-2])
    T_q, T_k = q.shape[-2], k.shape[-2]
    if mask is not None:
        require_bool_mask(fn, mask, scores_shape)
        if bias is None and mask.dim() == 2 and T_q == T_k and torch.equal(mask, causal_mask(T_q, device=mask.device)):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T_q, d_head)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T_q, d_head)
    if bias.dtype != q.dtype or not bias.is_floating_point():
        raise TypeError(f"{fn}: bias must be a float tensor of the scores' dtype {q.dtype}; got {bias.dtype}")
    try:
        torch.broadcast_shapes(bias.shape, scores_shape)
    except RuntimeError:
        raise ShapeError(f"{fn}: bias must broadcast to the scores (B, H, T_q, T_k) = {fmt_shape(scores_shape)}; "
                         f"got {fmt_shape(bias.shape)}") from None
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))  # broadcast (..., T_q, T_k): blocked scores -> -inf
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T_q, d_head)


_FUSED_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def fused_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(x) through torch's kernel: F.layer_norm or F.rms_norm with the module's own gamma (and beta)."""
    if type(norm) is LayerNorm:
        return F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps)  # (..., d_model)
    if type(norm) is RMSNorm:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)  # (..., d_model)
    return norm(x)  # any other norm: its own forward


def fused_ffn(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ffn(x) with torch's activations and, for SwiGLU, one matmul for the gate and up projections.

    A mixture of experts (chapter 05) routes tokens with the chapter's own function: its forward runs."""
    if type(ffn) is FeedForward:
        h = _FUSED_ACTIVATIONS[ffn.activation](F.linear(x, ffn.fc1.weight, ffn.fc1.bias))  # (..., d_ff)
        return F.linear(h, ffn.fc2.weight, ffn.fc2.bias)  # (..., d_model)
    if type(ffn) is SwiGLUFFN:
        w = torch.cat([ffn.gate.weight, ffn.up.weight])  # (2 d_ff, d_model)
        gate, up = F.linear(x, w).chunk(2, dim=-1)  # (..., d_ff) x 2
        return F.linear(F.silu(gate) * up, ffn.down.weight)  # (..., d_model)
    return ffn(x)


