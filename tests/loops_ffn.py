"""Chapter 03's answers written independently of helpers.ffn: loops, math's erf and tanh, einsum.

The checks must accept these: they are correct answers written by someone other than the reference.
"""

from __future__ import annotations

import math

import torch


def _elementwise(x, f):
    """f on every entry (a 0-d tensor), stacked back: autograd follows each one."""
    flat = [f(v) for v in x.reshape(-1)]
    return (torch.stack(flat) if flat else x.reshape(-1)).reshape(x.shape)


def gelu(x, approximate="none"):
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        return _elementwise(x, lambda v: 0.5 * v * (1 + torch.tanh(c * (v + 0.044715 * v**3))))
    return _elementwise(x, lambda v: v * 0.5 * torch.erfc(-v / math.sqrt(2)))


def feed_forward(x, w1, b1, w2, b2):
    out = torch.empty(*x.shape[:-1], w2.shape[0], dtype=x.dtype, device=x.device)
    flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, w2.shape[0])
    for t in range(flat_x.shape[0]):
        hidden = torch.einsum("fd,d->f", w1, flat_x[t]) + b1  # (d_ff,)
        flat_out[t] = torch.einsum("df,f->d", w2, gelu(hidden)) + b2
    return out


def swiglu_ffn(x, w_gate, w_up, w_down):
    gate = torch.einsum("...d,fd->...f", x, w_gate)
    up = torch.einsum("...d,fd->...f", x, w_up)
    return torch.einsum("...f,df->...d", gate / (1 + torch.exp(-gate)) * up, w_down)


def is_token_independent(fn, x):
    base = fn(x)
    T = x.shape[1]
    for j in range(T):
        moved = x.clone()
        moved[:, j] = moved[:, j] + torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)
        out = fn(moved)
        others = [i for i in range(T) if i != j]
        if not torch.allclose(out[:, others], base[:, others]):
            return False
    return True


def top_k_route(router_logits, k):
    n = router_logits.shape[-1]
    flat = router_logits.reshape(-1, n)
    weights = torch.empty(flat.shape[0], k, dtype=router_logits.dtype, device=router_logits.device)
    indices = torch.empty(flat.shape[0], k, dtype=torch.long, device=router_logits.device)
    for t, row in enumerate(flat.tolist()):
        chosen = sorted(range(n), key=lambda e: row[e], reverse=True)[:k]
        exps = [torch.exp(flat[t, e] - flat[t, chosen[0]]) for e in chosen]  # tensors: autograd follows them
        weights[t] = torch.stack([v / sum(exps) for v in exps])
        indices[t] = torch.tensor(chosen, device=router_logits.device)
    return weights.reshape(*router_logits.shape[:-1], k), indices.reshape(*router_logits.shape[:-1], k)


def moe_forward(x, router_weight, experts, k):
    flat = x.reshape(-1, x.shape[-1])
    weights, indices = top_k_route(flat @ router_weight.T, k)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for w, e in zip(weights[t], indices[t].tolist()):
            out[t] += w * experts[e](flat[t : t + 1])[0]
    return out.reshape(x.shape)
