"""Chapter 06: uncatalogued wrong answers."""

from __future__ import annotations

import math

import torch

from . import Wrong

TOPIC = "positions"


def _table(T, d_model, offset=0, *, base=10000.0, power=lambda i, d: 2 * i / d, divide=True, dtype=torch.float32):
    p = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    i = torch.arange(d_model // 2, dtype=torch.float64)[None, :]
    freq = base ** (-power(i, d_model))
    angle = p * freq if divide else p / freq
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2).to(dtype)


def _add(*, scale=1.0, sign=1.0, keep_x=True):
    def add_positions(x, attn, offset=0):
        pe = _table(x.shape[1], x.shape[2], offset).to(x.dtype)
        return attn((x if keep_x else torch.zeros_like(x)) + sign * scale * pe)
    return add_positions


def _rope(*, base=10000.0, rotary=1.0, positions=lambda T, offset: torch.arange(offset, offset + T)):
    def apply_rope(x, offset=0):
        T, d = x.shape[-2], x.shape[-1]
        r = int(d * rotary) // 2 * 2
        p = positions(T, offset).double()[:, None]
        theta = base ** (-2 * torch.arange(r // 2, dtype=torch.float64) / d)
        ang = torch.cat([p * theta, p * theta], dim=-1)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        xr, rest = x[..., :r], x[..., r:]
        half = torch.cat([-xr[..., r // 2:], xr[..., :r // 2]], dim=-1)
        return torch.cat([xr * cos + half * sin, rest], dim=-1)
    return apply_rope


def _rope_half(x, offset=0):
    return _rope()(x, offset)


def _rope_attention(*, scale=True, mask="right", k_start="zero", interleaved=False):
    def rope_attention(q, k, v):
        T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        start = T_k - T_q
        if interleaved:
            def rot(x, off):
                p = torch.arange(off, off + x.shape[-2], dtype=torch.float64)[:, None]
                a = p * 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
                c, s = a.cos().to(x.dtype), a.sin().to(x.dtype)
                x1, x2 = x[..., 0::2], x[..., 1::2]
                return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)
        else:
            rot = _rope_half
        rq, rk = rot(q, start), rot(k, start if k_start == "same" else 0)
        s = rq @ rk.transpose(-2, -1) / (math.sqrt(d) if scale else 1.0)
        if mask == "right":
            s = s.masked_fill(~torch.ones(T_q, T_k, dtype=torch.bool).tril(start), float("-inf"))
        w = torch.softmax(s, dim=-1)
        return w @ v, w
    return rope_attention


def _alibi(*, slopes="right", distance="abs"):
    def alibi_bias(n_heads, T):
        if slopes == "from_one":
            m = torch.tensor([2.0 ** (-8.0 * h / n_heads) for h in range(n_heads)])
        else:
            n = 2 ** math.floor(math.log2(n_heads))
            base = [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
            extra = [2.0 ** (-4.0 * (2 * h + 1) / n) for h in range(n_heads - n)]
            m = torch.tensor(base + extra)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        dist = {"abs": (i - j).abs(), "causal_only": (i - j).clamp(min=0)}[distance].float()
        return -m[:, None, None] * dist
    return alibi_bias


WRONG = [
    Wrong("sinusoidal_table", "base_1000", lambda T, d, offset=0: _table(T, d, offset, base=1000.0), r"base|10000"),
    Wrong("sinusoidal_table", "exponent_4i_over_d",
          lambda T, d, offset=0: _table(T, d, offset, power=lambda i, d_: 4 * i / d_), r"exponent|frequenc"),
    Wrong("sinusoidal_table", "multiplies_by_wavelength",
          lambda T, d, offset=0: _table(T, d, offset, divide=False), r"frequenc|divide|10000\^"),
    Wrong("add_positions", "scaled_by_sqrt_d", lambda x, attn, offset=0: _add(scale=math.sqrt(x.shape[2]))(x, attn, offset),
          r"sqrt|scale"),
    Wrong("add_positions", "subtracted", _add(sign=-1.0), r"subtract|sign"),
    Wrong("add_positions", "x_dropped", _add(keep_x=False), r"\bx\b|input"),
    Wrong("apply_rope", "base_1000", _rope(base=1000.0), r"base|frequenc"),
    # rotate-half inside the first half of the channels, with frequencies of the full width: neither
    # GPT-NeoX's partial rotary nor a rotation of this chapter's pairs
    Wrong("apply_rope", "partial_rotary", _rope(rotary=0.5), r"half of the|every pair|channels", named=False),
    Wrong("apply_rope", "positions_reversed", _rope(positions=lambda T, o: torch.arange(o + T - 1, o - 1, -1)),
          r"position"),
    Wrong("rope_attention", "no_scale", _rope_attention(scale=False), r"sqrt\(d_head\)|scale"),
    Wrong("rope_attention", "no_mask", _rope_attention(mask="none"), r"causal|mask"),
    Wrong("rope_attention", "k_at_query_offset", _rope_attention(k_start="same"), r"k.*position|keys"),
    Wrong("rope_attention", "interleaved_pairs", _rope_attention(interleaved=True), r"interleaved|layout|pairs"),
    Wrong("alibi_bias", "slopes_from_one", _alibi(slopes="from_one"), r"slope"),
    Wrong("alibi_bias", "causal_only_distance", _alibi(distance="causal_only"), r"\|i - j\||after|above"),
]

# Written after the probes, without looking at them again: how the probing does on mistakes it was
# not built from. `named` records what happens today.


def _table_linspace(T, d_model, offset=0):
    p = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.linspace(0, 1, d_model // 2, dtype=torch.float64))
    return torch.stack([(p * freq).sin(), (p * freq).cos()], dim=-1).flatten(-2).float()


def _rope_channel_index(x, offset=0):
    T, d = x.shape[-2], x.shape[-1]
    p = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) * 2 / d)  # the channel index 2k used as k
    ang = torch.cat([p * theta, p * theta], dim=-1)
    rot = torch.cat([-x[..., d // 2:], x[..., :d // 2]], dim=-1)
    return x * ang.cos().to(x.dtype) + rot * ang.sin().to(x.dtype)


def _alibi_j_minus_i(n_heads, T):
    m = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return -m[:, None, None] * (j - i).float()


HELD_OUT = [
    Wrong("sinusoidal_table", "linspace_exponents", _table_linspace, r"base|exponent|frequenc"),
    Wrong("apply_rope", "channel_index_as_pair", _rope_channel_index, r"base|exponent|frequenc"),
    Wrong("alibi_bias", "j_minus_i", _alibi_j_minus_i, r"\|i - j\||sign|abs", named=False),
]
