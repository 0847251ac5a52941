"""Slow, obviously correct implementations written with explicit loops (the spec, Tensor-Puzzles style).

The checks must accept these: they are correct answers written by someone other than the reference.
"""

from __future__ import annotations

import math

import torch


def attention_scores(q, k):
    out = torch.empty(*q.shape[:-1], k.shape[-2], dtype=q.dtype, device=q.device)
    lead = q.shape[:-2]
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in lead]).reshape(-1, len(lead)).tolist() if lead else [[]]:
        idx = tuple(idx)
        for i in range(q.shape[-2]):
            for j in range(k.shape[-2]):
                out[idx + (i, j)] = sum(q[idx + (i, c)] * k[idx + (j, c)] for c in range(q.shape[-1])) / math.sqrt(q.shape[-1])
    return out


def causal_mask(T):
    return torch.tensor([[j <= i for j in range(T)] for i in range(T)], dtype=torch.bool)


def padding_mask(lengths, T):
    return torch.tensor([[[j < int(n) for j in range(T)]] for n in lengths], dtype=torch.bool,
                        device=lengths.device)


def apply_mask(scores, mask):
    mask = mask.expand(scores.shape)
    out = scores.clone()
    out[~mask] = float("-inf")
    return out


def masked_softmax(scores, mask):
    """Row by row, entry by entry; each output entry is a tensor computed from the scores (autograd sees it)."""
    mask = mask.expand(scores.shape)
    flat_s, flat_m = scores.reshape(-1, scores.shape[-1]), mask.reshape(-1, scores.shape[-1])
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    rows = []
    for r in range(flat_s.shape[0]):
        allowed = [j for j in range(flat_s.shape[1]) if flat_m[r, j]]
        if not allowed:
            rows.append(torch.stack([zero] * flat_s.shape[1]))
            continue
        top = max(float(flat_s[r, j]) for j in allowed)  # a constant shift: softmax does not depend on it
        exps = {j: torch.exp(flat_s[r, j] - top) for j in allowed}
        total = sum(exps.values())
        rows.append(torch.stack([exps[j] / total if j in exps else zero for j in range(flat_s.shape[1])]))
    return torch.stack(rows).reshape(scores.shape)


def scaled_dot_product_attention(q, k, v, mask=None):
    scores = attention_scores(q, k)
    if mask is None:
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device)
    weights = masked_softmax(scores, mask)
    return weights @ v, weights
