"""Chapter 06 written the slow, obvious way: one number at a time with `math` (the spec).

The checks must accept these: they are correct answers written without the reference's
vectorised tricks. Attention itself comes from chapter 01's loop version.
"""

from __future__ import annotations

import math

import torch

from .loops_attention import scaled_dot_product_attention as loop_attention


def sinusoidal_table(T, d_model, offset=0):
    rows = []
    for t in range(T):
        p = offset + t
        row = []
        for c in range(d_model):
            i = c // 2
            angle = p / 10000 ** (2 * i / d_model)
            row.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def add_positions(x, attn, offset=0):
    T, d_model = x.shape[1], x.shape[2]
    return attn(x + sinusoidal_table(T, d_model, offset).to(x.dtype))


def apply_rope(x, offset=0):
    """Rotate-half pairs (c, c + d/2), one pair and one position at a time."""
    d = x.shape[-1]
    out = x.clone()
    for t in range(x.shape[-2]):
        for c in range(d // 2):
            angle = (offset + t) * 10000 ** (-2 * c / d)
            a, b = x[..., t, c], x[..., t, c + d // 2]
            out[..., t, c] = a * math.cos(angle) - b * math.sin(angle)
            out[..., t, c + d // 2] = a * math.sin(angle) + b * math.cos(angle)
    return out


def rope_attention(q, k, v):
    T_q, T_k = q.shape[-2], k.shape[-2]
    start = T_k - T_q
    mask = torch.tensor([[j <= start + i for j in range(T_k)] for i in range(T_q)], device=q.device)
    rq, rk = apply_rope(q, start), apply_rope(k, 0)
    B, H = q.shape[:2]
    out = torch.empty_like(q)
    weights = torch.empty(B, H, T_q, T_k, dtype=q.dtype, device=q.device)
    for b in range(B):
        for h in range(H):
            out[b, h], weights[b, h] = loop_attention(rq[b, h], rk[b, h], v[b, h], mask)
    return out, weights


def relative_offset_holds(rope, d_head):
    """Scores at the same offset m - n, at three absolute positions each, must agree."""
    g = torch.Generator().manual_seed(123)
    q = torch.randn(1, d_head, generator=g, dtype=torch.float64)
    k = torch.randn(1, d_head, generator=g, dtype=torch.float64)
    for delta in (0, 1, 4, -3):
        scores = [float((rope(q, n + delta) * rope(k, n)).sum()) for n in (3, 11, 40)]
        if any(not math.isclose(s, scores[0], rel_tol=1e-9, abs_tol=1e-9) for s in scores):
            return False
    return True


def _paper_slopes(n):
    """The ALiBi authors' get_slopes, written recursively as in their repository."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _paper_slopes(2 * closest)[0::2][: n - closest]


def alibi_bias(n_heads, T):
    slopes = _paper_slopes(n_heads)
    return torch.tensor([[[-slopes[h] * abs(i - j) for j in range(T)] for i in range(T)] for h in range(n_heads)],
                        dtype=torch.float32)
