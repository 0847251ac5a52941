"""Slow, obviously correct implementations of chapter 04 written with explicit loops over tokens.

The checks must accept these: they are correct answers written by someone other than the reference
(no torch reductions over axes, no broadcasting tricks; one token at a time, in Python arithmetic).
"""

from __future__ import annotations

import math

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
        values = [float(v) for v in x[idx]]
        mean = math.fsum(values) / d
        var = math.fsum((v - mean) ** 2 for v in values) / d
        for i, v in enumerate(values):
            out[idx + (i,)] = (v - mean) / math.sqrt(var + eps) * float(gamma[i]) + float(beta[i])
    return out


def rms_norm(x, gamma, eps=1e-6):
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    d = x.shape[-1]
    for idx in _tokens(x):
        values = [float(v) for v in x[idx]]
        rms = math.sqrt(math.fsum(v * v for v in values) / d + eps)
        for i, v in enumerate(values):
            out[idx + (i,)] = v / rms * float(gamma[i])
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
        norms = [math.sqrt(math.fsum(float(v) ** 2 for v in state[idx])) for idx in _tokens(state)]
        means.append(math.fsum(norms) / len(norms))
    return torch.tensor(means, dtype=x.dtype)
