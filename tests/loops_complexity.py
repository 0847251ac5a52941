"""Chapter 07 written the slow, obvious way: loops over matrices, layers, tokens and blocks.

The checks must accept these: correct answers written without the reference's formulas.
"""

from __future__ import annotations

import math

import torch


def _matmul_flops(m, k, n):
    """One (m x k) @ (k x n) product: m n dot products of length k, each k multiplies and k adds."""
    return m * n * (k + k)


def attention_flops(d_model, n_heads, T, n_kv_heads=None):
    kv = n_heads if n_kv_heads is None else n_kv_heads
    d_head = d_model // n_heads
    counts = {"projections": 0, "scores": 0, "values": 0, "output": 0}
    for width in (d_model, kv * d_head, kv * d_head):  # W_Q, W_K, W_V
        counts["projections"] += _matmul_flops(T, d_model, width)
    for _head in range(n_heads):
        counts["scores"] += _matmul_flops(T, d_head, T)
        counts["values"] += _matmul_flops(T, T, d_head)
    counts["output"] = _matmul_flops(T, d_model, d_model)
    return counts


def mlp_flops(d_model, d_ff, T, kind="gelu"):
    shapes = [(d_model, d_ff), (d_ff, d_model)] + ([(d_model, d_ff)] if kind == "swiglu" else [])
    return sum(_matmul_flops(T, k, n) for k, n in shapes)


def kv_cache_bytes(n_layers, n_kv_heads, d_head, tokens, batch, dtype):
    one = torch.zeros(1, dtype=dtype)
    total = 0
    for _layer in range(n_layers):
        for _tensor in ("k", "v"):
            total += batch * n_kv_heads * tokens * d_head * one.element_size()
    return total


def embed_new_tokens(ids, wte, wpe, cache_length):
    B, T = ids.shape
    out = torch.empty(B, T, wte.shape[1], dtype=wte.dtype, device=wte.device)
    for b in range(B):
        for t in range(T):
            out[b, t] = wte[ids[b, t]] + wpe[cache_length + t]
    return out


def attend_with_cache(q, k_new, v_new, k_cache, v_cache):
    """Query by query, head by head: token T_past + i sees keys 0 .. T_past + i of its K/V head."""
    B, H, T_new, d = q.shape
    H_kv, T_past = k_new.shape[1], k_cache.shape[2]
    k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
    out = torch.zeros(B, H, T_new, v_new.shape[-1], dtype=q.dtype, device=q.device)
    for b in range(B):
        for h in range(H):
            g = h // (H // H_kv)
            for i in range(T_new):
                visible = T_past + i + 1
                scores = [q[b, h, i] @ k_all[b, g, j] / math.sqrt(d) for j in range(visible)]
                top = max(float(s) for s in scores)  # a constant shift: the softmax does not depend on it
                w = [torch.exp(s - top) for s in scores]
                for j in range(visible):
                    out[b, h, i] += w[j] / sum(w) * v_all[b, g, j]
    return out, k_all, v_all


def online_softmax_attention(q, k, v, block_size):
    """One query row at a time; the running maximum is a plain float (a constant shift), the rest tensors."""
    scale = 1 / math.sqrt(q.shape[-1])
    flat_q = q.reshape(-1, q.shape[-2], q.shape[-1])
    flat_k = k.reshape(-1, k.shape[-2], k.shape[-1])
    flat_v = v.reshape(-1, v.shape[-2], v.shape[-1])
    rows = []
    for b in range(flat_q.shape[0]):
        for i in range(flat_q.shape[1]):
            m, l, acc = -math.inf, 0.0, torch.zeros(v.shape[-1], dtype=q.dtype, device=q.device)
            for start in range(0, k.shape[-2], block_size):
                s = [flat_q[b, i] @ flat_k[b, j] * scale for j in range(start, min(start + block_size, k.shape[-2]))]
                m_new = max(m, max(float(x) for x in s))
                c = math.exp(m - m_new)
                l = l * c + sum(torch.exp(x - m_new) for x in s)
                acc = acc * c + sum(torch.exp(x - m_new) * flat_v[b, start + n] for n, x in enumerate(s))
                m = m_new
            rows.append(acc / l)
    return torch.stack(rows).reshape(*q.shape[:-1], v.shape[-1])


def decode_roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth):
    """Weight by weight: each is read once per step and used once per sequence; the batch grows one
    sequence at a time until the arithmetic takes at least as long as the reads."""
    flops = sum(2 * n_params for _sequence in range(batch))
    moved = n_params * bytes_per_param
    seconds = flops / peak_flops if flops / peak_flops >= moved / bandwidth else moved / bandwidth
    crossover = 1
    while 2 * n_params * crossover / peak_flops < moved / bandwidth:
        crossover += 1
    return {"intensity": flops / moved, "seconds": seconds, "crossover_batch": crossover}
