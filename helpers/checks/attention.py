"""Checks for chapter 01 (scaled dot-product attention) and their catalogue of known mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from .. import attention as ref
from . import probes as _probes
from .conventions import key_padding_advice
from .core import Case, CheckFailed, Mistake, check_function, check_numbers, protect
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "check_apply_mask",
    "check_attention_scores",
    "check_causal_mask",
    "check_counts",
    "check_masked_softmax",
    "check_padding_mask",
    "check_scaled_dot_product_attention",
    "check_sdpa_by_hand",
]


# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The learner writes these themselves: an answer that is or calls one of them is refused. Every
# exercise that asks for a function refuses the reference module; exercise 7 also refuses torch's
# attention. Exercises 1 and 8 ask for numbers.
_TORCH_ATTENTION = (F.scaled_dot_product_attention, F.multi_head_attention_forward,
                    torch.nn.MultiheadAttention.forward)
FORBIDDEN = {
    "ex1": (),
    "ex2": (ref,),
    "ex3": (ref,),
    "ex4": (ref,),
    "ex5": (ref,),
    "ex6": (ref,),
    "ex7": (ref, *_TORCH_ATTENTION),
    "ex8": (),
}


# ---------------------------------------------------------------------------------------------
# Shared: messages and the mistaken steps several exercises' mistakes are built from
# ---------------------------------------------------------------------------------------------

NEG_INF = float("-inf")

_M = {
    "softmax_query_axis": (
        "the softmax runs over the query axis (dim=-2), so each column of the weights sums to 1; "
        "attention normalizes over the keys (dim=-1), so each query's row sums to 1"),
    "no_scale": (
        "the scores are not divided by sqrt(d_k); S = Q Kᵀ / sqrt(d_k), and without it the dot "
        "products grow with d_k and the softmax saturates"),
    "divide_by_dk": "the scores are divided by d_k; divide by sqrt(d_k) instead (math.sqrt(d_k))",
    "multiply_sqrt": "the scores are multiplied by sqrt(d_k); they should be divided by it",
    "mask_after_softmax": (
        "the mask is applied after the softmax, so the remaining weights no longer sum to 1; "
        "set blocked scores to -inf before the softmax"),
    "fill_zero": (
        "blocked scores are set to 0 before the softmax, but exp(0) = 1 still gives blocked keys "
        "weight; set them to -inf"),
    "inverted_mask": (
        "the mask is inverted: True means may attend (as in F.scaled_dot_product_attention), so "
        "block the positions where the mask is False (~mask)"),
    "mask_ignored": "the mask is ignored, so blocked keys still get weight",
    "nan_rows": (
        "a query row whose keys are all blocked comes out as NaN (the softmax of a row of -inf); "
        "such a row must give zero weights and a zero output"),
    "finite_fill": (
        "blocked scores are filled with a large finite number, so a query whose keys are all "
        "blocked spreads its weight evenly over them; use -inf and give such rows zero weights"),
}


def _mistakes(*keys: str, **impls: Callable[..., Any]) -> tuple[Mistake, ...]:
    return tuple(Mistake(key, _M[key], impls[key]) for key in keys)


def _inv_sqrt(d: int) -> float:
    return d ** -0.5


def _scores(q: torch.Tensor, k: torch.Tensor, scale: Callable[[int], float]) -> torch.Tensor:
    return q @ k.transpose(-2, -1) * scale(q.shape[-1])  # (..., T_q, T_k)


def _softmax(scores: torch.Tensor, mask: torch.Tensor | None, style: str, dim: int = -1) -> torch.Tensor:
    """Masked softmax, right or in one of the catalogued wrong styles."""
    if mask is None or style == "ignored":
        return torch.softmax(scores, dim=dim)
    if style == "right":
        return ref.masked_softmax(scores, mask) if dim == -1 else _softmax_dim(scores, mask, dim)
    if style == "nan_rows":
        return torch.softmax(scores.masked_fill(~mask, NEG_INF), dim=dim)
    if style == "zero":
        return torch.softmax(scores.masked_fill(~mask, 0.0), dim=dim)
    if style == "finite":
        return torch.softmax(scores.masked_fill(~mask, -1e9), dim=dim)
    if style == "after":
        return torch.softmax(scores, dim=dim) * mask
    if style == "inverted":
        return _softmax(scores, ~mask, "right", dim)
    raise ValueError(style)


def _softmax_dim(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return ref.masked_softmax(scores.transpose(-2, -1), mask.transpose(-2, -1)).transpose(-2, -1)


# Probe messages of exercises 6 and 7, and the scale variants of exercises 2 and 7.
_P = {
    "no_max_shift": (
        "the softmax overflows: exp of a large score is inf, and inf / inf is NaN; subtract each row's "
        "maximum before exp (softmax(s) = softmax(s - max s)), or use torch.softmax, which does"),
    "log_softmax": (
        "these are log-probabilities (log_softmax); the weights are the softmax itself, each allowed "
        "row summing to 1"),
    "out_scale": (
        "the output is divided by sqrt(d_k) instead of the scores: the scale goes inside the softmax, "
        "softmax(Q Kᵀ / sqrt(d_k)) V"),
    "weights_unmasked": (
        "the weights returned are the softmax before masking, while the output uses masked ones; return "
        "the masked weights"),
}

_SCALES = _probes.scale_variants("d_k")


# ---------------------------------------------------------------------------------------------
# Shared: inputs and the weights' symptom (exercises 4 to 7)
# ---------------------------------------------------------------------------------------------


def _random_mask(gen: torch.Generator, T_q: int, T_k: int, *, blocked_row: int | None) -> torch.Tensor:
    """(T_q, T_k) bool with about half the keys allowed, at least one per row except `blocked_row`."""
    mask = torch.rand(T_q, T_k, generator=gen) < 0.5
    mask[torch.arange(T_q), torch.randint(0, T_k, (T_q,), generator=gen)] = True
    if blocked_row is not None:
        mask[blocked_row] = False
    return mask


def _lengths(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """(B,) lengths: the first sequence full, the rest random in 1..T-1."""
    lengths = torch.randint(1, max(T, 2), (B,), generator=gen).clamp(max=T)
    lengths[0] = T
    return lengths


def _weights_symptom(weights: Any, mask: torch.Tensor | None, what: str = "weights") -> str | None:
    """A sentence about what is wrong with attention weights, when no catalogued mistake matched."""
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        return None
    w = weights.detach().cpu()
    if torch.isnan(w).any():
        return f"{what} contain NaN; {_M['nan_rows']}"
    if mask is not None and w.shape == torch.broadcast_shapes(w.shape, mask.shape):
        blocked = ~mask.expand(w.shape)
        if (w[blocked] != 0).any():
            return f"{what} are nonzero at blocked positions (mask False); blocked scores must be -inf before the softmax"
        allowed_rows = mask.expand(w.shape).any(-1)
        sums = w.sum(-1)
        if ((sums[allowed_rows] - 1).abs() > 1e-4).any():
            return f"{what} rows with an allowed key do not sum to 1; the softmax normalizes over the keys (dim=-1)"
        if (sums[~allowed_rows] != 0).any():
            return f"{what} rows with no allowed key should be all zeros"
    elif ((w.sum(-1) - 1).abs() > 1e-4).any():
        return f"{what} rows do not sum to 1; the softmax normalizes over the keys (dim=-1)"
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 1: attention for tiny matrices, by hand
# ---------------------------------------------------------------------------------------------

# The tiny example of exercise 1 (also printed in the exercise notebook).
TINY_Q = [[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]]  # (T_q=2, d_k=4)
TINY_K = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [2.0, 0.0, 0.0, 0.0]]  # (T_k=3, d_k=4)
TINY_V = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]  # (T_k=3, d_v=2)


def _by_hand_variants() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    q, k, v = (torch.tensor(x, dtype=torch.float64) for x in (TINY_Q, TINY_K, TINY_V))
    variants = {}
    for key, scale, dim in [("right", 0.5, -1), ("no_scale", 1.0, -1), ("divide_by_dk", 0.25, -1),
                            ("softmax_query_axis", 0.5, -2)]:
        scores = q @ k.T * scale  # (2, 3)
        weights = torch.softmax(scores, dim=dim)  # (2, 3)
        variants[key] = (scores, weights, weights @ v)
    scores = q @ k.T * 0.5
    variants["no_exp"] = (scores, scores / scores.sum(-1, keepdim=True), None)
    return variants


def _as_matrix(name: str, value: Any, shape: tuple[int, int]) -> torch.Tensor:
    if value is None:
        raise CheckFailed(f"{name} has no answer yet: fill in the numbers and run its cell")
    try:
        matrix = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckFailed(f"{name} should be a {shape[0]} x {shape[1]} table of numbers ({error})") from None
    if tuple(matrix.shape) != shape:
        raise CheckFailed(f"{name} has shape {tuple(matrix.shape)}; expected {shape} "
                          f"(one row per query, one column per {'key' if shape[1] == 3 else 'value feature'})")
    return matrix


def check_sdpa_by_hand(scores: Any, weights: Any, output: Any, *, tolerance: float = 2e-3) -> None:
    """Exercise 1: the three matrices of the tiny example, to three decimals."""
    variants = _by_hand_variants()
    right = variants["right"]
    got = (_as_matrix("scores_by_hand", scores, (2, 3)), _as_matrix("weights_by_hand", weights, (2, 3)),
           _as_matrix("output_by_hand", output, (2, 2)))
    labels = ("scores_by_hand", "weights_by_hand", "output_by_hand")
    why = {
        "no_scale": _M["no_scale"],
        "divide_by_dk": _M["divide_by_dk"],
        "softmax_query_axis": _M["softmax_query_axis"],
        "no_exp": "these are the scores divided by their row sum; the softmax exponentiates first: exp(s) / sum(exp(s))",
    }
    for index, (label, mine) in enumerate(zip(labels, got)):
        if (mine - right[index]).abs().max() <= tolerance:
            continue
        for key, reason in why.items():
            candidate = variants[key][index]
            if candidate is not None and (mine - candidate).abs().max() <= tolerance:
                raise CheckFailed(f"{label}: {reason}")
        if index == 2 and (got[1] - right[1]).abs().max() <= tolerance:
            raise CheckFailed(f"{label}: your weights are right; each output row is the weighted sum of "
                              f"the value rows, weights @ V")
        bad = ((mine - right[index]).abs() > tolerance).nonzero()[0].tolist()
        raise CheckFailed(f"{label} is off at row {bad[0]}, column {bad[1]} (give at least three decimals)")
    print("✓ scores, weights and output are all right")


# ---------------------------------------------------------------------------------------------
# Exercise 2: the score matrix
# ---------------------------------------------------------------------------------------------

SCORES_MISTAKES = (
    Mistake("no_scale", _M["no_scale"], lambda q, k: _scores(q, k, lambda d: 1.0)),
    Mistake("divide_by_dk", _M["divide_by_dk"], lambda q, k: _scores(q, k, lambda d: 1.0 / d)),
    Mistake("multiply_sqrt", _M["multiply_sqrt"], lambda q, k: _scores(q, k, math.sqrt)),
    Mistake("keys_times_queries",
            "this is K Qᵀ, one row per key; the score matrix is Q Kᵀ with one row per query, "
            "shape (..., T_q, T_k)",
            lambda q, k: _scores(k, q, _inv_sqrt)),
)

def _scores_scaled(scale: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[..., torch.Tensor]:
    return lambda q, k: q @ k.transpose(-2, -1) * scale(q, k)


SCORES_PROBES = _probes.probes({key: (message, _scores_scaled(f)) for key, (message, f) in _SCALES.items()})


def check_attention_scores(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                           B: int = 2, H: int = 3, T_q: int = 5, T_k: int = 7, d_k: int = 11) -> None:
    """attention_scores(q, k): (..., T_q, d_k), (..., T_k, d_k) -> (..., T_q, T_k)."""
    gen = torch.Generator().manual_seed(seed)
    sizes3 = dict(B=B, T_q=T_q, T_k=T_k, d_k=d_k)
    sizes4 = dict(B=B, H=H, T_q=T_q, T_k=T_k, d_k=d_k)
    cases = [
        Case((_randn(gen, B, T_q, d_k, dtype=dtype), _randn(gen, B, T_k, d_k, dtype=dtype)), sizes3, ("q", "k")),
        Case((_randn(gen, B, H, T_q, d_k, dtype=dtype), _randn(gen, B, H, T_k, d_k, dtype=dtype)), sizes4,
             ("q", "k"), "4-D input with a head axis"),
    ]
    check_function(fn, name="attention_scores", reference=ref.attention_scores, cases=cases,
                   outputs=("scores",), mistakes=SCORES_MISTAKES, forbidden=FORBIDDEN["ex2"], probes=SCORES_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 3: the causal mask
# ---------------------------------------------------------------------------------------------

CAUSAL_MISTAKES = (
    Mistake("inverted",
            "True marks the future (blocked) positions; in this course True = may attend, so the "
            "mask is True on and below the diagonal",
            lambda T: ~ref.causal_mask(T)),
    Mistake("diagonal_blocked",
            "the diagonal is blocked: every token must be allowed to attend to itself "
            "(tril(), not tril(-1))",
            lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1)),
    Mistake("transposed",
            "the upper triangle is allowed, so each query sees the future instead of the past "
            "(the mask is transposed: use tril(), not triu())",
            lambda T: ref.causal_mask(T).T.contiguous()),
    Mistake("float01",
            "the mask holds 0./1. numbers; masks in this course are bool (True = may attend)",
            lambda T: ref.causal_mask(T).float()),
    Mistake("additive",
            "this is an additive float mask (0 allowed, -inf blocked); masks in this course are bool "
            "(True = may attend), and apply_mask turns them into -inf scores",
            lambda T: torch.zeros(T, T).masked_fill(~ref.causal_mask(T), NEG_INF)),
    Mistake("all_allowed", "every position is allowed, so nothing is masked",
            lambda T: torch.ones(T, T, dtype=torch.bool)),
)

CAUSAL_PROBES = _probes.probes({
    "one_future_token": ("each token may also see the next one (tril(1)); the causal mask allows the "
                         "diagonal and below: tril(), True where key <= query",
                         lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)),
    "diagonal_only": ("only the diagonal is allowed, so each token sees itself alone; a causal mask allows "
                      "every earlier token too: tril()", lambda T: torch.eye(T, dtype=torch.bool)),
})


def check_causal_mask(fn: Any, *, sizes: Sequence[int] = (6, 1)) -> None:
    """causal_mask(T) -> (T, T) bool, True on and below the diagonal."""
    cases = [Case((T,), {"T": T}, ("T",), f"T={T}") for T in sizes]
    check_function(fn, name="causal_mask", reference=ref.causal_mask, cases=cases,
                   outputs=("mask",), mistakes=CAUSAL_MISTAKES, forbidden=FORBIDDEN["ex3"], probes=CAUSAL_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 4: apply a mask to the scores
# ---------------------------------------------------------------------------------------------

APPLY_MASK_MISTAKES = (
    Mistake("fill_zero",
            "blocked scores are set to 0, but exp(0) = 1 would still give blocked keys weight; "
            "set them to float('-inf')",
            lambda s, m: s.masked_fill(~m, 0.0)),
    Mistake("finite_fill",
            "blocked scores are set to a large finite number; this course uses float('-inf'), which "
            "gives exactly zero weight in every dtype and marks blocked entries unmistakably",
            lambda s, m: s.masked_fill(~m, -1e9)),
    Mistake("inverted_mask", _M["inverted_mask"], lambda s, m: s.masked_fill(m, NEG_INF)),
    Mistake("mask_ignored", "the mask is ignored: the scores come back unchanged", lambda s, m: s.clone()),
)


def check_apply_mask(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     B: int = 2, T_q: int = 5, T_k: int = 7) -> None:
    """apply_mask(scores, mask): blocked scores -> -inf; causal and padding masks, broadcast."""
    gen = torch.Generator().manual_seed(seed)
    T = T_k
    cases = [
        Case((_randn(gen, B, T, T, dtype=dtype), ref.causal_mask(T)), dict(B=B, T=T),
             ("scores", "mask"), "causal mask (T, T) broadcast over the batch"),
        Case((_randn(gen, B, T_q, T_k, dtype=dtype), ref.padding_mask(_lengths(gen, B, T_k), T_k)),
             dict(B=B, T_q=T_q, T_k=T_k), ("scores", "mask"), "padding mask (B, 1, T_k)"),
    ]
    check_function(fn, name="apply_mask", reference=ref.apply_mask, cases=cases,
                   outputs=("masked scores",), mistakes=APPLY_MASK_MISTAKES, forbidden=FORBIDDEN["ex4"],
                   diagnose=_apply_mask_symptom)


def _apply_mask_symptom(got: Any, expected: Any, case: Case) -> str | None:
    """Blocked scores filled with some finite number (not the catalogued -1e9)."""
    blocked = ~case.args[1].expand(got.shape)
    values = got.detach().cpu()[blocked.cpu()]
    if values.numel() and bool(torch.isfinite(values).all()) and bool((values == values[0]).all()):
        return (f"blocked scores are set to {values[0].item():.6g}, a finite number; set them to float('-inf'), "
                f"which gives exactly zero weight after the softmax")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 5: the padding mask
# ---------------------------------------------------------------------------------------------

PADDING_MISTAKES = (
    Mistake("masks_queries",
            "this masks query positions (shape (B, T, 1)), but padding blocks keys: "
            + key_padding_advice(3, keys="T"),
            lambda lengths, T: ref.padding_mask(lengths, T).transpose(1, 2)),
    Mistake("no_query_axis",
            "the mask has shape (B, T), with no size-1 query axis to broadcast over the queries; "
            + key_padding_advice(3, keys="T"),
            lambda lengths, T: ref.padding_mask(lengths, T)[:, 0, :]),
    Mistake("off_by_one",
            "key position `length` is allowed too; the valid keys are 0 .. length-1 (position < length)",
            lambda lengths, T: (torch.arange(T)[None, :] <= torch.as_tensor(lengths)[:, None])[:, None, :]),
    Mistake("inverted",
            "True marks the padded keys; in this course True = may attend (a real token)",
            lambda lengths, T: ~ref.padding_mask(lengths, T)),
)

PADDING_PROBES = _probes.probes({
    "last_real_key_blocked": ("the last real key is blocked: key position length - 1 is a real token; the "
                              "valid keys are 0 .. length-1 (position < length)",
                              lambda lengths, T: (torch.arange(T)[None, :] < torch.as_tensor(lengths)[:, None] - 1)[:, None, :]),
    "left_padded": ("the mask keeps the last `length` positions (left padding); the sequences here are "
                    "padded on the right, so the real keys are positions 0 .. length-1",
                    lambda lengths, T: (torch.arange(T)[None, :] >= T - torch.as_tensor(lengths)[:, None])[:, None, :]),
})


def check_padding_mask(fn: Any, *, lengths: Sequence[int] = (5, 2, 3), T: int = 5) -> None:
    """padding_mask(lengths, T) -> (B, 1, T) bool: key j allowed iff j < lengths[b]."""
    lengths_t = torch.tensor(list(lengths))
    sizes = dict(B=len(lengths), T=T)
    cases = [Case((lengths_t, T), sizes, ("lengths", "T"), f"lengths={list(lengths)}, T={T}")]
    check_function(fn, name="padding_mask", reference=ref.padding_mask, cases=cases,
                   outputs=("mask",), mistakes=PADDING_MISTAKES, forbidden=FORBIDDEN["ex5"], probes=PADDING_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 6: the masked softmax
# ---------------------------------------------------------------------------------------------

SOFTMAX_MISTAKES = (
    Mistake("softmax_query_axis", _M["softmax_query_axis"], lambda s, m: _softmax(s, m, "right", dim=-2)),
    Mistake("mask_after_softmax", _M["mask_after_softmax"], lambda s, m: _softmax(s, m, "after")),
    Mistake("fill_zero", _M["fill_zero"], lambda s, m: _softmax(s, m, "zero")),
    Mistake("inverted_mask", _M["inverted_mask"], lambda s, m: _softmax(s, m, "inverted")),
    Mistake("nan_rows", _M["nan_rows"], lambda s, m: _softmax(s, m, "nan_rows")),
    Mistake("finite_fill", _M["finite_fill"], lambda s, m: _softmax(s, m, "finite")),
    Mistake("mask_ignored", _M["mask_ignored"], lambda s, m: _softmax(s, m, "ignored")),
)


def _log_softmax(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    out = torch.log_softmax(s.masked_fill(~m, NEG_INF), dim=-1)
    return torch.where(m.expand(out.shape), out, torch.zeros((), dtype=out.dtype))


SOFTMAX_PROBES = _probes.probes({
    "no_max_shift": (_P["no_max_shift"], lambda s, m: _probes.masked_softmax(s, m, shift=False)),
    "no_max_shift_nan_to_num": (_P["no_max_shift"],
                                lambda s, m: torch.nan_to_num(_probes.masked_softmax(s, m, shift=False), nan=0.0)),
    "log_softmax": (_P["log_softmax"], _log_softmax),
})


def check_masked_softmax(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                         B: int = 2, T_q: int = 5, T_k: int = 7) -> None:
    """masked_softmax(scores, mask) -> weights: softmax over keys, blocked keys 0, empty rows 0."""
    gen = torch.Generator().manual_seed(seed)
    sizes = dict(B=B, T_q=T_q, T_k=T_k)
    cases = [
        Case((_randn(gen, B, T_q, T_k, dtype=dtype) * 3, ref.padding_mask(_lengths(gen, B, T_k), T_k)), sizes,
             ("scores", "mask"), "padding mask (B, 1, T_k)"),
        Case((_randn(gen, B, T_q, T_k, dtype=dtype) * 3, _random_mask(gen, T_q, T_k, blocked_row=1)), sizes,
             ("scores", "mask"), "a (T_q, T_k) mask whose row 1 blocks every key"),
        Case((_randn(gen, B, T_q, T_k, dtype=dtype) * 300, ref.padding_mask(_lengths(gen, B, T_k), T_k)), sizes,
             ("scores", "mask"), "large scores, where exp overflows unless the row's maximum is subtracted first"),
    ]
    check_function(fn, name="masked_softmax", reference=ref.masked_softmax, cases=cases, probes=SOFTMAX_PROBES,
                   outputs=("weights",), mistakes=SOFTMAX_MISTAKES, forbidden=FORBIDDEN["ex6"],
                   diagnose=lambda got, exp, case: _weights_symptom(got, case.args[1]),
                   prerequisites=MappingProxyType({"apply_mask": (check_apply_mask, "exercise 4")}))


# ---------------------------------------------------------------------------------------------
# Exercise 7: scaled dot-product attention
# ---------------------------------------------------------------------------------------------


def _sdpa(*, scale: Callable[[int], float] = _inv_sqrt, style: str = "right", dim: int = -1, weights_out: str = "weights"):
    """A complete scaled_dot_product_attention with the given mistakes built in."""
    def wrong(q, k, v, mask=None):
        scores = _scores(q, k, scale)
        weights = _softmax(scores, mask, style, dim)
        return weights @ v, (scores if weights_out == "scores" else weights)
    return wrong

SDPA_MISTAKES = (
    Mistake("no_scale", _M["no_scale"], _sdpa(scale=lambda d: 1.0)),
    Mistake("divide_by_dk", _M["divide_by_dk"], _sdpa(scale=lambda d: 1.0 / d)),
    Mistake("multiply_sqrt", _M["multiply_sqrt"], _sdpa(scale=math.sqrt)),
    Mistake("softmax_query_axis", _M["softmax_query_axis"], _sdpa(dim=-2)),
    Mistake("mask_after_softmax", _M["mask_after_softmax"], _sdpa(style="after")),
    Mistake("fill_zero", _M["fill_zero"], _sdpa(style="zero")),
    Mistake("inverted_mask", _M["inverted_mask"], _sdpa(style="inverted")),
    Mistake("mask_ignored", _M["mask_ignored"], _sdpa(style="ignored")),
    Mistake("nan_rows", _M["nan_rows"], _sdpa(style="nan_rows")),
    Mistake("finite_fill", _M["finite_fill"], _sdpa(style="finite")),
    Mistake("scores_returned",
            "the second value returned is the scores (before the softmax); return the attention "
            "weights, whose rows sum to 1",
            _sdpa(weights_out="scores")),
)


def _sdpa_unmasked_weights(q, k, v, mask=None):
    out, _ = _probes.attention(q, k, v, mask)
    return out, _probes.attention(q, k, v)[1]


def _sdpa_scaled(scale: Callable[[torch.Tensor, torch.Tensor], float]) -> Callable[..., Any]:
    return lambda q, k, v, mask=None: _probes.attention(q, k, v, mask, scale=scale)


SDPA_PROBES = _probes.probes({
    **{key: (message, _sdpa_scaled(f)) for key, (message, f) in _SCALES.items()},
    "out_scale": (_P["out_scale"], lambda q, k, v, mask=None: _probes.attention(q, k, v, mask, out_scale=True)),
    "weights_unmasked": (_P["weights_unmasked"], _sdpa_unmasked_weights),
})


# Exercise 7 may call the learner's functions of exercises 2 to 6: a failure caused by one of them
# names that exercise.
_SDPA_PREREQUISITES = MappingProxyType({"attention_scores": (check_attention_scores, "exercise 2"),
                                        "causal_mask": (check_causal_mask, "exercise 3"),
                                        "apply_mask": (check_apply_mask, "exercise 4"),
                                        "padding_mask": (check_padding_mask, "exercise 5"),
                                        "masked_softmax": (check_masked_softmax, "exercise 6")})


def check_scaled_dot_product_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                                       B: int = 2, H: int = 3, T_q: int = 5, T_k: int = 7, d_k: int = 11,
                                       d_v: int = 13, T: int = 6) -> None:
    """scaled_dot_product_attention(q, k, v, mask=None) -> (output, weights), as F.scaled_dot_product_attention."""
    gen = torch.Generator().manual_seed(seed)

    def qkv(*lead: int, tq: int = T_q, tk: int = T_k) -> tuple[torch.Tensor, ...]:
        return (_randn(gen, *lead, tq, d_k, dtype=dtype), _randn(gen, *lead, tk, d_k, dtype=dtype),
                _randn(gen, *lead, tk, d_v, dtype=dtype))

    sizes3 = dict(B=B, T_q=T_q, T_k=T_k, d_k=d_k, d_v=d_v)
    sizes4 = dict(B=B, H=H, T_q=T_q, T_k=T_k, d_k=d_k, d_v=d_v)
    sizes_causal = dict(B=B, T=T, d_k=d_k, d_v=d_v)
    names = ("q", "k", "v", "mask")
    cases = [
        Case(qkv(B), sizes3, names[:3], "no mask"),
        Case((*qkv(B), ref.padding_mask(_lengths(gen, B, T_k), T_k)), sizes3, names, "padding mask (B, 1, T_k)"),
        Case((*qkv(B, tq=T, tk=T), ref.causal_mask(T)), sizes_causal, names, "causal mask (T, T)"),
        Case((*qkv(B, H), _random_mask(gen, T_q, T_k, blocked_row=0)), sizes4, names,
             "4-D input; a (T_q, T_k) mask whose row 0 blocks every key"),
    ]

    def diagnose(got: Any, expected: Any, case: Case) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return None
        mask = case.args[3] if len(case.args) > 3 else None
        symptom = _weights_symptom(got[1], mask)
        if symptom is None and isinstance(got[1], torch.Tensor) and got[1].shape == expected[1].shape \
                and torch.allclose(got[1].detach().cpu().to(expected[1].dtype), expected[1], atol=1e-5):
            return "the weights are right but the output is not; the output is weights @ v"
        if symptom is None and isinstance(got[1], torch.Tensor) and got[1].shape == expected[1].shape:
            q, k = case.args[0], case.args[1]
            c = _probes.softmax_temperature(got[1], q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), mask)
            if c is not None:
                return _probes.temperature_message(c, "d_k")
            return ("the weights are wrong (while each allowed row sums to 1 and blocked keys get 0): the scores "
                    "that go into the softmax are wrong, so check Q Kᵀ and its scale before the output")
        return symptom

    check_function(fn, name="scaled_dot_product_attention", reference=ref.scaled_dot_product_attention,
                   cases=cases, outputs=("output", "weights"), mistakes=SDPA_MISTAKES,
                   forbidden=FORBIDDEN["ex7"], diagnose=diagnose, probes=SDPA_PROBES,
                   prerequisites=_SDPA_PREREQUISITES)


# ---------------------------------------------------------------------------------------------
# Exercise 8: count it
# ---------------------------------------------------------------------------------------------

COUNT_QUESTIONS = {
    "n_causal_allowed": 21,  # T = 6: 6 * 7 / 2
    "n_padding_allowed": 40,  # lengths (3, 5), T = 5: every query row allows `length` keys
    "var_unscaled": 64.0,  # Var(q . k) = d_k for unit-variance entries
    "var_scaled": 1.0,
    "n_score_entries": 2 * 12 * 1024 * 1024,  # B * H * T * T
    "score_bytes": 2 * 12 * 1024 * 1024 * 4,  # float32
}

_COUNT_MISTAKES = {
    "n_causal_allowed": [(36, "that is every (query, key) pair; the causal mask allows only keys at or before each query"),
                         (15, "that leaves out the diagonal; every token may attend to itself"),
                         (18, "that is half the matrix; the diagonal belongs to the allowed half too")],
    "n_padding_allowed": [(34, "a key-padding mask blocks keys only: padded query rows still attend to the real keys"),
                          (8, "count (query, key) pairs: every one of the T query rows allows `length` keys"),
                          (50, "that is every pair; keys at positions >= length are blocked")],
    "var_unscaled": [(8.0, "8 = sqrt(64) is the standard deviation; the variance of a sum of d_k unit-variance products is d_k")],
    "var_scaled": [(8.0, "dividing by sqrt(d_k) divides the variance by d_k"),
                   (1 / 64, "dividing by sqrt(d_k) divides the variance by (sqrt(d_k))^2 = d_k, not d_k^2")],
    "n_score_entries": [(1024 * 1024, "that is one head of one sequence; multiply by B and H"),
                        (12 * 1024 * 1024, "that is one sequence; multiply by B = 2 too")],
    "score_bytes": [(2 * 12 * 1024 * 1024 * 2, "float32 takes 4 bytes per number, not 2"),
                    (2 * 12 * 1024 * 1024 * 8, "float32 takes 4 bytes per number, not 8")],
}

_COUNT_HINTS = {
    "n_causal_allowed": "count the True entries of causal_mask(6): 1 + 2 + ... + 6",
    "n_padding_allowed": "each sequence contributes T query rows times `length` allowed keys",
    "var_unscaled": "q . k is a sum of d_k independent products, each with variance 1",
    "var_scaled": "Var(x / c) = Var(x) / c^2",
    "n_score_entries": "one T x T matrix per sequence and per head",
    "score_bytes": "entries times bytes per float32",
}


def check_counts(**answers: Any) -> None:
    """Exercise 8: counts of allowed pairs, score variances and score-matrix memory."""
    check_numbers(answers, COUNT_QUESTIONS, tolerance={"var_unscaled": 1e-9, "var_scaled": 1e-9},
                  mistakes=_COUNT_MISTAKES, hints=_COUNT_HINTS, name="check_counts",
                  integers=("n_causal_allowed", "n_padding_allowed", "n_score_entries", "score_bytes"))


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

# Each mistake is a complete, runnable wrong answer; each probe a variant no catalogue lists, named only
# when a wrong answer clearly is one of them.
MISTAKES = {
    "attention_scores": SCORES_MISTAKES,
    "causal_mask": CAUSAL_MISTAKES,
    "apply_mask": APPLY_MASK_MISTAKES,
    "padding_mask": PADDING_MISTAKES,
    "masked_softmax": SOFTMAX_MISTAKES,
    "scaled_dot_product_attention": SDPA_MISTAKES,
}
PROBES = {"attention_scores": SCORES_PROBES, "causal_mask": CAUSAL_PROBES, "padding_mask": PADDING_PROBES,
          "masked_softmax": SOFTMAX_PROBES, "scaled_dot_product_attention": SDPA_PROBES}


protect(ref, sys.modules[__name__])
