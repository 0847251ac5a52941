"""Chapter 02: multi-head attention, and its grouped-query (GQA) and multi-query (MQA) variants.

    split     (B, T, d_model) -> (B, H, T, d_head)        d_head = d_model / H; head h owns the
                                                         features h*d_head .. (h+1)*d_head - 1
    attend    every head runs chapter 01's attention on its own (T, d_head) slice
    merge     (B, H, T, d_head) -> (B, T, d_model)        the heads' outputs side by side (concat)
    project   out = merge(heads) @ W_Oᵀ                   W_O mixes what the heads found

Weights follow torch.nn.Linear: W has shape (out_features, in_features) and y = x @ W.T. Without
biases, multi_head_attention gives the same numbers as torch.nn.MultiheadAttention(batch_first=True,
bias=False) with in_proj_weight = cat([W_Q, W_K, W_V]) and out_proj.weight = W_O.

Grouped-query attention keeps H query heads but only H_kv key/value heads (H_kv divides H):
query head h reads key/value head h // (H / H_kv), so each run of H / H_kv consecutive query heads
shares one K/V head (torch's F.scaled_dot_product_attention(..., enable_gqa=True) groups the same
way). MQA is H_kv = 1, MHA is H_kv = H.

Masks are chapter 01's: bool, True = may attend, broadcast against the scores (B, H, T, T). A causal
mask (T, T) works as it is; a padding mask from helpers.attention.padding_mask has shape (B, 1, T)
and needs a head axis first: mask[:, None] has shape (B, 1, 1, T). (torch.nn.MultiheadAttention
reads a bool mask the other way round: True = blocked.)
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import scaled_dot_product_attention
from .shapes import (
    ShapeError,
    fmt_shape,
    require_bool_mask,
    require_float,
    require_positive_int,
    require_same_dtype,
)

__all__ = [
    "MultiHeadAttention",
    "attention_param_count",
    "grouped_query_attention",
    "kv_cache_elements_per_token",
    "kv_head_for_query_head",
    "merge_heads",
    "multi_head_attention",
    "repeat_kv",
    "split_heads",
]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _require_heads(fn: str, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> int:
    """d_head = d_model / n_heads, after checking that every division is exact."""
    require_positive_int(fn, "d_model", d_model)
    require_positive_int(fn, "n_heads", n_heads)
    if d_model % n_heads:
        raise ShapeError(
            f"{fn}: d_model = {d_model} is not divisible by n_heads = {n_heads}; every head needs "
            f"the same width d_head = d_model / n_heads"
        )
    if n_kv_heads is not None:
        require_positive_int(fn, "n_kv_heads", n_kv_heads)
        if n_heads % n_kv_heads:
            raise ShapeError(
                f"{fn}: n_heads = {n_heads} is not divisible by n_kv_heads = {n_kv_heads}; each "
                f"key/value head serves a group of n_heads / n_kv_heads query heads"
            )
    return d_model // n_heads


def _require_weight(fn: str, name: str, w: object, shape: tuple[int, int], layout: str) -> None:
    require_float(fn, name, w, layout)
    if tuple(w.shape) != shape:
        raise ShapeError(
            f"{fn}: {name} must have shape {layout} = {fmt_shape(shape)} (nn.Linear layout: "
            f"out_features, in_features); got {fmt_shape(w.shape)}"
        )


def _require_head_mask(fn: str, mask: object, scores_shape: tuple[int, ...]) -> None:
    """A bool mask for per-head scores (B, H, T_q, T_k); refuse a (B, 1, T_k) padding mask."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 3 and mask.shape[0] > 1 and mask.shape[1] == 1:
        raise ShapeError(
            f"{fn}: mask of shape {fmt_shape(mask.shape)} looks like a (B, 1, T_k) padding mask, which "
            f"would line its batch axis up with the head axis of the scores (B, H, T_q, T_k) = "
            f"{fmt_shape(scores_shape)}; insert the head axis first: mask[:, None] has shape (B, 1, 1, T_k)"
        )
    require_bool_mask(fn, mask, scores_shape)


def _require_bool(fn: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False; got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, d_model) -> (B, H, T, d_head): head h gets features h*d_head .. (h+1)*d_head - 1.

    Reshape the feature axis into (H, d_head), then move the head axis in front of the tokens.
    Reshaping straight to (B, H, T, d_head) would be the wrong tensor (chapter 02's classic bug).
    """
    fn = "split_heads"
    require_float(fn, "x", x, "(B, T, d_model)")
    B, T, d_model = x.shape
    d_head = _require_heads(fn, d_model, n_heads)
    return x.reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, T, H, d_head) -> (B, H, T, d_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d_head) -> (B, T, H * d_head): the inverse of split_heads (the "concat" of the heads)."""
    require_float("merge_heads", "x", x, "(B, H, T, d_head)")
    B, H, T, d_head = x.shape
    # After the transpose the memory is no longer in (B, T, H, d_head) order: reshape copies, view would fail.
    return x.transpose(1, 2).reshape(B, T, H * d_head)  # (B, T, H, d_head) -> (B, T, d_model)


def kv_head_for_query_head(h: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head h reads in grouped-query attention: h // (H / H_kv)."""
    fn = "kv_head_for_query_head"
    require_positive_int(fn, "n_heads", n_heads)
    require_positive_int(fn, "n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ShapeError(f"{fn}: n_heads = {n_heads} is not divisible by n_kv_heads = {n_kv_heads}")
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads:
        raise ValueError(f"{fn}: h must be a query head index in 0..{n_heads - 1}; got {h!r}")
    return h // (n_heads // n_kv_heads)


def repeat_kv(kv: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, d_head) -> (B, H_kv * n_rep, T, d_head), each head repeated n_rep times in a row.

    Head j of the result is head j // n_rep of the input: [k0, k0, k1, k1] for n_rep = 2, which is
    what query heads 0..H-1 read in grouped-query attention. (Not [k0, k1, k0, k1]: that is
    kv.repeat(1, n_rep, 1, 1), the mapping h % H_kv.)
    """
    require_float("repeat_kv", "kv", kv, "(B, H_kv, T, d_head)")
    require_positive_int("repeat_kv", "n_rep", n_rep)
    return kv.repeat_interleave(n_rep, dim=1)  # (B, H_kv * n_rep, T, d_head)


# ---------------------------------------------------------------------------------------------
# Attention with heads
# ---------------------------------------------------------------------------------------------


def _require_inputs(fn: str, x: torch.Tensor, w_q, w_k, w_v, w_o, n_heads: int, n_kv_heads: int) -> int:
    require_float(fn, "x", x, "(B, T, d_model)")
    d_model = x.shape[-1]
    d_head = _require_heads(fn, d_model, n_heads, n_kv_heads)
    d_kv = n_kv_heads * d_head
    kv_layout = "(d_model, d_model)" if n_kv_heads == n_heads else "(n_kv_heads * d_head, d_model)"
    _require_weight(fn, "w_q", w_q, (d_model, d_model), "(d_model, d_model)")
    _require_weight(fn, "w_k", w_k, (d_kv, d_model), kv_layout)
    _require_weight(fn, "w_v", w_v, (d_kv, d_model), kv_layout)
    _require_weight(fn, "w_o", w_o, (d_model, d_model), "(d_model, d_model)")
    require_same_dtype(fn, x=x, w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    return d_head


def multi_head_attention(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
    n_heads: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention from bias-free weights, each (d_model, d_model).

    x (B, T, d_model), mask bool broadcastable to (B, H, T, T) (True = may attend)
    -> (out (B, T, d_model), weights (B, H, T, T)): one attention pattern per head, not averaged.
    """
    fn = "multi_head_attention"
    _require_inputs(fn, x, w_q, w_k, w_v, w_o, n_heads, n_heads)
    B, T, _ = x.shape
    if mask is not None:
        _require_head_mask(fn, mask, (B, n_heads, T, T))
    q = split_heads(x @ w_q.T, n_heads)  # (B, T, d_model) -> (B, H, T, d_head)
    k = split_heads(x @ w_k.T, n_heads)  # (B, H, T, d_head)
    v = split_heads(x @ w_v.T, n_heads)  # (B, H, T, d_head)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head), (B, H, T, T)
    return merge_heads(heads) @ w_o.T, weights  # (B, T, d_model), (B, H, T, T)


def grouped_query_attention(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: H query heads share H_kv key/value heads.

    w_q, w_o (d_model, d_model); w_k, w_v (n_kv_heads * d_head, d_model) with d_head = d_model / H.
    Query head h reads key/value head h // (H / H_kv). x (B, T, d_model), mask as in
    multi_head_attention -> (out (B, T, d_model), weights (B, H, T, T)).
    """
    fn = "grouped_query_attention"
    _require_inputs(fn, x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads)
    B, T, _ = x.shape
    if mask is not None:
        _require_head_mask(fn, mask, (B, n_heads, T, T))
    group = n_heads // n_kv_heads  # query heads per key/value head
    q = split_heads(x @ w_q.T, n_heads)  # (B, T, d_model) -> (B, H, T, d_head)
    k = split_heads(x @ w_k.T, n_kv_heads)  # (B, T, H_kv * d_head) -> (B, H_kv, T, d_head)
    v = split_heads(x @ w_v.T, n_kv_heads)  # (B, H_kv, T, d_head)
    k = repeat_kv(k, group)  # (B, H, T, d_head): position h holds K/V head h // group
    v = repeat_kv(v, group)  # (B, H, T, d_head)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head), (B, H, T, T)
    return merge_heads(heads) @ w_o.T, weights  # (B, T, d_model), (B, H, T, T)


# ---------------------------------------------------------------------------------------------
# What the variants cost
# ---------------------------------------------------------------------------------------------


def attention_param_count(d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False) -> int:
    """Parameters of one attention layer's Q, K, V and output projections.

    W_Q, W_O: d_model x d_model each. W_K, W_V: (n_kv_heads * d_head) x d_model each, with
    d_head = d_model / n_heads (n_kv_heads=None means n_heads: plain MHA). bias=True gives every
    one of the four projections a bias of its out_features (as nn.MultiheadAttention(bias=True)
    and GPT-2 do). Positional embeddings and norms are not counted.
    """
    fn = "attention_param_count"
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_head = _require_heads(fn, d_model, n_heads, n_kv_heads)
    _require_bool(fn, "bias", bias)
    d_kv = n_kv_heads * d_head  # width of K (and of V)
    weights = d_model * d_model + 2 * d_kv * d_model + d_model * d_model  # W_Q, W_K and W_V, W_O
    biases = d_model + 2 * d_kv + d_model if bias else 0  # b_Q, b_K and b_V, b_O
    return weights + biases


def kv_cache_elements_per_token(n_layers: int, n_kv_heads: int, d_head: int) -> int:
    """Numbers a decoder's KV cache stores for each token: 2 (K and V) x n_layers x n_kv_heads x d_head.

    Multiply by the number of cached tokens (and sequences) and by the bytes per number (2 for
    fp16/bf16) for the cache's memory. Only the key/value heads count: GQA and MQA shrink the cache
    by H / H_kv while keeping every query head.
    """
    fn = "kv_cache_elements_per_token"
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head)):
        require_positive_int(fn, name, value)
    return 2 * n_layers * n_kv_heads * d_head


# ---------------------------------------------------------------------------------------------
# The layer later chapters build blocks from
# ---------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Self-attention with H query heads and H_kv key/value heads (MHA, GQA or MQA), no biases.

        attn = MultiHeadAttention(d_model=64, n_heads=8, n_kv_heads=2)
        out, weights = attn(x, mask=causal_mask(T))  # (B, T, d_model), (B, H, T, T)

    Holds four bias-free nn.Linear layers named as in Llama (q_proj, k_proj, v_proj, o_proj) and
    calls multi_head_attention or grouped_query_attention with their weights.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.d_head = _require_heads("MultiHeadAttention", d_model, n_heads, n_kv_heads)
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)  # weight (d_model, d_model)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)  # (H_kv * d_head, d_model)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_head, bias=False)  # (H_kv * d_head, d_model)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)  # weight (d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model), mask bool broadcastable to (B, H, T, T) -> (out (B, T, d_model), weights (B, H, T, T))."""
        weights = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.o_proj.weight)
        if self.n_kv_heads == self.n_heads:
            return multi_head_attention(x, *weights, self.n_heads, mask)
        return grouped_query_attention(x, *weights, self.n_heads, self.n_kv_heads, mask)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, d_head={self.d_head}"
