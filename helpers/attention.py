"""Chapter 01: scaled dot-product attention, written out step by step.

    scores  S = Q Kᵀ / sqrt(d_k)                       (..., T_q, T_k)
    mask    S_ij <- -inf where mask_ij is False        True = may attend (as in F.scaled_dot_product_attention)
    weights A = softmax(S) over the key axis (-1)      each row sums to 1 over the allowed keys
    output  O = A V                                    (..., T_q, d_v)

A query row whose keys are all blocked has no distribution to take: it gets all-zero weights and
a zero output (not NaN), which is also what torch's fused kernel returns.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .shapes import (
    ShapeError,
    fmt_shape,
    require_bool_mask,
    require_float,
    require_positive_int,
    require_same_dtype,
)

__all__ = [
    "attention_scores",
    "causal_mask",
    "padding_mask",
    "apply_mask",
    "masked_softmax",
    "scaled_dot_product_attention",
]


def _require_qk(fn: str, q: torch.Tensor, k: torch.Tensor) -> None:
    require_float(fn, "q", q, "(..., T_q, d_k)")
    require_float(fn, "k", k, "(..., T_k, d_k)")
    require_same_dtype(fn, q=q, k=k)
    if q.shape[:-2] != k.shape[:-2] or q.shape[-1] != k.shape[-1]:
        raise ShapeError(
            f"{fn}: q is (..., T_q, d_k) = {fmt_shape(q.shape)}, so k must be (..., T_k, d_k) with the "
            f"same leading axes {fmt_shape(q.shape[:-2])} and d_k = {q.shape[-1]}; got k {fmt_shape(k.shape)}"
        )


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """S = Q Kᵀ / sqrt(d_k): (..., T_q, d_k), (..., T_k, d_k) -> (..., T_q, T_k)."""
    _require_qk("attention_scores", q, k)
    d_k = q.shape[-1]
    return q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)


def causal_mask(T: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: query i may attend to keys 0..i."""
    require_positive_int("causal_mask", "T", T)
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def padding_mask(
    lengths: torch.Tensor | Sequence[int], T: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """(B, 1, T) bool key-padding mask: key j of sequence b may be attended to iff j < lengths[b].

    The size-1 query axis broadcasts against scores (B, T_q, T_k); for per-head scores
    (B, H, T_q, T_k) insert the head axis: padding_mask(lengths, T)[:, None].
    """
    fn = "padding_mask"
    require_positive_int(fn, "T", T)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ShapeError(
            f"{fn}: lengths must be a 1-D integer tensor of shape (B,); got {fmt_shape(lengths.shape)} "
            f"of dtype {lengths.dtype}"
        )
    if lengths.numel() and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"{fn}: every length must lie in 0..T = 0..{T}; got {lengths.tolist()}")
    positions = torch.arange(T, device=lengths.device)  # (T,)
    return (positions[None, :] < lengths[:, None])[:, None, :]  # (B, 1, T)


def apply_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Blocked scores (mask False) become -inf; allowed scores are unchanged. Returns a new tensor."""
    require_float("apply_mask", "scores", scores, "(..., T_q, T_k)")
    require_bool_mask("apply_mask", mask, scores.shape)
    return scores.masked_fill(~mask, float("-inf"))  # (..., T_q, T_k)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the key axis (-1), giving blocked keys exactly zero weight.

    Rows with no allowed key are all zeros. They are computed from zeros rather than from a row
    of -inf, so neither the forward pass nor the gradient ever contains NaN.
    """
    require_float("masked_softmax", "scores", scores, "(..., T_q, T_k)")
    if mask is None:
        return torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    masked = apply_mask(scores, mask)  # (..., T_q, T_k), -inf where blocked
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q or 1, 1)
    safe = torch.where(has_key, masked, torch.zeros((), dtype=scores.dtype, device=scores.device))
    weights = torch.softmax(safe, dim=-1)  # (..., T_q, T_k)
    return torch.where(has_key, weights, torch.zeros((), dtype=scores.dtype, device=scores.device))


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q Kᵀ / sqrt(d_k), blocked -> -inf) V.

    q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v), mask broadcastable to (..., T_q, T_k)
    -> (output (..., T_q, d_v), weights (..., T_q, T_k)).
    Same numbers as torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).
    """
    fn = "scaled_dot_product_attention"
    _require_qk(fn, q, k)
    require_float(fn, "v", v, "(..., T_k, d_v)")
    require_same_dtype(fn, q=q, k=k, v=v)
    if v.shape[:-2] != k.shape[:-2] or v.shape[-2] != k.shape[-2]:
        raise ShapeError(
            f"{fn}: k is (..., T_k, d_k) = {fmt_shape(k.shape)}, so v must be (..., T_k, d_v) with the "
            f"same leading axes and T_k = {k.shape[-2]}; got v {fmt_shape(v.shape)}"
        )
    scores = attention_scores(q, k)  # (..., T_q, T_k)
    if mask is not None:
        require_bool_mask(fn, mask, scores.shape)
    weights = masked_softmax(scores, mask)  # (..., T_q, T_k)
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)
