"""Chapter 09 written the slow, obvious way: one position, one query, one token at a time (the spec).

The checks must accept these: correct answers written without the reference's vectorized tricks.
"""

from __future__ import annotations

import math

import torch


def future_leaks(f, ids, vocab_size):
    """For every j and every i < j: did output i move (beyond a tolerance) when token j changed?"""
    B, T = ids.shape
    base = f(ids)
    leaks = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        changed = ids.clone()
        for b in range(B):
            changed[b, j] = (int(ids[b, j]) + 1) % vocab_size
        out = f(changed)
        scale = float(base.abs().max())
        for i in range(j):
            leaks[i, j] = not torch.allclose(out[:, i], base[:, i], rtol=1e-5, atol=1e-5 * scale)
    return leaks


def attention_entropy(weights):
    """-sum_k p ln p for every row, with 0 ln 0 = 0, one number at a time."""
    flat = weights.reshape(-1, weights.shape[-1])
    out = torch.zeros(flat.shape[0], dtype=weights.dtype, device=weights.device)
    for r in range(flat.shape[0]):
        total = torch.zeros((), dtype=weights.dtype, device=weights.device)
        for c in range(flat.shape[1]):
            p = flat[r, c]
            if p > 0:
                total = total - p * torch.log(p)
        out[r] = total
    return out.reshape(weights.shape[:-1])


def update_ratios(stream):
    """For each block: the mean over tokens of ||x_{l+1} - x_l|| / ||x_l||."""
    L1, B, T, _ = stream.shape
    ratios = torch.zeros(L1 - 1, dtype=stream.dtype, device=stream.device)
    for layer in range(L1 - 1):
        total = 0
        for b in range(B):
            for t in range(T):
                before, after = stream[layer, b, t], stream[layer + 1, b, t]
                total = total + (torch.sqrt(((after - before) ** 2).sum()) / torch.sqrt((before ** 2).sum()))
        ratios[layer] = total / (B * T)
    return ratios


def ablation_verdicts(losses, z=2.0):
    """One config and one seed at a time, in Python floats: the means, the pooled sample variance, the verdicts."""
    C, S = losses.shape
    means = [sum(float(losses[c, s]) for s in range(S)) / S for c in range(C)]
    variances = [sum((float(losses[c, s]) - means[c]) ** 2 for s in range(S)) / (S - 1) for c in range(C)]
    se = math.sqrt(sum(variances) / C) * math.sqrt(2 / S)
    verdicts = ["baseline"]
    for c in range(1, C):
        change = means[c] - means[0]
        verdicts.append("worse" if change > z * se else "better" if change < -z * se else "within noise")
    delta = torch.tensor([m - means[0] for m in means], dtype=losses.dtype, device=losses.device)
    return {"delta": delta, "se": se, "verdicts": verdicts}
