"""Checks for chapter 06 (sinusoidal positions, RoPE, ALiBi, and a RoPE property test) and their
catalogue of known mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes, sizes and
offsets: the visible tests use the defaults, the hidden tests use others.

What the checks hand to the learner's code is never a function of this file (a call into the
checks' own code is refused): exercise 2's attention is torch's nn.TransformerEncoderLayer, and
exercise 5's RoPE candidates are compiled from the source text `_ROPE_SOURCE` below under a name of
their own.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import warnings
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import positions as ref
from ..attention import scaled_dot_product_attention
from . import probes as _probes
from .conventions import rank_aware_mask_advice
from .core import (
    Case,
    CheckFailed,
    Mistake,
    call_learner,
    check_function,
    check_numbers,
    protect,
    verify_environment,
)
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "check_add_positions",
    "check_alibi_bias",
    "check_apply_rope",
    "check_relative_offset_test",
    "check_rope_attention",
    "check_rope_numbers",
]


# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The learner writes these themselves: an answer that is or calls one of them is refused. No torch
# built-in computes positions, so only the reference module matters; exercises 2 and 4 build on
# exercise 1's table and exercise 3's rotation, and their checks refuse nothing. Exercise 7 asks for
# numbers.
FORBIDDEN = {
    "ex1": (ref,),
    "ex2": (),
    "ex3": (ref,),
    "ex4": (),
    "ex5": (ref,),
    "ex6": (ref,),
    "ex7": (),
}
# Exercise 2 may take the table from helpers.positions, exercise 4 the rotation.
ALLOWED_REFERENCE_BY_EXERCISE = {"ex2": ("sinusoidal_table",), "ex4": ("apply_rope",)}


# ---------------------------------------------------------------------------------------------
# Shared: the sinusoidal table and RoPE with mistakes built in (exercises 1 to 4)
# ---------------------------------------------------------------------------------------------


def _table(T, d_model, offset=0, *, order="sin_cos", exponent="pair", layout="interleaved", shift=0,
           use_offset=True, angles=torch.float64):
    """A sinusoidal table with mistakes built in (float64 angles unless `angles` says otherwise, float32 result)."""
    start = (offset if use_offset else 0) + shift
    p = torch.arange(start, start + T, dtype=angles)[:, None]  # (T, 1)
    i = torch.arange(d_model // 2, dtype=angles)[None, :]  # (1, d/2)
    power = {"i_over_d": i / d_model, "inverted": -2 * i / d_model}.get(exponent, 2 * i / d_model)
    sin_arg = p / 10000.0 ** power  # (T, d/2)
    cos_arg = p / 10000.0 ** ((2 * i + 1) / d_model) if exponent == "column" else sin_arg  # (T, d/2)
    first, second = (sin_arg.sin(), cos_arg.cos()) if order == "sin_cos" else (sin_arg.cos(), cos_arg.sin())
    if layout == "halves":
        return torch.cat([first, second], dim=-1).float()  # (T, d_model)
    return torch.stack([first, second], dim=-1).flatten(-2).float()  # (T, d_model)


def _rope(x, offset=0, *, pairs="half", exponent="pair", sign=1.0, shift=0, use_offset=True,
          base=10000.0):
    """RoPE with mistakes built in; positions may be negative here."""
    T, d = x.shape[-2], x.shape[-1]
    start = (offset if use_offset else 0) + shift
    p = torch.arange(start, start + T, dtype=torch.float64)[:, None]  # (T, 1)
    k = torch.arange(d // 2, dtype=torch.float64)[None, :]  # (1, d/2)
    power = 2 * k / d if exponent == "pair" else k / d
    angles = sign * p * base ** (-power)  # (T, d/2)
    if pairs == "mixed":  # angles laid out (t0, t0, t1, t1, ...) but channels paired as halves
        angles = angles.repeat_interleave(2, dim=-1)  # (T, d)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
        return x * cos + rotated * sin
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if pairs == "half":
        a, b = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


# ---------------------------------------------------------------------------------------------
# Exercise 1: the sinusoidal table
# ---------------------------------------------------------------------------------------------


def _table_with(**how):
    return lambda T, d_model, offset=0: _table(T, d_model, offset, **how)


_FLOAT32_ANGLES = ("the angles p * w_i are computed in float32, which keeps about 7 significant digits: an angle "
                   "of tens of thousands of radians keeps only 2 or 3 decimals, and its sin and cos are off in "
                   "the fourth (a long context, or a KV cache far into a sequence, asks for such positions); "
                   "compute the positions, the frequencies and the angles in float64 and convert the table to "
                   "float32 at the end")

SINUSOIDAL_MISTAKES = (
    Mistake("sin_cos_swapped",
            "sin and cos are swapped: column 2i holds the cosine and 2i + 1 the sine; PE(p, 2i) = "
            "sin(p w_i) and PE(p, 2i + 1) = cos(p w_i), so PE(0) = [0, 1, 0, 1, ...]",
            _table_with(order="cos_sin")),
    Mistake("exponent_i_over_d",
            "the exponent is i / d_model with i the pair index; the frequency of pair i is "
            "w_i = 10000^(-2i / d_model), so the slowest pair reaches about 1/10000, not 1/100",
            _table_with(exponent="i_over_d")),
    Mistake("column_exponent",
            "the cosine column 2i + 1 got its own exponent (2i + 1) / d_model; sin and cos of one pair "
            "share the frequency w_i = 10000^(-2i / d_model), which is what makes PE(p + k) a rotation of PE(p)",
            _table_with(exponent="column")),
    Mistake("halves_layout",
            "the sines fill the first half of the columns and the cosines the second half (the "
            "tensor2tensor layout); here they alternate: column 2i is sin(p w_i), column 2i + 1 cos(p w_i)",
            _table_with(layout="halves")),
    Mistake("offset_plus_one",
            "the positions are off by one: the first row is position offset + 1; row t is position "
            "offset + t, so with offset = 0 the first row is PE(0) = [0, 1, 0, 1, ...]",
            _table_with(shift=1)),
    Mistake("offset_minus_one",
            "the positions are off by one: the first row is position offset - 1; row t is position offset + t",
            _table_with(shift=-1)),
    Mistake("offset_ignored",
            "offset is ignored: the rows are positions 0 .. T - 1 whatever the offset; row t is position "
            "offset + t (a KV cache asks for one row at position t = offset)",
            _table_with(use_offset=False)),
    Mistake("float32_angles", _FLOAT32_ANGLES, _table_with(angles=torch.float32)),
)


def _reference_table(T, d_model, offset=0):
    return ref.sinusoidal_table(T, d_model, offset=offset)  # (T, d_model) float32


def _table_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """What the angles of a table of (sin, cos) pairs say: positions, pairs that do not turn, frequencies."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()):
        return None
    T, d_model, offset = case.args
    t = got.detach().cpu().double()
    error = float((t - expected.double()).abs().max())
    if offset >= 1000 and error < 1e-2 and bool(torch.isfinite(t).all()):
        # right at small positions (those cases passed), slightly off far out: the angles lost digits
        return _FLOAT32_ANGLES + f" (largest difference here {error:.1e})"
    s, c = t[:, 0::2], t[:, 1::2]  # (T, d_model/2)
    if float(((s * s + c * c) - 1).abs().max()) > 1e-3:
        return None  # not (sin, cos) pairs of one angle
    positions = torch.arange(offset, offset + T, dtype=torch.float64)
    theta = 10000.0 ** (-2 * torch.arange(d_model // 2, dtype=torch.float64) / d_model)
    return _probes.angle_symptom(torch.atan2(s, c), positions, theta, what="row", pair="pairs (2i, 2i + 1)",
                                 base=10000.0, width="d_model")


SINUSOIDAL_PROBES = _probes.probes({
    "frequencies_inverted": ("the angles are p * 10000^(2i / d_model), which grow with i; the frequency of pair i is "
                             "w_i = 10000^(-2i / d_model) = 1 / 10000^(2i / d_model): divide p by 10000^(2i / d_model)",
                             lambda T, d_model, offset=0: _table(T, d_model, offset, exponent="inverted")),
})


def check_sinusoidal_table(fn: Any, *, T: int = 6, d_model: int = 8, offsets: Sequence[int] = (0, 9),
                           far: int = 30000) -> None:
    """sinusoidal_table(T, d_model, offset=0) -> (T, d_model) float32, accurate far into a sequence."""
    names = ("T", "d_model", "offset")
    sizes = {"T": T, "d_model": d_model}
    cases = [Case((T, d_model, offset), sizes, names, f"offset = {offset}") for offset in offsets]
    cases.append(Case((1, d_model, offsets[-1] + T), {"1": 1, "d_model": d_model}, names,
                      f"one row at offset = {offsets[-1] + T}, as a KV cache asks"))
    cases.append(Case((T, d_model, far), sizes, names, f"offset = {far}, far into a long context"))
    check_function(fn, name="sinusoidal_table", reference=_reference_table, cases=cases, outputs=("table",),
                   mistakes=SINUSOIDAL_MISTAKES, forbidden=FORBIDDEN["ex1"], probes=SINUSOIDAL_PROBES,
                   diagnose=_table_diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 2: where the positions go
# ---------------------------------------------------------------------------------------------


def _add_positions_wrong(kind: str):
    def wrong(x, attn, offset=0):
        T, d_model = x.shape[1], x.shape[2]
        table = _table(T, d_model, offset, shift=1 if kind == "plus_one" else 0,
                       use_offset=kind != "offset_ignored").to(x.dtype)  # (T, d_model)
        if kind == "after":
            return attn(x) + table
        if kind == "both":
            return attn(x + table) + table
        if kind == "none":
            return attn(x)
        return attn(x + table)
    return wrong


ADD_POSITIONS_MISTAKES = (
    Mistake("positions_after_attention",
            "the positions are added after attention, attn(x) + PE; attention itself then never sees where "
            "a token stands (it stays permutation-equivariant). Add them to the input: attn(x + PE)",
            _add_positions_wrong("after")),
    Mistake("positions_twice",
            "the positions are added twice, to the input and again to the output; add them once, to the input",
            _add_positions_wrong("both")),
    Mistake("no_positions", "no positions are added: the result is attn(x); it should be attn(x + PE)",
            _add_positions_wrong("none")),
    Mistake("offset_ignored",
            "offset is ignored: token t must get the row of position offset + t, not t",
            _add_positions_wrong("offset_ignored")),
    Mistake("offset_plus_one",
            "the positions are off by one: token t gets the row of position offset + t + 1; it should "
            "be offset + t", _add_positions_wrong("plus_one")),
)


def _add_variant(*, x_scale: str = "1", pe_scale: str = "1", keep_x: bool = True):
    """add_positions with one change: x or PE scaled (by sqrt(d_model), or -1), or x left out."""
    def wrong(x, attn, offset=0):
        d_model = x.shape[2]
        factor = {"1": 1.0, "sqrt_d": math.sqrt(d_model), "-1": -1.0}
        table = ref.sinusoidal_table(x.shape[1], d_model, offset=offset, dtype=x.dtype)  # (T, d_model)
        return attn((x * factor[x_scale] if keep_x else torch.zeros_like(x)) + table * factor[pe_scale])
    return wrong


_ADD_RULE = "add_positions returns attn(x + PE), with PE the rows of positions offset .. offset + T - 1"
ADD_POSITIONS_PROBES = _probes.probes({
    "x_scaled": ("x is multiplied by sqrt(d_model) before the positions are added (as the 2017 Transformer "
                 f"scales its token embeddings); here x is used as it is: {_ADD_RULE}", _add_variant(x_scale="sqrt_d")),
    "pe_scaled": (f"the positions are multiplied by sqrt(d_model); add the table as it is: {_ADD_RULE}",
                  _add_variant(pe_scale="sqrt_d")),
    "pe_subtracted": (f"the positions are subtracted (x - PE); they are added: {_ADD_RULE}", _add_variant(pe_scale="-1")),
    "x_dropped": (f"attention reads the positions alone, attn(PE): the input x is lost; {_ADD_RULE}",
                  _add_variant(keep_x=False)),
})


def _attention_layer(seed: int, d_model: int, n_heads: int, dtype: torch.dtype) -> nn.Module:
    """torch's own encoder layer (no mask: it mixes all tokens), frozen and in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 2 * d_model, dropout=0.0, batch_first=True,
                                           dtype=dtype).eval()
    layer.requires_grad_(False)
    return layer


def _reference_add_positions(x, attn, offset=0):
    table = ref.sinusoidal_table(x.shape[1], x.shape[2], offset=offset, dtype=x.dtype)  # (T, d_model)
    return attn(x + table)  # (B, T, d_model)


def check_add_positions(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, T: int = 5,
                        d_model: int = 8, n_heads: int = 2, offset: int = 4) -> None:
    """add_positions(x, attn, offset=0) -> attn(x + PE(offset .. offset + T - 1)), (B, T, d_model)."""
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "attn", "offset")
    sizes = {"B": B, "T": T, "d_model": d_model}
    attn = _attention_layer(seed, d_model, n_heads, dtype)
    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype), attn), sizes, names[:2], "offset left at 0"),
        Case((_randn(gen, B, T, d_model, dtype=dtype), attn, offset), sizes, names, f"offset = {offset}"),
    ]
    with torch.no_grad():
        check_function(fn, name="add_positions", reference=_reference_add_positions, cases=cases,
                       outputs=("output",), mistakes=ADD_POSITIONS_MISTAKES, forbidden=FORBIDDEN["ex2"],
                       probes=ADD_POSITIONS_PROBES,
                       prerequisites=MappingProxyType({"sinusoidal_table": (check_sinusoidal_table, "exercise 1")}))


# ---------------------------------------------------------------------------------------------
# Exercise 3: RoPE, rotate-half convention
# ---------------------------------------------------------------------------------------------


def _rope_partial(x, offset=0, *, fraction=0.5):
    """GPT-NeoX's partial rotary: only the first fraction of the channels is rotated (rotate-half
    pairs inside them); the rest pass through."""
    r = int(x.shape[-1] * fraction) // 2 * 2
    return torch.cat([_rope(x[..., :r], offset), x[..., r:]], dim=-1)


def _rope_with(**how):
    return lambda x, offset=0: _rope(x, offset, **how)


ROPE_MISTAKES = (
    Mistake("interleaved_layout",
            "this rotates the interleaved pairs (2k, 2k + 1) of GPT-J and Meta's Llama; this exercise "
            "uses the rotate-half layout of HF Llama: pair k is channels (k, k + d_head/2)",
            _rope_with(pairs="interleaved")),
    Mistake("mixed_layouts",
            "the angles are laid out for interleaved pairs (theta_0, theta_0, theta_1, theta_1, ...) but the "
            "channels are paired as halves (rotate_half); with rotate_half the angles repeat as halves: "
            "cat([angles, angles], dim=-1)",
            _rope_with(pairs="mixed")),
    Mistake("exponent_k_over_d",
            "the frequencies use the exponent k / d_head; pair k turns by theta_k = 10000^(-2k / d_head) "
            "per position", _rope_with(exponent="k_over_d")),
    Mistake("wrong_direction",
            "the pairs rotate the wrong way (the sine's sign is flipped): a pair (a, b) becomes "
            "(a cos - b sin, a sin + b cos)", _rope_with(sign=-1.0)),
    Mistake("offset_plus_one",
            "the positions are off by one: token t is rotated as position offset + t + 1; it is at "
            "offset + t (with offset = 0 the first token is not rotated at all)", _rope_with(shift=1)),
    Mistake("offset_minus_one",
            "the positions are off by one: token t is rotated as position offset + t - 1; it is at offset + t",
            _rope_with(shift=-1)),
    Mistake("offset_ignored",
            "offset is ignored: token t must be rotated by the angle of position offset + t, not t",
            _rope_with(use_offset=False)),
)


def _reference_rope(x, offset=0):
    return ref.apply_rope(x, offset)  # half pairs, base 10000


ROPE_PROBES = _probes.probes({
    f"partial_rotary_{int(100 * f)}": (
        f"only the first {int(100 * f)}% of the channels are rotated (a partial rotary, as GPT-NeoX's rotary_pct "
        f"does); this exercise rotates all of them: pair k is channels (k, k + d_head/2), k = 0 .. d_head/2 - 1",
        lambda x, offset=0, f=f: _rope_partial(x, offset, fraction=f))
    for f in (0.5, 0.25)
})


def _rope_angles(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """(T, d_head/2): the angle each rotate-half pair (k, k + d_head/2) of `y` is turned from `x` by,
    one angle per token and pair for every batch row and head; None when `y` is not such a rotation."""
    if not (isinstance(y, torch.Tensor) and y.shape == x.shape and y.is_floating_point()):
        return None
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    d = x.shape[-1]
    a, b, ya, yb = x[..., : d // 2], x[..., d // 2:], y[..., : d // 2], y[..., d // 2:]
    lead = tuple(range(x.dim() - 2))
    phi = torch.atan2((a * yb - b * ya).sum(lead), (a * ya + b * yb).sum(lead)) if lead else torch.atan2(
        a * yb - b * ya, a * ya + b * yb)  # (T, d/2)
    cos, sin = phi.cos(), phi.sin()
    rotated = torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    scale = float(x.abs().max()) or 1.0
    return phi if float((rotated - y).abs().max()) <= 1e-4 * scale else None


def _rope_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    x = case.args[0]
    offset = case.args[1] if len(case.args) > 1 else 0
    phi = _rope_angles(x, got)
    if phi is None:
        return None
    T, d = x.shape[-2], x.shape[-1]
    positions = torch.arange(offset, offset + T, dtype=torch.float64)
    theta = 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    return _probes.angle_symptom(phi, positions, theta, what="token", pair="pairs (k, k + d_head/2)", base=10000.0,
                                 width="d_head")


def check_apply_rope(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, H: int = 3,
                     T: int = 5, d_head: int = 8, offset: int = 6) -> None:
    """apply_rope(x, offset=0): x (..., T, d_head) rotated in rotate-half pairs, base 10000."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "H": H, "T": T, "d_head": d_head}
    cases = [
        Case((_randn(gen, B, H, T, d_head, dtype=dtype),), sizes, ("x",), "x (B, H, T, d_head), offset left at 0"),
        Case((_randn(gen, B, H, T, d_head, dtype=dtype), offset), sizes, ("x", "offset"), f"offset = {offset}"),
        Case((_randn(gen, T, d_head, dtype=dtype), offset + 1), {"T": T, "d_head": d_head}, ("x", "offset"),
             f"x (T, d_head), offset = {offset + 1}"),
    ]
    try:
        check_function(fn, name="apply_rope", reference=_reference_rope, cases=cases, outputs=("rotated",),
                       mistakes=ROPE_MISTAKES, forbidden=FORBIDDEN["ex3"], diagnose=_rope_diagnose,
                       probes=ROPE_PROBES)
    except CheckFailed as failure:
        if " raised " not in str(failure) or not _runs(fn, cases[1]) or _runs(fn, cases[2]):
            raise
        error = str(failure).split(" raised ", 1)[1].split(" (called with", 1)[0]
        raise CheckFailed(f"apply_rope handles x (B, H, T, d_head) only: on x (T, d_head) it raised {error}. "
                          f"The exercise's x is (..., T, d_head), any number of leading axes: read the sizes from the "
                          f"end (T, d = x.shape[-2], x.shape[-1]) and slice with ... (x[..., :d // 2]), so the same "
                          f"code rotates (T, d_head), (B, T, d_head) and (B, H, T, d_head)") from None


def _runs(fn: Any, case: Case) -> bool:
    """Whether fn(*case.args) returns without an exception (its value is not judged)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*[a.clone() if isinstance(a, torch.Tensor) else a for a in case.args])
    except Exception:  # noqa: BLE001 - any error means it does not run
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Exercise 4: RoPE inside attention, with cached keys
# ---------------------------------------------------------------------------------------------


def _rope_attention_wrong(kind: str):
    def wrong(q, k, v):
        T_q, T_k = q.shape[-2], k.shape[-2]
        start = T_k - T_q  # the queries are the last T_q tokens
        q_start = {"q_offset_ignored": 0, "q_offset_plus_one": start + 1,
                   "q_offset_minus_one": start - 1}.get(kind, start)
        mask = torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=0 if kind == "mask_not_shifted" else start)
        if kind == "after_scores":
            out, weights = scaled_dot_product_attention(q, k, v, mask)
            return _rope(out, start), weights
        rq = q if kind == "k_only" else _rope(q, q_start)
        rk = _rope(k, 0) if kind != "q_only" else k
        rv = _rope(v, 0) if kind == "rope_on_v" else v
        return scaled_dot_product_attention(rq, rk, rv, mask)
    return wrong


ROPE_ATTENTION_MISTAKES = (
    Mistake("rope_on_v",
            "v is rotated too; RoPE rotates only q and k, which meet in the scores. The values carry "
            "content, and rotating them scrambles the output", _rope_attention_wrong("rope_on_v")),
    Mistake("rope_after_scores",
            "the rotation is applied after attention (to its output), so the scores q kᵀ never see a "
            "position; rotate q and k before computing the scores", _rope_attention_wrong("after_scores")),
    Mistake("rope_q_only",
            "only q is rotated; k must be rotated by its own positions too, or the scores depend on "
            "the query's absolute position instead of the offset i - j", _rope_attention_wrong("q_only")),
    Mistake("rope_k_only", "only k is rotated; q must be rotated by its own positions too",
            _rope_attention_wrong("k_only")),
    Mistake("q_offset_ignored",
            "the queries are rotated as positions 0 .. T_q - 1 (or the keys from the queries' start: the scores "
            "only see the offset between the two, which is then off by T_k - T_q); the queries are the last T_q "
            "tokens, at positions T_k - T_q .. T_k - 1, and the keys sit at 0 .. T_k - 1 (a cached decoder's new "
            "token sits at position T_k - 1)",
            _rope_attention_wrong("q_offset_ignored")),
    Mistake("q_offset_plus_one",
            "the queries' positions are off by one: the first query is at T_k - T_q, not T_k - T_q + 1",
            _rope_attention_wrong("q_offset_plus_one")),
    Mistake("q_offset_minus_one",
            "the queries' positions are off by one: the first query is at T_k - T_q, not T_k - T_q - 1",
            _rope_attention_wrong("q_offset_minus_one")),
    Mistake("mask_not_shifted",
            "the causal mask is aligned to the top-left corner, so query i sees keys 0..i; query i is at "
            "position T_k - T_q + i and sees keys 0 .. T_k - T_q + i (torch.ones(T_q, T_k).tril(T_k - T_q))",
            _rope_attention_wrong("mask_not_shifted")),
)


def _rope_attention_variant(*, scale: str = "sqrt_d", mask: str = "right", layout: str = "half"):
    """rope_attention with one change: the scale of the scores, the causal mask (none, or one key too
    many), or the interleaved RoPE layout for q and k."""
    def wrong(q, k, v):
        T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        start = T_k - T_q
        rope = (lambda x, o: _rope(x, o, pairs="interleaved")) if layout == "interleaved" else ref.apply_rope
        m = None if mask == "none" else torch.ones(T_q, T_k, dtype=torch.bool).tril(start + (mask == "next"))
        factor = {"sqrt_d": None, "none": lambda q_, k_: 1.0, "d": lambda q_, k_: 1.0 / d}[scale]
        return _probes.attention(rope(q, start), rope(k, 0), v, m, scale=factor)
    return wrong


ROPE_ATTENTION_PROBES = _probes.probes({
    "no_scale": ("the scores are not divided by sqrt(d_head): RoPE rotates q and k, and the scores are still "
                 "(rotated q)(rotated k)ᵀ / sqrt(d_head)", _rope_attention_variant(scale="none")),
    "scale_d_head": ("the scores are divided by d_head; divide them by its square root, sqrt(d_head)",
                     _rope_attention_variant(scale="d")),
    "no_mask": ("there is no causal mask: query i (at position T_k - T_q + i) must not see the keys after it; "
                "mask with torch.ones(T_q, T_k).tril(T_k - T_q)", _rope_attention_variant(mask="none")),
    "mask_sees_next": ("the causal mask lets each query see one key too many, the next token (tril(T_k - T_q + 1)); "
                       "query i sees keys 0 .. T_k - T_q + i: tril(T_k - T_q)", _rope_attention_variant(mask="next")),
    "interleaved_layout": ("q and k are rotated in interleaved pairs (2k, 2k + 1); this chapter's RoPE pairs "
                           "channel k with k + d_head/2 (rotate-half, apply_rope of exercise 3)",
                           _rope_attention_variant(layout="interleaved")),
})


def _reference_rope_attention(q, k, v):
    T_q, T_k = q.shape[-2], k.shape[-2]
    start = T_k - T_q  # the queries are the last T_q tokens
    mask = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(diagonal=start)  # (T_q, T_k)
    return scaled_dot_product_attention(ref.apply_rope(q, start), ref.apply_rope(k, 0), v, mask)


@rank_aware_mask_advice()  # helpers.shapes' mask advice, for per-head scores
def check_rope_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, H: int = 3,
                         T_k: int = 7, d_head: int = 4) -> None:
    """rope_attention(q, k, v) -> (out, weights): causal attention, q and k rotated by their positions.

    q (B, H, T_q, d_head) are the last T_q of the T_k tokens whose keys and values are k, v
    (B, H, T_k, d_head): query i sits at position T_k - T_q + i.
    """
    gen = torch.Generator().manual_seed(seed)
    names = ("q", "k", "v")

    def case(T_q: int, note: str) -> Case:
        sizes = {"B": B, "H": H, "T_q": T_q, "T_k": T_k, "d_head": d_head}
        return Case((_randn(gen, B, H, T_q, d_head, dtype=dtype, scale=2.0),
                     _randn(gen, B, H, T_k, d_head, dtype=dtype, scale=2.0),
                     _randn(gen, B, H, T_k, d_head, dtype=dtype)), sizes, names, note)

    cases = [case(T_k, "T_q = T_k: the whole sequence"), case(3, "T_q = 3: the last 3 tokens"),
             case(1, "T_q = 1: one new token at position T_k - 1")]
    check_function(fn, name="rope_attention", reference=_reference_rope_attention, cases=cases,
                   outputs=("output", "weights"), mistakes=ROPE_ATTENTION_MISTAKES, forbidden=FORBIDDEN["ex4"],
                   probes=ROPE_ATTENTION_PROBES,
                   prerequisites=MappingProxyType({"apply_rope": (check_apply_rope, "exercise 3")}))


# ---------------------------------------------------------------------------------------------
# Exercise 5: test RoPE's defining property
# ---------------------------------------------------------------------------------------------

# RoPE candidates for the learner's property test. They are compiled from this text under their own
# file name, so that the learner's test may call them (calls into the checks' own code are refused).
_ROPE_SOURCE = '''
import torch

def _angles(T, d, start, base, power=1.0):
    p = torch.arange(start, start + T, dtype=torch.float64)[:, None] ** power
    return p * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)[None, :]

def _rotate(x, angles, pairs):
    d = x.shape[-1]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if pairs == "half":
        a, b = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

def rope_half(x, offset=0):
    return _rotate(x, _angles(x.shape[-2], x.shape[-1], offset, 10000.0), "half")

def rope_interleaved(x, offset=0):
    return _rotate(x, _angles(x.shape[-2], x.shape[-1], offset, 10000.0), "interleaved")

def rope_base_100(x, offset=0):
    return _rotate(x, _angles(x.shape[-2], x.shape[-1], offset, 100.0), "half")

def no_positions(x, offset=0):
    return x.clone()

def rope_squared_positions(x, offset=0):
    return _rotate(x, _angles(x.shape[-2], x.shape[-1], offset, 10000.0, power=2.0), "half")

def added_positions(x, offset=0):
    angles = _angles(x.shape[-2], x.shape[-1], offset, 10000.0)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2).to(x.dtype)
    return x + table

def rope_growing(x, offset=0):
    T = x.shape[-2]
    scale = 1 + 0.05 * torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    return _rotate(x, _angles(T, x.shape[-1], offset, 10000.0), "half") * scale.to(x.dtype)

def _positions(x, offset):
    return torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)[:, None]  # (T, 1)

def _inverse_frequencies(d):
    return 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)[None, :]  # (1, d/2)

def rope_clipped(x, offset=0):
    positions = _positions(x, offset).clamp(max=8.0)  # a table of 9 rows: every later position reads row 8
    return _rotate(x, positions * _inverse_frequencies(x.shape[-1]), "half")

def rope_parity_scaled(x, offset=0):
    positions = _positions(x, offset)
    scale = torch.where(positions % 2 == 0, 1.25, 0.8)  # 1.25 * 0.8 = 1: odd offsets see plain RoPE
    return _rotate(x, positions * _inverse_frequencies(x.shape[-1]), "half") * scale.to(x.dtype)

def rope_turning_back(x, offset=0):
    positions = _positions(x, offset)
    direction = torch.where(positions < 24, 1.0, -1.0)  # from position 24 on, the other way round
    return _rotate(x, direction * positions * _inverse_frequencies(x.shape[-1]), "half")
'''

_ROPE_NAMESPACE: dict[str, Any] = {}
exec(compile(_ROPE_SOURCE, "<chapter 06 rope candidates>", "exec"), _ROPE_NAMESPACE)

# (name, what it is, does <f(q, m), f(k, n)> depend only on m - n?)
ROPE_CANDIDATES = (
    ("rope_half", "RoPE with rotate-half pairs", True),
    ("rope_interleaved", "RoPE with interleaved pairs", True),
    ("rope_base_100", "RoPE with base 100", True),
    ("no_positions", "a function that ignores the position (its scores never change, so they depend on m - n only, trivially)", True),
    ("rope_squared_positions", "a rotation by p^2 * theta_k instead of p * theta_k (norms kept, not relative)", False),
    ("added_positions", "a function that adds a sinusoidal position vector (absolute, not a rotation)", False),
    ("rope_growing", "RoPE followed by a scale that grows with the position (relative angles, absolute sizes)", False),
    # Right only where a weak test looks: at small positions, at one offset, or to a test with q = k.
    ("rope_clipped", "a RoPE whose positions stop at 8 (every later position is rotated as position 8): right "
                     "only at small positions", False),
    ("rope_parity_scaled", "RoPE times 1.25 at even positions and 0.8 at odd ones: right at odd offsets (1.25 x "
                           "0.8 = 1), wrong at even ones, 0 included", False),
    ("rope_turning_back", "a RoPE that turns the other way from position 24 on: with q = k its scores look "
                          "relative (the score of offset d equals that of -d), with q != k they are not", False),
)


def _mistaken_test(kind: str):
    """Complete, runnable wrong property tests: fn(rope, d_head) -> bool."""
    def wrong(rope, d_head):
        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, d_head, generator=g, dtype=torch.float64)
        k = torch.randn(1, d_head, generator=g, dtype=torch.float64)
        if kind == "always_true":
            return True
        if kind == "always_false":
            return False
        if kind == "same_position_only":
            return all(bool(torch.allclose((rope(q, m) * rope(k, m)).sum(), (q * k).sum())) for m in (1, 5, 20))
        if kind == "small_positions":  # positions 0 .. 2, offset 1 only
            return bool(torch.allclose((rope(q, 1) * rope(k, 0)).sum(), (rope(q, 2) * rope(k, 1)).sum()))
        if kind == "q_equals_k":  # the right offsets and positions, but one vector for both
            return all(bool(torch.allclose(torch.stack([(rope(q, n + delta) * rope(q, n)).sum() for n in (3, 11, 40)]),
                                           (rope(q, 3 + delta) * rope(q, 3)).sum().expand(3)))
                       for delta in (0, 1, 5, -3))
        # "exact": compares scores with == (rounding makes equal offsets differ in the last bits)
        return all(bool((rope(q, m + 3) * rope(k, m)).sum() == (rope(q, 3) * rope(k, 0)).sum()) for m in (57, 1000, 4321, 77777))
    return wrong


RELATIVE_TEST_MISTAKES = (
    Mistake("always_true",
            "your test returns True for every function, including ones whose scores depend on absolute "
            "positions; compute <rope(q, m), rope(k, n)> for several (m, n) with the same m - n and compare",
            _mistaken_test("always_true")),
    Mistake("always_false", "your test returns False even for a correct RoPE", _mistaken_test("always_false")),
    Mistake("same_position_only",
            "your test only compares scores at equal positions (m = n) with the unrotated <q, k>; every "
            "rotation keeps those, even one by p^2 * theta. Compare pairs with the same nonzero offset "
            "m - n at different absolute positions", _mistaken_test("same_position_only")),
    Mistake("exact_equality",
            "your test compares floats with ==, so a correct RoPE fails on rounding in the last bits; "
            "compare with torch.allclose (or math.isclose)", _mistaken_test("exact")),
    Mistake("small_positions",
            "your test looks only at small positions and at one offset: it says True for a RoPE whose positions "
            "stop at 8 and for one that is right at odd offsets only; compare several offsets (0, positive and "
            "negative) at positions far apart, say n = 3, 11 and 40", _mistaken_test("small_positions")),
    Mistake("q_equals_k",
            "your test uses one vector as both q and k: <rope(q, m), rope(q, n)> is the same for the offsets d "
            "and -d, so a RoPE that turns the other way from some position on passes; draw q and k separately",
            _mistaken_test("q_equals_k")),
)


def _as_verdict(name: str, value: Any, what: str) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        return bool(value.item())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise CheckFailed(f"{name} should return True or False; it returned {type(value).__name__} {value!r} for {what}")


def check_relative_offset_test(fn: Any, *, d_heads: Sequence[int] = (8,)) -> None:
    """relative_offset_holds(rope, d_head) -> bool: True exactly for the functions whose scores
    <rope(q, m), rope(k, n)> depend only on m - n (ROPE_CANDIDATES lists the functions it is given)."""
    name = "relative_offset_holds"
    verify_environment()
    for d_head in d_heads:
        verdicts = []
        for key, what, _ in ROPE_CANDIDATES:
            case = Case((_ROPE_NAMESPACE[key], d_head), {}, ("rope", "d_head"), what)
            verdicts.append(_as_verdict(name, call_learner(fn, name, case, FORBIDDEN["ex5"]), what))
        expected = [right for _, _, right in ROPE_CANDIDATES]
        if verdicts == expected:
            continue
        for mistake in RELATIVE_TEST_MISTAKES:
            if verdicts == [mistake.impl(_ROPE_NAMESPACE[key], d_head) for key, _, _ in ROPE_CANDIDATES]:
                raise CheckFailed(f"{name}: {mistake.message}")
        index = next(i for i, (got, right) in enumerate(zip(verdicts, expected)) if got != right)
        _, what, right = ROPE_CANDIDATES[index]
        why = ("its scores depend only on m - n" if right else "its scores depend on the absolute positions")
        raise CheckFailed(f"{name} returned {verdicts[index]} for {what} (d_head = {d_head}); {why}")
    verify_environment()
    print(f"✓ {name}: tells all {len(ROPE_CANDIDATES)} candidates apart"
          + (f" for d_head in {tuple(d_heads)}" if len(d_heads) > 1 else ""))


# ---------------------------------------------------------------------------------------------
# Exercise 6: the ALiBi bias
# ---------------------------------------------------------------------------------------------


def _slopes_wrong(H: int, kind: str) -> torch.Tensor:
    if kind == "fixed":
        return torch.tensor([2.0 ** -(h + 1) for h in range(H)], dtype=torch.float64)
    if kind == "geometric":
        start = 2.0 ** (-8.0 / H)
        return torch.tensor([start ** (h + 1) for h in range(H)], dtype=torch.float64)
    slopes = ref.alibi_slopes(H)
    return slopes.flip(0) if kind == "reversed" else slopes


def _alibi_wrong(kind: str):
    def wrong(n_heads, T):
        slopes = _slopes_wrong(n_heads, kind if kind in ("fixed", "geometric", "reversed") else "right")
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        distance = {"no_abs": (i - j), "key_position": -j}.get(kind, (i - j).abs()).double()
        sign = 1.0 if kind == "sign" else -1.0
        if kind == "no_slope":
            slopes = torch.ones(n_heads, dtype=torch.float64)
        return (sign * slopes[:, None, None] * distance).float()
    return wrong


ALIBI_MISTAKES = (
    Mistake("sign_flipped",
            "the bias has the wrong sign: it rewards distant keys; ALiBi subtracts m_h |i - j|, so the "
            "further a key, the lower its score", _alibi_wrong("sign")),
    Mistake("slopes_reversed",
            "the slopes are in reverse order: head 0 gets the largest slope (2^(-8/H)), the last head the smallest",
            _alibi_wrong("reversed")),
    Mistake("slopes_fixed",
            "the slopes are 1/2, 1/4, 1/8, ... whatever the number of heads; they are (2^(-8/H))^(h+1), "
            "which is 1/2 .. 1/256 only for 8 heads", _alibi_wrong("fixed")),
    Mistake("non_power_of_two",
            "for a head count that is not a power of two the slopes are not one geometric sequence: take "
            "the P slopes of the largest power of two P below H, then every other slope of 2P heads",
            _alibi_wrong("geometric")),
    Mistake("no_abs",
            "the distance is i - j without the absolute value, so keys after the query get a positive "
            "bias; use -m_h |i - j|", _alibi_wrong("no_abs")),
    Mistake("no_slope",
            "every head has slope 1; each head h has its own slope m_h (alibi's multi-scale memory)",
            _alibi_wrong("no_slope")),
)


def _alibi_variant(*, first: int = 1, distance: str = "abs"):
    """alibi_bias with one change: the slopes' exponents start at h + first, or the distance is i - j
    clamped at 0 (no bias for keys after the query)."""
    def wrong(n_heads, T):
        slopes = ref.alibi_slopes(n_heads).double() * (2.0 ** (8.0 / n_heads)) ** (1 - first)  # (H,)
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        dist = ((i - j).abs() if distance == "abs" else (i - j).clamp(min=0)).double()  # (T, T)
        return (-slopes[:, None, None] * dist).float()
    return wrong


ALIBI_PROBES = _probes.probes({
    "slopes_from_h0": ("head 0 has slope 1: the slopes' exponents start at 0; head h has the slope "
                       "(2^(-8/H))^(h+1), so head 0's is 2^(-8/H)", _alibi_variant(first=0)),
    "causal_only": ("the bias is 0 for keys after the query (j > i); ALiBi's bias is -m_h |i - j| on both "
                    "sides of the diagonal (a causal model masks those keys anyway, but the table is the full "
                    "(H, T, T) bias)", _alibi_variant(distance="clamped")),
})


def _reference_alibi(n_heads, T):
    positions = torch.arange(T)
    return ref.alibi_bias(ref.alibi_slopes(n_heads), positions, positions)  # (H, T, T) float32


def check_alibi_bias(fn: Any, *, heads: Sequence[int] = (4, 6), T: int = 5) -> None:
    """alibi_bias(n_heads, T) -> (H, T, T) float32: bias[h, i, j] = -m_h |i - j|."""
    cases = [Case((H, T), {"H": H, "T": T}, ("n_heads", "T"), f"{H} heads") for H in heads]
    check_function(fn, name="alibi_bias", reference=_reference_alibi, cases=cases, outputs=("bias",),
                   mistakes=ALIBI_MISTAKES, forbidden=FORBIDDEN["ex6"], probes=ALIBI_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 7: how slowly the slow pairs turn
# ---------------------------------------------------------------------------------------------

# Exercise 7's settings (printed in the notebook): d_head 64 and base 10000 (GPT-NeoX-like), pair 8;
# Llama 3's d_head 128 and base 500 000.
NUMBERS = {"d_head": 64, "base": 10000.0, "pair": 8, "llama3_d_head": 128, "llama3_base": 500000.0}


def _numbers() -> tuple[dict[str, float], dict[str, list[tuple[float, str]]]]:
    n = NUMBERS
    wavelength = ref.rope_wavelength(n["pair"], n["d_head"], n["base"])
    longest = ref.rope_wavelength(n["llama3_d_head"] // 2 - 1, n["llama3_d_head"], n["llama3_base"])
    expected = {"wavelength_pair": wavelength, "turn_position": float(math.ceil(wavelength)),
                "llama3_longest_wavelength": longest}
    wrong = {
        "wavelength_pair": [
            (2 * math.pi * n["base"] ** (n["pair"] / n["d_head"]),
             "that uses the exponent i / d_head; theta_i = base^(-2i / d_head)"),
            (n["base"] ** (2 * n["pair"] / n["d_head"]),
             "that is 1 / theta_i, the positions per radian; a full turn is 2 pi radians"),
            (2 * math.pi * n["base"] ** (2 * 2 * n["pair"] / n["d_head"]),
             "that is the pair of channel 16; pair i is channels (2i, 2i + 1), so use 2i = 16 in the exponent")],
        "turn_position": [
            (float(math.floor(wavelength)), "at that position the angle is still just below 2 pi; round up"),
            (float(math.ceil(2 * math.pi * n["base"] ** (n["pair"] / n["d_head"]))),
             "that uses the exponent i / d_head; theta_i = base^(-2i / d_head)")],
        "llama3_longest_wavelength": [
            (2 * math.pi * n["llama3_base"], "the last pair is i = d_head/2 - 1 = 63, so the exponent is 126 / 128, not 1"),
            (2 * math.pi * 10000.0 ** (126 / 128), "Llama 3 uses base 500 000, not 10 000"),
            (n["llama3_base"] ** (126 / 128), "a full turn is 2 pi radians: multiply 1 / theta by 2 pi")],
    }
    return expected, wrong


def check_rope_numbers(**answers: Any) -> None:
    """Exercise 7: the wavelength of pair 8, the position where it completes a turn, Llama 3's longest wavelength."""
    expected, wrong = _numbers()
    tolerance = {"wavelength_pair": 0.01, "llama3_longest_wavelength": 0.5e-3 * expected["llama3_longest_wavelength"]}
    check_numbers(answers, expected, tolerance=tolerance, mistakes=wrong, name="check_rope_numbers",
                  integers=("turn_position",),
                  hints={"wavelength_pair": "theta_i = base^(-2i / d_head); one turn takes 2 pi / theta_i positions",
                         "turn_position": "the first whole position p with p * theta_i >= 2 pi",
                         "llama3_longest_wavelength": "the slowest pair is the last one, i = d_head / 2 - 1"})


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

# Each mistake is a complete, runnable wrong answer; each probe a variant no catalogue lists, named only
# when a wrong answer clearly is one of them.
MISTAKES = {
    "sinusoidal_table": SINUSOIDAL_MISTAKES,
    "add_positions": ADD_POSITIONS_MISTAKES,
    "apply_rope": ROPE_MISTAKES,
    "rope_attention": ROPE_ATTENTION_MISTAKES,
    "relative_offset_holds": RELATIVE_TEST_MISTAKES,
    "alibi_bias": ALIBI_MISTAKES,
}

PROBES = {"sinusoidal_table": SINUSOIDAL_PROBES, "add_positions": ADD_POSITIONS_PROBES, "apply_rope": ROPE_PROBES,
          "rope_attention": ROPE_ATTENTION_PROBES, "alibi_bias": ALIBI_PROBES}

protect(ref, sys.modules[__name__])
