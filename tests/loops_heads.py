"""Chapter 02 written the slow, obvious way: explicit loops over heads and features (the spec).

The checks must accept these: they are correct answers written without the reference's
reshape/transpose tricks. Attention itself comes from chapter 01's loop version.
"""

from __future__ import annotations

import torch

from .loops_attention import scaled_dot_product_attention as loop_attention


def split_heads(x, n_heads):
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    out = torch.empty(B, n_heads, T, d_head, dtype=x.dtype, device=x.device)
    for h in range(n_heads):
        for c in range(d_head):
            out[:, h, :, c] = x[:, :, h * d_head + c]
    return out


def merge_heads(x):
    B, H, T, d_head = x.shape
    out = torch.empty(B, T, H * d_head, dtype=x.dtype, device=x.device)
    for h in range(H):
        for c in range(d_head):
            out[:, :, h * d_head + c] = x[:, h, :, c]
    return out


def grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    """Head by head: query head h uses rows h*d_head.. of W_Q and K/V head h // (H / H_kv)."""
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    group = n_heads // n_kv_heads
    out = torch.zeros(B, T, d_model, dtype=x.dtype, device=x.device)
    weights = torch.empty(B, n_heads, T, T, dtype=x.dtype, device=x.device)
    for h in range(n_heads):
        g = h // group
        rows_q = slice(h * d_head, (h + 1) * d_head)
        rows_kv = slice(g * d_head, (g + 1) * d_head)
        q = x @ w_q[rows_q].T  # (B, T, d_head)
        k = x @ w_k[rows_kv].T
        v = x @ w_v[rows_kv].T
        head_mask = None
        if mask is not None:
            m = mask.expand(B, n_heads, T, T) if mask.dim() == 4 else mask.expand(B, T, T)[:, None]
            head_mask = m[:, h] if m.shape[1] > 1 else m[:, 0]
        head_out, head_w = loop_attention(q, k, v, head_mask)  # (B, T, d_head), (B, T, T)
        weights[:, h] = head_w
        out = out + head_out @ w_o[:, rows_q].T  # this head's columns of W_O
    return out, weights


def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    return grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_heads, mask)


def attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False):
    d_head = d_model // n_heads
    kv = n_heads if n_kv_heads is None else n_kv_heads
    shapes = [(d_model, d_model), (kv * d_head, d_model), (kv * d_head, d_model), (d_model, d_model)]
    total = 0
    for out_features, in_features in shapes:
        total += out_features * in_features + (out_features if bias else 0)
    return total


def kv_cache_elements_per_token(n_layers, n_kv_heads, d_head):
    total = 0
    for _layer in range(n_layers):
        for _tensor in ("k", "v"):
            total += n_kv_heads * d_head
    return total
