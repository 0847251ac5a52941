"""Chapter 06: where a token stands. Learned and sinusoidal absolute positions, T5's relative
buckets, ALiBi and RoPE, each usable at any position offset.

Attention without positions is permutation-equivariant (chapter 00): shuffle the tokens and the
outputs shuffle the same way. Each method below breaks that symmetry in its own place:

    learned      h = wte[ids] + P[p]                 a trained table P (T_max, d_model): GPT-2, BERT
    sinusoidal   h = wte[ids] + PE(p)                a fixed table, the 2017 Transformer
                 PE(p, 2i) = sin(p w_i), PE(p, 2i+1) = cos(p w_i), w_i = base^(-2i/d)
    relative     S_ij += b_h[bucket(j - i)]          a learned bias per head and distance bucket: T5
    alibi        S_ij += -m_h |i - j|                a fixed slope per head: BLOOM, MPT
    rope         q_i <- R(i) q_i, k_j <- R(j) k_j    rotate pairs of channels by p * theta_k:
                 theta_k = base^(-2k/d_head)         Llama, GPT-NeoX, GPT-J, Mistral, Qwen

(S_ij is the scaled score of query i and key j.) The two absolute methods add a vector to the
input; the two bias methods add a (H, T_q, T_k) bias to the scores; RoPE rotates q and k (never v)
between the projection and the scores.

**Offsets.** Every function takes the absolute positions it works at, as an `offset` (positions
offset .. offset + T - 1) or as explicit integer positions. A KV cache (chapter 07) processes one
new token at position t: sinusoidal_table(1, d, offset=t), apply_rope(q, offset=t) and a bias for
query position t against key positions 0..t give exactly the numbers a full forward pass computes
for that token.

**RoPE's two pair layouts.** Both rotate d_head / 2 pairs of channels, pair k by the angle
p * theta_k; they differ in which channels form pair k:

    "half"         channels (k, k + d/2)   rotate_half: HF Llama/Mistral/Qwen, GPT-NeoX
    "interleaved"  channels (2k, 2k + 1)   GPT-J, Meta's original Llama (complex multiplication)

They give the same scores after a fixed permutation of the q/k channels (rope_permutation), which
is how checkpoints are converted between the two code bases; mixing them up without the
permutation silently gives a different model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .shapes import ShapeError, fmt_shape, require_float, require_positive_int, require_tensor

__all__ = [
    "ALiBi",
    "PAIR_LAYOUTS",
    "RelativePositionBias",
    "ROPE_SCALINGS",
    "RotaryEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "learned_positions",
    "position_ids",
    "relative_position_bucket",
    "rope_angles",
    "rope_frequencies",
    "rope_permutation",
    "rope_scaled_frequencies",
    "rope_wavelength",
    "sinusoidal_shift",
    "sinusoidal_table",
]

PAIR_LAYOUTS = ("half", "interleaved")


# ---------------------------------------------------------------------------------------------
# Validation and positions
# ---------------------------------------------------------------------------------------------


def _require_offset(fn: str, offset: object) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"{fn}: offset (the position of the first token) must be an int >= 0; got {offset!r}")
    return offset


def _require_even(fn: str, name: str, d: object) -> int:
    require_positive_int(fn, name, d)
    if d % 2:
        raise ShapeError(f"{fn}: {name} = {d} must be even: the channels come in {d // 2} pairs plus one left over")
    return d


def _require_base(fn: str, base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ValueError(f"{fn}: base must be a number > 1 (10000 in the papers); got {base!r}")
    return float(base)


def _require_positions(fn: str, name: str, positions: object) -> torch.Tensor:
    require_tensor(fn, name, positions)
    if positions.dim() != 1 or positions.is_floating_point() or positions.dtype == torch.bool:
        raise ShapeError(f"{fn}: {name} must be a 1-D integer tensor of positions (T,); got "
                         f"{fmt_shape(positions.shape)} of dtype {positions.dtype}")
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"{fn}: {name} must be >= 0; got a minimum of {int(positions.min())}")
    return positions


def position_ids(T: int, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(T,) int64: offset, offset + 1, ..., offset + T - 1, the positions of T consecutive tokens."""
    require_positive_int("position_ids", "T", T)
    _require_offset("position_ids", offset)
    return torch.arange(offset, offset + T, device=device)  # (T,)


def _resolve(fn: str, T: int | None, offset: int, positions: torch.Tensor | None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Explicit positions, or T positions starting at offset."""
    if positions is not None:
        return _require_positions(fn, "positions", positions)
    require_positive_int(fn, "T", T)
    _require_offset(fn, offset)
    return torch.arange(offset, offset + T, device=device)  # (T,)


# ---------------------------------------------------------------------------------------------
# Absolute positions: a learned table, or the sinusoidal one
# ---------------------------------------------------------------------------------------------


def learned_positions(table: torch.Tensor, T: int, offset: int = 0) -> torch.Tensor:
    """Rows offset .. offset + T - 1 of a learned table (T_max, d_model) -> (T, d_model).

    A learned table has exactly T_max rows, one per position seen in training: position T_max has
    no row, so a model with learned positions cannot run on longer sequences at all.
    """
    fn = "learned_positions"
    require_float(fn, "table", table, "(T_max, d_model)")
    require_positive_int(fn, "T", T)
    _require_offset(fn, offset)
    T_max = table.shape[0]
    if offset + T > T_max:
        raise ShapeError(
            f"{fn}: positions {offset}..{offset + T - 1} are needed but the learned table "
            f"{fmt_shape(table.shape)} = (T_max, d_model) has rows for positions 0..{T_max - 1} only; "
            f"learned positions cannot run past the length they were trained for (use sinusoidal, "
            f"rope, alibi or relative positions, or a shorter sequence)")
    return table[offset:offset + T]  # (T, d_model)


def _frequencies(d: int, base: float) -> torch.Tensor:
    """(d / 2,) float64: w_i = base^(-2i/d), from 1 (fast, i = 0) down to about 1/base (slow)."""
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)


def sinusoidal_table(T: int | None, d_model: int, *, offset: int = 0, base: float = 10000.0,
                     positions: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The 2017 Transformer's position table for positions offset .. offset + T - 1 (or `positions`).

        PE(p, 2i)     = sin(p * w_i)          w_i = base^(-2i / d_model),  i = 0 .. d_model/2 - 1
        PE(p, 2i + 1) = cos(p * w_i)

    -> (T, d_model) in `dtype`. The angles p * w_i are computed in float64 and rounded once at the
    end: in float32, p * w_i for p in the thousands has lost the digits that sin needs.
    """
    fn = "sinusoidal_table"
    _require_even(fn, "d_model", d_model)
    base = _require_base(fn, base)
    pos = _resolve(fn, T, offset, positions, device)  # (T,)
    angles = pos.to(torch.float64)[:, None] * _frequencies(d_model, base).to(pos.device)[None, :]  # (T, d/2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, d/2, 2): sin, cos of each pair
    return table.flatten(-2).to(dtype)  # (T, d_model): columns sin_0, cos_0, sin_1, cos_1, ...


def sinusoidal_shift(k: int, d_model: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float64
                     ) -> torch.Tensor:
    """The fixed linear map M_k with PE(p + k) = PE(p) @ M_k for every position p: (d_model, d_model).

    Block diagonal, one 2 x 2 rotation per pair (sin(a + b) = sin a cos b + cos a sin b, cos(a + b) =
    cos a cos b - sin a sin b with b = k * w_i). It depends on the shift k, never on p: the reason
    the 2017 paper gives for choosing sinusoids ("attend by relative positions").
    """
    fn = "sinusoidal_shift"
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{fn}: k (the shift in positions) must be an int; got {k!r}")
    _require_even(fn, "d_model", d_model)
    b = k * _frequencies(d_model, _require_base(fn, base))  # (d/2,)
    M = torch.zeros(d_model, d_model, dtype=torch.float64)
    M[0::2, 0::2] = torch.diag(b.cos())  # sin' gets sin * cos b
    M[1::2, 0::2] = torch.diag(b.sin())  # sin' gets cos * sin b
    M[0::2, 1::2] = torch.diag(-b.sin())  # cos' gets -sin * sin b
    M[1::2, 1::2] = torch.diag(b.cos())  # cos' gets cos * cos b
    return M.to(dtype)  # (d_model, d_model)


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------


def _require_layout(fn: str, pairs: object) -> str:
    if pairs not in PAIR_LAYOUTS:
        raise ValueError(f"{fn}: pairs must be 'half' (channels k, k + d/2: HF Llama, GPT-NeoX) or "
                         f"'interleaved' (channels 2k, 2k + 1: GPT-J, Meta's Llama); got {pairs!r}")
    return pairs


def rope_frequencies(d_head: int, base: float = 10000.0) -> torch.Tensor:
    """(d_head / 2,) float64: theta_k = base^(-2k / d_head), the angle pair k turns per position."""
    fn = "rope_frequencies"
    return _frequencies(_require_even(fn, "d_head", d_head), _require_base(fn, base))


def rope_wavelength(k: int, d_head: int, base: float = 10000.0) -> float:
    """Positions pair k needs for one full turn: 2 pi / theta_k = 2 pi base^(2k / d_head)."""
    fn = "rope_wavelength"
    _require_even(fn, "d_head", d_head)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < d_head // 2:
        raise ValueError(f"{fn}: k must be a pair index in 0..{d_head // 2 - 1}; got {k!r}")
    return 2 * math.pi * _require_base(fn, base) ** (2 * k / d_head)


def _require_scale(fn: str, scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"{fn}: scale (positions are read as p / scale) must be a finite number > 0 "
                         f"(1: plain RoPE); got {scale!r}")
    return float(scale)


def rope_angles(T: int | None, d_head: int, *, offset: int = 0, base: float = 10000.0,
                positions: torch.Tensor | None = None, device: torch.device | str | None = None,
                scale: float = 1.0) -> torch.Tensor:
    """(T, d_head / 2) float64: the angle (p / scale) * theta_k of pair k at each position p.

    scale > 1 is position interpolation (Chen et al. 2023; HF's rope_scaling "linear" factor):
    a model trained at L and run at T = scale * L sees positions 0 .. T - 1 squeezed into the
    angles of 0 .. L - 1, never an angle larger than in training.
    """
    fn = "rope_angles"
    theta = _frequencies(_require_even(fn, "d_head", d_head), _require_base(fn, base))  # (d/2,)
    scale = _require_scale(fn, scale)
    pos = _resolve(fn, T, offset, positions, device)  # (T,)
    return (pos.to(torch.float64) / scale)[:, None] * theta.to(pos.device)[None, :]  # (T, d/2)


def apply_rope(x: torch.Tensor, offset: int = 0, *, base: float = 10000.0, pairs: str = "half",
               positions: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Rotate each channel pair of x (..., T, d_head) by p * theta_k, p = offset + t (or positions[t]).
    scale: positions read as p / scale (position interpolation, rope_angles); 1 = plain RoPE.

    pairs="half": pair k is channels (k, k + d/2), i.e. x * cos + rotate_half(x) * sin with
    rotate_half(x) = cat(-x2, x1) (HF Llama). pairs="interleaved": pair k is channels (2k, 2k + 1)
    (GPT-J, Meta's Llama). A pair (a, b) becomes (a cos - b sin, a sin + b cos). Same shape and dtype
    as x; cos and sin are computed in float64, then rounded to x's dtype.
    """
    fn = "apply_rope"
    require_float(fn, "x", x, "(..., T, d_head)")
    _require_layout(fn, pairs)
    T, d_head = x.shape[-2], x.shape[-1]
    _require_even(fn, "d_head", d_head)
    if positions is not None and _require_positions(fn, "positions", positions).shape[0] != T:
        raise ShapeError(f"{fn}: positions {fmt_shape(positions.shape)} must give one position per token of "
                         f"x {fmt_shape(x.shape)} = (..., T, d_head), T = {T}")
    if T == 0:
        return x.clone()
    angles = rope_angles(T, d_head, offset=offset, base=base, positions=positions, device=x.device,
                         scale=scale)  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (T, d/2) each
    if pairs == "half":
        a, b = x[..., : d_head // 2], x[..., d_head // 2:]  # (..., T, d/2) each: pair k = (k, k + d/2)
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (..., T, d_head)
    a, b = x[..., 0::2], x[..., 1::2]  # (..., T, d/2) each: pair k = (2k, 2k + 1)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)  # (..., T, d_head)


def rope_permutation(d_head: int) -> torch.Tensor:
    """(d_head,) int64 perm: x_half[..., perm] is x in the interleaved layout.

    Interleaved channel 2k is half-layout channel k and 2k + 1 is k + d/2, so
    apply_rope(x[..., perm], pairs="interleaved") == apply_rope(x, pairs="half")[..., perm].
    Applied to the rows of W_Q and W_K (per head), it converts a checkpoint between the layouts.
    """
    half = _require_even("rope_permutation", "d_head", d_head) // 2
    return torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).flatten()  # (d_head,)


class RotaryEmbedding(nn.Module):
    """RoPE as a layer with no parameters: rope(x, offset) rotates x (..., T, d_head).
    scale: positions read as p / scale (position interpolation); 1 = plain RoPE."""

    def __init__(self, d_head: int, base: float = 10000.0, pairs: str = "half", scale: float = 1.0) -> None:
        super().__init__()
        self.d_head = _require_even("RotaryEmbedding", "d_head", d_head)
        self.base = _require_base("RotaryEmbedding", base)
        self.pairs = _require_layout("RotaryEmbedding", pairs)
        self.scale = _require_scale("RotaryEmbedding", scale)

    def forward(self, x: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() >= 1 and x.shape[-1] != self.d_head:
            raise ShapeError(f"RotaryEmbedding: x must be (..., T, d_head) with d_head = {self.d_head}; "
                             f"got {fmt_shape(x.shape)}")
        return apply_rope(x, offset, base=self.base, pairs=self.pairs, positions=positions, scale=self.scale)

    def extra_repr(self) -> str:
        return f"d_head={self.d_head}, base={self.base:g}, pairs={self.pairs!r}, scale={self.scale:g}"


# ---------------------------------------------------------------------------------------------
# Biases on the scores: ALiBi and T5's relative buckets
# ---------------------------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(H,) float64: the ALiBi paper's head slopes m_h.

    For H a power of two, a geometric sequence starting at and with ratio 2^(-8/H): 8 heads get
    1/2, 1/4, ..., 1/256. Otherwise, with P the largest power of two below H: the P slopes of P heads,
    then every other slope of 2P heads (the odd-numbered ones), until there are H (Press et al. 2022,
    and their reference code).
    """
    require_positive_int("alibi_slopes", "n_heads", n_heads)

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    P = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two(P) + power_of_two(2 * P)[0::2][: n_heads - P]
    return torch.tensor(slopes, dtype=torch.float64)  # (H,)


def _distance(fn: str, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    _require_positions(fn, "q_positions", q_positions)
    _require_positions(fn, "k_positions", k_positions)
    return k_positions[None, :] - q_positions[:, None]  # (T_q, T_k): j - i, negative for past keys


def alibi_bias(slopes: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor, *,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ALiBi's score bias -m_h |i - j| for query position i and key position j: (H, T_q, T_k).

    Each head h penalises distant keys linearly, with its own slope m_h (alibi_slopes). In a causal
    decoder only keys j <= i are seen, so this is the paper's -m_h (i - j). Adding a constant to a
    row of scores changes no softmax, so implementations that add m_h * j instead (BLOOM) give the
    same weights.
    """
    fn = "alibi_bias"
    require_tensor(fn, "slopes", slopes)
    if slopes.dim() != 1 or not slopes.is_floating_point():
        raise ShapeError(f"{fn}: slopes must be a 1-D float tensor (H,), one slope per head; got "
                         f"{fmt_shape(slopes.shape)} of dtype {slopes.dtype}")
    distance = _distance(fn, q_positions, k_positions).abs().to(torch.float64)  # (T_q, T_k)
    return (-slopes.to(torch.float64, copy=False).to(distance.device)[:, None, None] * distance).to(dtype)  # (H, T_q, T_k)


def relative_position_bucket(relative_position: torch.Tensor, *, bidirectional: bool = False,
                             num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bucket of each relative position j - i (key minus query): int64, same shape.

    Unidirectional (a decoder): only the past counts, n = max(i - j, 0). Bidirectional (an encoder):
    half the buckets for keys before the query, half for keys after it, n = |i - j|. Of the buckets
    for one direction, the first half are exact (n = 0, 1, ..., nb/2 - 1); the rest cover
    nb/2 .. max_distance on a log scale; every distance beyond max_distance shares the last bucket.
    """
    fn = "relative_position_bucket"
    require_tensor(fn, "relative_position", relative_position)
    if relative_position.is_floating_point() or relative_position.dtype == torch.bool:
        raise TypeError(f"{fn}: relative_position must be an integer tensor; got {relative_position.dtype}")
    if not isinstance(bidirectional, bool):
        raise TypeError(f"{fn}: bidirectional must be True or False; got {bidirectional!r}")
    require_positive_int(fn, "num_buckets", num_buckets)
    require_positive_int(fn, "max_distance", max_distance)
    n = -relative_position.long()  # i - j: positive for keys in the past
    bucket = torch.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).long() * num_buckets  # keys after the query: the upper half
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(f"{fn}: need num_buckets per direction >= 2 and max_distance > num_buckets / 2; "
                         f"got {num_buckets} buckets and max_distance = {max_distance}")
    log_ratio = torch.log(n.clamp(min=1).to(torch.float64) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()  # log-spaced beyond max_exact
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)  # same shape, int64


class RelativePositionBias(nn.Module):
    """T5's relative position bias: a learned number per (bucket, head), added to the scores.

    forward(q_positions (T_q,), k_positions (T_k,)) -> (H, T_q, T_k). T5 computes it once and shares
    it across the layers of a stack: num_buckets * n_heads parameters in all.
    """

    def __init__(self, n_heads: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = False) -> None:
        super().__init__()
        self.n_heads = require_positive_int("RelativePositionBias", "n_heads", n_heads)
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        relative_position_bucket(torch.zeros(1, dtype=torch.long), bidirectional=bidirectional,
                                 num_buckets=num_buckets, max_distance=max_distance)  # validates the sizes
        self.bias = nn.Embedding(num_buckets, n_heads)  # weight (num_buckets, H)

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        relative = _distance("RelativePositionBias", q_positions, k_positions)  # (T_q, T_k): j - i
        buckets = relative_position_bucket(relative, bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.bias(buckets).permute(2, 0, 1)  # (T_q, T_k, H) -> (H, T_q, T_k)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
                f"bidirectional={self.bidirectional}")


class ALiBi(nn.Module):
    """ALiBi as a layer with no parameters: forward(q_positions, k_positions) -> (H, T_q, T_k)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = require_positive_int("ALiBi", "n_heads", n_heads)
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)  # (H,) float64

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return alibi_bias(self.slopes, q_positions, k_positions, dtype=dtype)  # (H, T_q, T_k)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}"


# ---------------------------------------------------------------------------------------------
# Context extension: how each published method changes RoPE's frequencies
# ---------------------------------------------------------------------------------------------

ROPE_SCALINGS = ("none", "pi", "ntk", "yarn", "llama3")


def rope_scaled_frequencies(d_head: int, base: float = 10000.0, *, method: str = "none", factor: float = 1.0,
                            original_len: int = 4096, alpha: float = 1.0, beta: float = 32.0,
                            low_freq_factor: float = 1.0, high_freq_factor: float = 4.0) -> torch.Tensor:
    """(d_head / 2,) float64: the angle per position theta'_k of pair k after a context extension by `factor`.

        none     theta_k = base^(-2k / d)                                   plain RoPE
        pi       theta_k / s                                                 position interpolation (Chen et al. 2023)
        ntk      (base * s^(d / (d - 2)))^(-2k / d)                          "NTK-aware" base scaling (bloc97, 2023)
        yarn     (1 - g(r_k)) theta_k / s + g(r_k) theta_k,  r_k = L / lambda_k,
                 g = 0 below alpha, 1 above beta, linear between             YaRN's "NTK-by-parts" (Peng et al. 2023)
        llama3   the same ramp in wavelengths: lambda_k < L / high_freq_factor kept, lambda_k > L / low_freq_factor
                 divided by s, a linear blend between                         Llama 3.1's rope_scaling

    s = factor, L = original_len (the trained context), lambda_k = 2 pi / theta_k (positions per turn).
    PI slows every pair by s; NTK-aware raises the base so the slowest pair is slowed by exactly s and
    the fastest not at all; YaRN and Llama 3.1 keep pairs that turn many times within L and interpolate
    only those that turn less than once. (YaRN also scales the logits by 1/t, sqrt(1/t) = 0.1 ln s + 1.)
    """
    fn = "rope_scaled_frequencies"
    theta = rope_frequencies(d_head, base)  # (d/2,)
    if method not in ROPE_SCALINGS:
        raise ValueError(f"{fn}: method must be one of {ROPE_SCALINGS}; got {method!r}")
    s = _require_scale(fn, factor)
    require_positive_int(fn, "original_len", original_len)
    if method == "none":
        return theta
    if method == "pi":
        return theta / s
    if method == "ntk":
        return rope_frequencies(d_head, base * s ** (d_head / (d_head - 2)))
    wavelength = 2 * math.pi / theta  # (d/2,): positions per turn
    if method == "yarn":
        if not 0 <= alpha < beta:
            raise ValueError(f"{fn}: need 0 <= alpha < beta; got alpha={alpha!r}, beta={beta!r}")
        ramp = ((original_len / wavelength - alpha) / (beta - alpha)).clamp(0, 1)  # (d/2,): 1 = keep the pair
    else:
        if not 0 < low_freq_factor < high_freq_factor:
            raise ValueError(f"{fn}: need 0 < low_freq_factor < high_freq_factor; got {low_freq_factor!r}, "
                             f"{high_freq_factor!r}")
        ramp = ((original_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - ramp) * theta / s + ramp * theta  # (d/2,)
