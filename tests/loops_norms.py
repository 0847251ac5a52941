"""Slow, obviously correct implementations of chapter 04 written with explicit loops over tokens.

The checks must accept these: they are correct answers written by someone other than the reference
(no torch reductions over axes, no broadcasting tricks; one token at a time, in scalar arithmetic on
0-d tensors, so that autograd follows it as it follows the reference).
"""

from __future__ import annotations

import torch


def _tokens(x):
    """Every index of x's leading axes: one per token."""
    lead = x.shape[:-1]
    if not lead:
        return [()]
    grid = torch.cartesian_prod(*[torch.arange(n) for n in lead]).reshape(-1, len(lead))
    return [tuple(row) for row in grid.tolist()]


def layer_norm(x, gamma, beta, eps=1e-5):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    d = x.shape[-1]
    for idx in _tokens(x):
        values = [x[idx + (i,)] for i in range(d)]  # 0-d tensors: autograd follows every step
        mean = sum(values) / d
        var = sum((v - mean) ** 2 for v in values) / d
        for i, v in enumerate(values):
            out[idx + (i,)] = (v - mean) / torch.sqrt(var + eps) * gamma[i] + beta[i]
    return out


def rms_norm(x, gamma, eps=1e-6):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    d = x.shape[-1]
    for idx in _tokens(x):
        values = [x[idx + (i,)] for i in range(d)]
        rms = torch.sqrt(sum(v * v for v in values) / d + eps)
        for i, v in enumerate(values):
            out[idx + (i,)] = v / rms * gamma[i]
    return out


def pre_ln_block(x, attn, ffn, norm1, norm2):
    after_attention = x + attn(norm1(x))
    return after_attention + ffn(norm2(after_attention))


def post_ln_block(x, attn, ffn, norm1, norm2):
    after_attention = norm1(x + attn(x))
    return norm2(after_attention + ffn(after_attention))


def residual_norms(x, blocks):
    states = [x]
    for block in blocks:
        states.append(block(states[-1]))
    means = []
    for state in states:
        norms = [torch.sqrt(sum(v ** 2 for v in state[idx])) for idx in _tokens(state)]
        means.append(sum(norms) / len(norms))
    return torch.stack(means)
