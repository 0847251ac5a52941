"""Slow, obviously correct implementations of chapter 05 written with explicit loops.

The checks must accept these: they are correct answers written by someone other than the reference
(one query, one head, one key at a time; masks entry by entry from their definitions).
"""

from __future__ import annotations

import math

import torch


def cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads=None, memory_mask=None):
    n_kv = n_heads if n_kv_heads is None else n_kv_heads
    B, T_q, d_model = x.shape
    T_k = memory.shape[1]
    d_head = d_model // n_heads
    q, k, v = x @ w_q.T, memory @ w_k.T, memory @ w_v.T
    heads = torch.zeros(B, T_q, d_model, dtype=x.dtype, device=x.device)
    weights = torch.zeros(B, n_heads, T_q, T_k, dtype=x.dtype, device=x.device)
    for b in range(B):
        for h in range(n_heads):
            g = h // (n_heads // n_kv)  # the key/value head this query head reads
            for i in range(T_q):
                qi = q[b, i, h * d_head:(h + 1) * d_head]
                allowed = [j for j in range(T_k) if memory_mask is None or bool(memory_mask[b, j])]
                if not allowed:
                    continue
                scores = [qi @ k[b, j, g * d_head:(g + 1) * d_head] / math.sqrt(d_head) for j in allowed]
                top = max(float(s) for s in scores)  # a constant shift: the softmax does not depend on it
                exps = [torch.exp(s - top) for s in scores]
                total = sum(exps)
                for j, e in zip(allowed, exps):
                    weights[b, h, i, j] = e / total
                    heads[b, i, h * d_head:(h + 1) * d_head] += e / total * v[b, j, g * d_head:(g + 1) * d_head]
    return heads @ w_o.T, weights


def decoder_block(x, memory, self_attn, cross_attn, ffn, norm1, norm2, norm3, memory_mask=None):
    T = x.shape[1]
    causal = torch.tensor([[j <= i for j in range(T)] for i in range(T)], device=x.device)
    after_self = x + self_attn(norm1(x), causal)
    after_cross = after_self + cross_attn(norm2(after_self), memory, memory_mask)
    return after_cross + ffn(norm3(after_cross))


def _mask(rule, lengths, T_q, T_k):
    return torch.tensor([[[rule(i, j, int(n)) for j in range(T_k)] for i in range(T_q)] for n in lengths],
                        dtype=torch.bool).reshape(len(lengths), T_q, T_k)


def model_masks(kind, lengths, T, target_lengths=None, T_tgt=None):
    bidirectional = _mask(lambda i, j, n: j < n, lengths, T, T)
    if kind == "encoder":
        return {"self": bidirectional}
    if kind == "decoder":
        return {"self": _mask(lambda i, j, n: j < n and j <= i, lengths, T, T)}
    return {"encoder": bidirectional,
            "decoder": _mask(lambda i, j, n: j < n and j <= i, target_lengths, T_tgt, T_tgt),
            "cross": _mask(lambda i, j, n: j < n, lengths, T_tgt, T)}


def prefix_lm_mask(prefix_lengths, lengths, T):
    out = torch.zeros(len(lengths), T, T, dtype=torch.bool)
    for b, (p, n) in enumerate(zip(prefix_lengths.tolist(), lengths.tolist())):
        for i in range(T):
            for j in range(n):
                out[b, i, j] = j <= i or j < p
    return out
