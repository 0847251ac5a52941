"""Checks for chapter 02 (multi-head, grouped-query and multi-query attention) and their mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes, axis sizes
and model configurations: the visible tests use the defaults, the hidden tests use others.

Answers may use chapter 01's `helpers.attention.scaled_dot_product_attention`; they may not call
`helpers.heads` (the reference), torch's multi-head attention, or, for grouped-query attention,
`F.scaled_dot_product_attention` (its `enable_gqa=True` does the grouping).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from .. import heads as ref
from ..attention import causal_mask, padding_mask, scaled_dot_product_attention
from . import probes as _probes
from .conventions import rank_aware_mask_advice
from .core import (
    Case,
    CheckFailed,
    Mistake,
    as_count,
    call_learner,
    check_function,
    check_numbers,
    protect,
    verify_environment,
)
from .core import randn as _randn
from .recompute import recheck_with_other_sizes  # imported here: it starts recording the cells run

__all__ = [
    "MISTAKES",
    "REAL_SIZES",
    "check_attention_param_count",
    "check_grouped_query_attention",
    "check_kv_cache_elements_per_token",
    "check_merge_heads",
    "check_multi_head_attention",
    "check_real_model_numbers",
    "check_split_heads",
    "recheck_real_model_numbers",
]


# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The learner writes these themselves: an answer that is or calls one of them is refused. Every
# exercise that asks for a function refuses the reference module; exercises 3 and 4 also refuse
# torch's multi-head attention, and exercise 4 F.scaled_dot_product_attention (its enable_gqa=True
# does the grouping). Exercise 7 asks for numbers.
_TORCH_MHA = (F.multi_head_attention_forward, torch.nn.MultiheadAttention.forward)
_TORCH_SDPA = (F.scaled_dot_product_attention,)
FORBIDDEN = {
    "ex1": (ref,),
    "ex2": (ref,),
    "ex3": (ref, *_TORCH_MHA),
    "ex4": (ref, *_TORCH_MHA, *_TORCH_SDPA),
    "ex5": (ref,),
    "ex6": (ref,),
    "ex7": (),
}


# ---------------------------------------------------------------------------------------------
# Shared: splitting and merging heads, right or wrong (exercises 1 to 4)
# ---------------------------------------------------------------------------------------------


def _split(x: torch.Tensor, n_heads: int, style: str = "right") -> torch.Tensor:
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    if style == "right":
        return x.reshape(B, T, n_heads, d_head).transpose(1, 2)  # (B, H, T, d_head)
    if style == "no_transpose":
        return x.reshape(B, n_heads, T, d_head)  # WRONG: rows of the new axes mix tokens
    if style == "interleaved":
        return x.reshape(B, T, d_head, n_heads).permute(0, 3, 1, 2)  # WRONG: head h gets features h, h+H, ...
    raise ValueError(style)


def _merge(x: torch.Tensor, style: str = "right") -> torch.Tensor:
    B, H, T, d_head = x.shape
    if style == "right":
        return x.transpose(1, 2).reshape(B, T, H * d_head)  # (B, T, d_model)
    if style == "no_transpose":
        return x.reshape(B, T, H * d_head)  # WRONG: the inverse of the no-transpose split
    if style == "interleaved":
        return x.permute(0, 2, 3, 1).reshape(B, T, H * d_head)  # WRONG: the inverse of the interleaved split
    raise ValueError(style)


def _values_moved(got: Any, expected: torch.Tensor) -> bool:
    """The symptom of a wrong split or merge: the right numbers, in the wrong places."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    return torch.equal(got.detach().cpu().flatten().sort().values, expected.detach().cpu().flatten().sort().values)


# ---------------------------------------------------------------------------------------------
# Shared: attention with heads, its mistakes, probes, inputs and diagnosis (exercises 3 and 4)
# ---------------------------------------------------------------------------------------------


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               scale: float | None = None, mask_style: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 01's attention, optionally with another scale or a mishandled mask."""
    if scale is not None:
        q = q * (scale * math.sqrt(q.shape[-1]))  # so that q k^T / sqrt(d_head) carries `scale`
    if mask_style == "ignored":
        mask = None
    elif mask_style == "inverted" and mask is not None:
        mask = ~mask
    return scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, d_head), (B, H, T, T)


def _heads_attention(*, split: str = "right", merge: str | None = None, out_proj: str = "right",
                     in_proj: str = "right", weights_out: str = "per_head", scale: str = "d_head",
                     mask_style: str = "right", kv_map: str = "interleave") -> Callable[..., Any]:
    """A complete grouped-query attention (MHA when n_kv_heads = n_heads) with mistakes built in."""
    merge = split if merge is None else merge

    def project(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w if in_proj == "untransposed" else x @ w.T

    def gqa(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
        d_model = x.shape[-1]
        q = _split(project(x, w_q), n_heads, split)  # (B, H, T, d_head)
        k = _split(project(x, w_k), n_kv_heads, split)  # (B, H_kv, T, d_head)
        v = _split(project(x, w_v), n_kv_heads, split)  # (B, H_kv, T, d_head)
        group = n_heads // n_kv_heads
        if kv_map == "interleave":
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # head h -> h // group
        else:
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)  # WRONG: head h -> h % H_kv
        factor = 1 / math.sqrt(d_model) if scale == "d_model" else None
        heads, weights = _attention(q, k, v, mask, factor, mask_style)
        out = _merge(heads, merge)  # (B, T, d_model)
        if out_proj == "right":
            out = out @ w_o.T
        elif out_proj == "untransposed":
            out = out @ w_o
        if weights_out == "averaged":
            weights = weights.mean(dim=1)  # WRONG: (B, T, T), one pattern for all heads
        return out, weights

    return gqa

_M = {
    "no_output_projection": (
        "the output projection is missing: after concatenating the heads, multiply by W_Oᵀ "
        "(out = merged @ w_o.T), which mixes what the heads found"),
    "head_averaged_weights": (
        "the weights are averaged over the heads, shape (B, T, T), which is what nn.MultiheadAttention "
        "returns by default; return one pattern per head, shape (B, H, T, T) (average_attn_weights=False)"),
    "scale_d_model": (
        "the scores are divided by sqrt(d_model); each head divides by the square root of its own "
        "width, sqrt(d_head) = sqrt(d_model / H)"),
    "mask_ignored": "the mask is ignored, so blocked keys still get weight",
}

_HEAD_MISTAKES = {
    "split_no_transpose": (
        ("the heads are split by reshaping (B, T, d_model) straight to (B, H, T, d_head) (and merged back "
         "the same way), so each head mixes several tokens' features; view as (B, T, H, d_head), then "
         "transpose(1, 2)"), {"split": "no_transpose"}),
    "merge_no_transpose": (
        ("the heads are merged by reshaping (B, H, T, d_head) straight to (B, T, d_model), so each output "
         "row mixes several tokens; transpose(1, 2) to (B, T, H, d_head) first, then reshape"),
        {"merge": "no_transpose"}),
    "wrong_axis": (
        ("the heads are split along the wrong axis: head h takes every H-th feature (h, h + H, ...) "
         "instead of the block h*d_head .. (h+1)*d_head - 1; view the feature axis as (H, d_head)"),
        {"split": "interleaved"}),
    "no_output_projection": (_M["no_output_projection"], {"out_proj": "none"}),
    "output_projection_untransposed": (
        ("the output projection uses w_o instead of w_o.T; nn.Linear-layout weights are "
         "(out_features, in_features), so y = x @ W.T"), {"out_proj": "untransposed"}),
    "projections_untransposed": (
        ("the Q, K, V and output projections use x @ W instead of x @ W.T; nn.Linear-layout weights are "
         "(out_features, in_features)"), {"in_proj": "untransposed", "out_proj": "untransposed"}),
    "head_averaged_weights": (_M["head_averaged_weights"], {"weights_out": "averaged"}),
    "scale_d_model": (_M["scale_d_model"], {"scale": "d_model"}),
    "mask_ignored": (_M["mask_ignored"], {"mask_style": "ignored"}),
    "inverted_mask": (
        ("the mask is inverted: in this course True = may attend (nn.MultiheadAttention's bool masks mean "
         "the opposite, True = blocked)"), {"mask_style": "inverted"}),
}


def _gqa_variant(*, proj: str = "qkv", kv_map: str = "ii", split: str = "right", merge: str = "right",
                 scale: Callable[[torch.Tensor, torch.Tensor], float] | None = None, swap_qk: bool = False,
                 weights_out: str = "masked", **softmax: Any) -> Callable[..., Any]:
    """A grouped-query attention with one mistake built in: `proj` names the weight used for q, k, v
    ("qkk": V projected with w_k); `kv_map` the layout of K's and V's heads ("i" repeat_interleave,
    "m" repeat); the rest as in probes.attention."""

    def gqa(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
        w = {"q": w_q, "k": w_k, "v": w_v}
        q = _split(x @ w[proj[0]].T, n_heads, split)  # (B, H, T, d_head)
        k = _split(x @ w[proj[1]].T, n_kv_heads, split)  # (B, H_kv, T, d_head)
        v = _split(x @ w[proj[2]].T, n_kv_heads, split)
        group = n_heads // n_kv_heads
        k, v = (t.repeat_interleave(group, dim=1) if how == "i" else t.repeat(1, group, 1, 1)
                for t, how in zip((k, v), kv_map))
        heads, weights = _probes.attention(q, k, v, mask, scale=scale, swap_qk=swap_qk, **softmax)
        if weights_out == "unmasked":
            weights = _probes.attention(q, k, v, None, scale=scale)[1]
        return _merge(heads, merge) @ w_o.T, weights

    return gqa


_WHICH = {"q": "Q", "k": "K", "v": "V"}
_PROJ_PROBES = {
    f"{p}_with_w_{wrong}": (f"{_WHICH[p]} is projected with w_{wrong}; {_WHICH[p]}'s projection is x @ w_{p}.T",
                            {"proj": "".join(wrong if c == p else c for c in "qkv")})
    for p in "qkv" for wrong in "qkv" if wrong != p
}
_HEAD_PROBES = {
    "no_scale": ("the scores are not divided by sqrt(d_head); each head's scores are Q Kᵀ / sqrt(d_head), "
                 "or the softmax saturates as d_head grows", {"scale": lambda q, k: 1.0}),
    "scale_d_head": ("the scores are divided by d_head; divide them by its square root, sqrt(d_head)",
                     {"scale": lambda q, k: 1.0 / q.shape[-1]}),
    **{key: (message, {"scale": f}) for key, (message, f)
       in _probes.scale_variants("d_head", self_attention=True).items()},
    "k_q_swapped": ("the scores are K Qᵀ, one row per key; they are Q Kᵀ, one row per query, so that the mask "
                    "and the softmax act on each query's keys", {"swap_qk": True}),
    **_PROJ_PROBES,
    "softmax_query_axis": ("the softmax runs over the query axis (dim=-2); each query's weights over the keys "
                           "must sum to 1 (dim=-1)", {"dim": -2}),
    "merge_interleaved": ("the heads are split right but merged interleaved (feature c of head h lands at "
                          "c*H + h); concatenate them: head h fills features h*d_head .. (h+1)*d_head - 1",
                          {"merge": "interleaved"}),
    "fill_zero": ("blocked scores are set to 0 before the softmax, but exp(0) = 1 still gives blocked keys "
                  "weight; set them to -inf", {"fill": "zero"}),
    "mask_after_softmax": ("the mask is applied after the softmax, so the remaining weights no longer sum to 1; "
                           "set blocked scores to -inf before the softmax", {"after": True}),
    "weights_unmasked": ("the weights returned are the softmax before masking, while the output uses masked "
                         "ones; return the masked weights", {"weights_out": "unmasked"}),
}


def _lengths(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """(B,) lengths: the first sequence full, the others random in 1..T-1."""
    lengths = torch.randint(1, max(T, 2), (B,), generator=gen).clamp(max=T)
    lengths[0] = T
    return lengths


def _weights(gen: torch.Generator, d_model: int, d_kv: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """w_q, w_k, w_v, w_o in nn.Linear layout, scaled like nn.Linear's initialisation (about 1/sqrt(d_model))."""
    s = 1 / math.sqrt(d_model)
    return (_randn(gen, d_model, d_model, dtype=dtype, scale=s), _randn(gen, d_kv, d_model, dtype=dtype, scale=s),
            _randn(gen, d_kv, d_model, dtype=dtype, scale=s), _randn(gen, d_model, d_model, dtype=dtype, scale=s))


def _reference_pieces(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The reference's per-head values V (B, H, T, d_head), the output weight w_o, and the mask."""
    x, w_q, w_k, w_v, w_o, n_heads = case.args[:6]
    rest = case.args[6:]
    n_kv = rest[0] if rest and isinstance(rest[0], int) else n_heads
    mask = rest[-1] if rest and isinstance(rest[-1], torch.Tensor) else None
    v = ref.repeat_kv(ref.split_heads(x @ w_v.T, n_kv), n_heads // n_kv)
    return v, w_o, mask


def _merge_misplaced(out: torch.Tensor, weights: torch.Tensor, case: Case) -> bool:
    """The output is the right heads (weights @ V) merged into the wrong places, then projected by W_O."""
    v, w_o, _ = _reference_pieces(case)
    try:
        merged = torch.linalg.solve(w_o.double(), out.detach().double().transpose(-2, -1)).transpose(-2, -1)
    except RuntimeError:  # a singular W_O: nothing to conclude
        return False
    right = ref.merge_heads(weights.double() @ v.double())
    return bool(torch.allclose(merged.flatten().sort().values, right.flatten().sort().values, rtol=1e-4, atol=1e-5))


def _attention_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """Which step went wrong first, from the learner's own weights: at or before the softmax, or after it."""
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not isinstance(got[1], torch.Tensor):
        return None
    w_got, w_exp = got[1].detach().cpu(), expected[1].detach().cpu()
    out_got, out_exp = got[0], expected[0]
    if (isinstance(out_got, torch.Tensor) and out_got.shape == out_exp.shape
            and torch.allclose(out_got.detach().cpu().double(), out_exp.double(), rtol=1e-4, atol=1e-6)):
        return ("the output is right but the weights returned are not: return the weights the output was computed "
                "with, one (B, H, T, T) pattern per head, after the mask and the softmax")
    if w_got.shape == w_exp.shape and w_got.dtype == w_exp.dtype and torch.allclose(w_got, w_exp, rtol=1e-4, atol=1e-6):
        if _merge_misplaced(got[0].detach().cpu(), w_exp, case):
            return ("the attention weights and each head's output (weights @ V) are right, but the merge puts them "
                    "in the wrong places: transpose back to (B, T, H, d_head), then reshape to (B, T, d_model)")
        return ("the attention weights are right but the output is not, so a step after the weights is wrong: "
                "V's projection (x @ w_v.T) or its heads, weights @ V, the merge, or the output projection @ w_o.T")
    sums = w_got.sum(dim=-1)
    if ((sums - 1).abs() > 1e-4).any() and (sums != 0).any():
        return "rows of the weights do not sum to 1; each head's softmax runs over the keys (dim=-1)"
    if w_got.shape == w_exp.shape and w_got.is_floating_point():
        _, _, mask = _reference_pieces(case)
        logits = torch.log(w_exp.double().clamp_min(1e-300))  # the right scores, up to a constant per row
        c = _probes.softmax_temperature(w_got, logits, mask)
        if c is not None and abs(c - 1) > 1e-3:
            return _probes.temperature_message(c, "d_head")
        return ("the attention weights (the second output) are already wrong, so the mistake is at or before the "
                "softmax: the Q or K projection, the split into heads, Q Kᵀ and its scale, or the mask")
    return None


# ---------------------------------------------------------------------------------------------
# Shared: checking a counting function (exercises 5 and 6)
# ---------------------------------------------------------------------------------------------


def _as_count(name: str, value: Any) -> int:
    """An integer count: an int or a NumPy integer; a float (even 3.0) or a tensor is named (core.as_count)."""
    return as_count(name, value, verb="returned")


def _check_counts(fn: Any, *, name: str, reference: Callable[..., int], configs: Sequence[tuple],
                  arg_names: tuple[str, ...], mistakes: Sequence[Mistake], hint: str,
                  forbidden: Sequence[Any]) -> None:
    verify_environment()
    for config in configs:
        case = Case(tuple(config), {}, arg_names)
        expected = reference(*config)
        got = _as_count(name, call_learner(fn, name, case, forbidden))
        if got == expected:
            continue
        for mistake in mistakes:
            if mistake.impl(*config) == got:
                raise CheckFailed(f"{name}({case.describe_inputs()}) = {got}: {mistake.message}")
        raise CheckFailed(f"{name}({case.describe_inputs()}) = {got} is not right; {hint}")
    verify_environment()
    print(f"✓ {name}: right for all {len(configs)} configurations")


# ---------------------------------------------------------------------------------------------
# Exercise 1: split the model dimension into heads
# ---------------------------------------------------------------------------------------------

SPLIT_MISTAKES = (
    Mistake("no_transpose",
            "x was reshaped straight to (B, H, T, d_head) without the transpose, so a 'head' holds pieces "
            "of several tokens; view it as (B, T, H, d_head) first, then transpose(1, 2)",
            lambda x, n_heads: _split(x, n_heads, "no_transpose")),
    Mistake("wrong_axis",
            "the heads are split along the wrong axis: head h gets every H-th feature (h, h + H, ...); "
            "head h owns the block of features h*d_head .. (h+1)*d_head - 1, so view the last axis as "
            "(H, d_head), not (d_head, H)",
            lambda x, n_heads: _split(x, n_heads, "interleaved")),
    Mistake("head_axis_not_moved",
            "the feature axis is split but the head axis is not moved in front of the tokens: the result "
            "is (B, T, H, d_head); transpose(1, 2) makes it (B, H, T, d_head)",
            lambda x, n_heads: _split(x, n_heads).transpose(1, 2)),
    Mistake("d_head_before_T",
            "the last two axes are swapped, (B, H, d_head, T); swap only the token and head axes of "
            "(B, T, H, d_head): transpose(1, 2)",
            lambda x, n_heads: _split(x, n_heads).transpose(2, 3)),
)


def check_split_heads(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                      B: int = 2, T: int = 5, H: int = 3, d_head: int = 4) -> None:
    """split_heads(x, n_heads): (B, T, d_model) -> (B, H, T, d_head)."""
    gen = torch.Generator().manual_seed(seed)
    d_model = H * d_head
    sizes = {"B": B, "T": T, "H": H, "d_head": d_head, "d_model": d_model}
    transposed = _randn(gen, B, d_model, T, dtype=dtype).transpose(1, 2)  # (B, T, d_model), not contiguous
    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype), H), sizes, ("x", "n_heads")),
        Case((transposed, H), sizes, ("x", "n_heads"), "x not contiguous in memory (a transposed view)"),
    ]

    def diagnose(got: Any, expected: Any, case: Case) -> str | None:
        if not _values_moved(got, expected):
            return None
        return ("the heads hold the right numbers in the wrong places: heads[b, h, t] must be "
                "x[b, t, h*d_head:(h+1)*d_head]")

    check_function(fn, name="split_heads", reference=ref.split_heads, cases=cases, outputs=("heads",),
                   mistakes=SPLIT_MISTAKES, forbidden=FORBIDDEN["ex1"], diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 2: merge the heads back
# ---------------------------------------------------------------------------------------------

MERGE_MISTAKES = (
    Mistake("no_transpose",
            "the heads were reshaped straight from (B, H, T, d_head) to (B, T, d_model) without moving "
            "the head axis back, so each output row mixes several tokens; transpose(1, 2) to "
            "(B, T, H, d_head) first, then reshape",
            lambda x: _merge(x, "no_transpose")),
    Mistake("wrong_axis",
            "the heads' features are interleaved (feature c of head h lands at c*H + h); concatenate them "
            "instead: head h fills features h*d_head .. (h+1)*d_head - 1",
            lambda x: _merge(x, "interleaved")),
    Mistake("heads_summed",
            "the heads are summed into (B, T, d_head); merging puts them side by side, "
            "(B, T, H * d_head) = (B, T, d_model)",
            lambda x: x.sum(dim=1)),
)


def check_merge_heads(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                      B: int = 2, T: int = 5, H: int = 3, d_head: int = 4) -> None:
    """merge_heads(x): (B, H, T, d_head) -> (B, T, H * d_head), the inverse of split_heads."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T, "H": H, "d_head": d_head, "d_model": H * d_head}
    cases = [
        Case((_randn(gen, B, H, T, d_head, dtype=dtype),), sizes, ("x",)),
        Case((_randn(gen, B, T, H, d_head, dtype=dtype).transpose(1, 2),), sizes, ("x",),
             "x not contiguous in memory, as split_heads returns it"),
    ]

    def diagnose(got: Any, expected: Any, case: Case) -> str | None:
        if not _values_moved(got, expected):
            return None
        return ("the merged tensor holds the right numbers in the wrong places: merged[b, t, "
                "h*d_head:(h+1)*d_head] must be x[b, h, t]")

    check_function(fn, name="merge_heads", reference=ref.merge_heads, cases=cases, outputs=("merged",),
                   mistakes=MERGE_MISTAKES, forbidden=FORBIDDEN["ex2"], diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 3: multi-head attention from weights
# ---------------------------------------------------------------------------------------------

# Exercises 3 and 4 may call the learner's own split_heads and merge_heads: when they fail and one
# of those fails its own check, the message names exercise 1 or 2 as the place to fix first.
_HEAD_PREREQUISITES = MappingProxyType({"split_heads": (check_split_heads, "exercise 1"),
                                        "merge_heads": (check_merge_heads, "exercise 2")})


def _mha(**mistakes: str) -> Callable[..., Any]:
    gqa = _heads_attention(**mistakes)

    def mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        return gqa(x, w_q, w_k, w_v, w_o, n_heads, n_heads, mask)

    return mha


MHA_MISTAKES = tuple(Mistake(key, message, _mha(**how)) for key, (message, how) in _HEAD_MISTAKES.items())


def _mha_of(gqa: Callable[..., Any]) -> Callable[..., Any]:
    def mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        return gqa(x, w_q, w_k, w_v, w_o, n_heads, n_heads, mask)
    return mha


MHA_PROBES = _probes.probes({key: (message, _mha_of(_gqa_variant(**how)))
                             for key, (message, how) in _HEAD_PROBES.items()})


@rank_aware_mask_advice()  # helpers.shapes' mask advice, for per-head scores
def check_multi_head_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                               B: int = 2, T: int = 5, H: int = 3, d_head: int = 4) -> None:
    """multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None) -> (out, weights)."""
    gen = torch.Generator().manual_seed(seed)
    d_model = H * d_head
    sizes = {"B": B, "T": T, "H": H, "d_head": d_head, "d_model": d_model}
    names = ("x", "w_q", "w_k", "w_v", "w_o", "n_heads", "mask")

    def inputs() -> tuple:
        return (_randn(gen, B, T, d_model, dtype=dtype), *_weights(gen, d_model, d_model, dtype), H)

    pad = padding_mask(_lengths(gen, B, T), T)[:, None]  # (B, 1, 1, T)
    cases = [
        Case(inputs(), sizes, names[:6], "no mask"),
        Case((*inputs(), causal_mask(T)), sizes, names, "causal mask (T, T)"),
        Case((*inputs(), pad & causal_mask(T)), sizes, names, "padding & causal mask (B, 1, T, T)"),
    ]
    check_function(fn, name="multi_head_attention", reference=ref.multi_head_attention, cases=cases,
                   outputs=("output", "weights"), mistakes=MHA_MISTAKES, forbidden=FORBIDDEN["ex3"],
                   diagnose=_attention_diagnose, probes=MHA_PROBES, prerequisites=_HEAD_PREREQUISITES)


# ---------------------------------------------------------------------------------------------
# Exercise 4: grouped-query attention
# ---------------------------------------------------------------------------------------------

GQA_MISTAKES = (
    Mistake("kv_head_modulo",
            "query head h reads key/value head h % H_kv (as kv.repeat does); it should read head "
            "h // (H / H_kv), so each run of H / H_kv consecutive query heads shares one K/V head "
            "(repeat_interleave along the head axis). The modulo pairing could be trained just as well, "
            "but it is not how trained checkpoints store their heads, so with real weights it attends "
            "with the wrong keys",
            _heads_attention(kv_map="modulo")),
    *(Mistake(key, message, _heads_attention(**how)) for key, (message, how) in _HEAD_MISTAKES.items()
      if key in ("no_output_projection", "head_averaged_weights", "scale_d_model", "mask_ignored",
                 "split_no_transpose", "wrong_axis")),
)

_KV_PROBES = {
    "v_kv_modulo": ("V's heads are laid out with repeat (query head h reads V head h % H_kv) while K's use "
                    "repeat_interleave; both map query head h to K/V head h // (H / H_kv)", {"kv_map": "im"}),
    "k_kv_modulo": ("K's heads are laid out with repeat (query head h reads K head h % H_kv) while V's use "
                    "repeat_interleave; both map query head h to K/V head h // (H / H_kv)", {"kv_map": "mi"}),
}

# In grouped-query attention w_q is (d_model, d_model) and w_k, w_v are (d_kv, d_model): mixing w_q with
# the others cannot run there, so only K and V can be swapped.
GQA_PROBES = _probes.probes({key: (message, _gqa_variant(**how))
                             for key, (message, how) in {**_HEAD_PROBES, **_KV_PROBES}.items()
                             if key not in _PROJ_PROBES or key in ("k_with_w_v", "v_with_w_k")})


@rank_aware_mask_advice()  # helpers.shapes' mask advice, for per-head scores
def check_grouped_query_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                                  B: int = 3, T: int = 5, H: int = 6, H_kv: int = 2, d_head: int = 4) -> None:
    """grouped_query_attention(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None) -> (out, weights).

    Runs the given (H, H_kv), then multi-query (H_kv = 1) and plain multi-head (H_kv = H) attention.
    """
    gen = torch.Generator().manual_seed(seed)
    d_model = H * d_head
    names = ("x", "w_q", "w_k", "w_v", "w_o", "n_heads", "n_kv_heads", "mask")

    def case(n_kv: int, mask: torch.Tensor | None, note: str) -> Case:
        sizes = {"B": B, "T": T, "H": H, "H_kv": n_kv, "d_head": d_head, "d_model": d_model, "d_kv": n_kv * d_head}
        args = (_randn(gen, B, T, d_model, dtype=dtype), *_weights(gen, d_model, n_kv * d_head, dtype), H, n_kv)
        return Case(args if mask is None else (*args, mask), sizes, names[:len(args) + (mask is not None)], note)

    pad = padding_mask(_lengths(gen, B, T), T)[:, None]  # (B, 1, 1, T)
    cases = [
        case(H_kv, causal_mask(T), f"GQA, {H} query heads sharing {H_kv} K/V heads, causal mask"),
        case(H_kv, None, f"GQA, {H} query heads sharing {H_kv} K/V heads, no mask"),
        case(1, pad, "MQA (n_kv_heads = 1), padding mask (B, 1, 1, T)"),
        case(H, causal_mask(T), "MHA (n_kv_heads = n_heads), causal mask"),
    ]
    check_function(fn, name="grouped_query_attention", reference=ref.grouped_query_attention, cases=cases,
                   outputs=("output", "weights"), mistakes=GQA_MISTAKES,
                   forbidden=FORBIDDEN["ex4"], diagnose=_attention_diagnose, probes=GQA_PROBES,
                   prerequisites=_HEAD_PREREQUISITES)


# ---------------------------------------------------------------------------------------------
# Exercise 5: count the parameters of Q, K, V and the output projection
# ---------------------------------------------------------------------------------------------


def _count_params(d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False, *,
                  kv: str = "right", out: bool = True, bias_style: str = "right", per_head: bool = False) -> int:
    """attention_param_count with mistakes built in."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_head = d_model // n_heads
    d_kv = d_model if kv == "full" else n_kv_heads * d_head
    if per_head:  # WRONG: every head's projection counted as d_head x d_head
        weights = (n_heads + 2 * n_kv_heads + n_heads) * d_head * d_head
    else:
        weights = d_model * d_model + 2 * d_kv * d_model + (d_model * d_model if out else 0)
    if not bias or bias_style == "none":
        return weights
    biases = {"right": d_model + 2 * d_kv + (d_model if out else 0),
              "full_width": 4 * d_model if out else 3 * d_model,
              "once": d_model,
              "qkv_only": d_model + 2 * d_kv}[bias_style]
    return weights + biases


PARAM_COUNT_MISTAKES = (
    Mistake("kv_heads_ignored",
            "K and V are counted as d_model x d_model; with n_kv_heads key/value heads each is "
            "(n_kv_heads * d_head) x d_model, where d_head = d_model / n_heads",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, kv="full")),
    Mistake("no_output_projection",
            "one d_model x d_model projection is not counted: the output projection W_O, or W_Q (both are "
            "d_model x d_model, plus a bias of d_model when bias=True, so the count cannot tell which)",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, out=False)),
    Mistake("per_head_square",
            "each head's projection was counted as d_head x d_head; it maps all d_model input features to "
            "d_head outputs, a d_head x d_model block of the weight",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, per_head=True)),
    Mistake("bias_ignored",
            "bias=True gives each of the four projections a bias vector (one number per output feature), "
            "and none was counted",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, bias_style="none")),
    Mistake("bias_full_width",
            "the K and V biases were counted as d_model numbers each; a bias has one number per output "
            "feature, n_kv_heads * d_head for K and for V",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, bias_style="full_width")),
    Mistake("bias_once",
            "only one bias vector (d_model numbers) was counted; each of the four projections has its own",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, bias_style="once")),
    Mistake("bias_qkv_only",
            "the output projection's bias is not counted; with bias=True all four projections have one",
            lambda d, h, kv=None, bias=False: _count_params(d, h, kv, bias, bias_style="qkv_only")),
)


# (d_model, n_heads, n_kv_heads, bias); None means n_kv_heads = n_heads.
PARAM_CONFIGS = ((512, 8, None, False), (512, 8, 2, False), (768, 12, None, True), (512, 8, 2, True),
                 (64, 4, 1, True))


def check_attention_param_count(fn: Any, *, configs: Sequence[tuple] = PARAM_CONFIGS) -> None:
    """attention_param_count(d_model, n_heads, n_kv_heads=None, bias=False) -> int."""
    _check_counts(fn, name="attention_param_count", reference=ref.attention_param_count, configs=configs,
                  arg_names=("d_model", "n_heads", "n_kv_heads", "bias"), mistakes=PARAM_COUNT_MISTAKES,
                  hint="add up out_features x in_features for W_Q, W_K, W_V and W_O, plus out_features for "
                       "each bias when bias=True", forbidden=FORBIDDEN["ex5"])


# ---------------------------------------------------------------------------------------------
# Exercise 6: the KV cache, per token
# ---------------------------------------------------------------------------------------------

KV_CACHE_MISTAKES = (
    Mistake("k_or_v_only",
            "only one of K and V is counted; the cache stores both for every token, so multiply by 2",
            lambda n_layers, n_kv_heads, d_head: n_layers * n_kv_heads * d_head),
    Mistake("one_layer",
            "this is one layer's cache; every layer keeps its own keys and values, so multiply by n_layers",
            lambda n_layers, n_kv_heads, d_head: 2 * n_kv_heads * d_head),
    Mistake("bytes_fp16",
            "this is bytes in fp16 (2 per number); the function counts numbers (elements), not bytes",
            lambda n_layers, n_kv_heads, d_head: 4 * n_layers * n_kv_heads * d_head),
)


# (n_layers, n_kv_heads, d_head)
KV_CONFIGS = ((32, 32, 128), (32, 8, 128), (12, 12, 64), (2, 1, 3))


def check_kv_cache_elements_per_token(fn: Any, *, configs: Sequence[tuple] = KV_CONFIGS) -> None:
    """kv_cache_elements_per_token(n_layers, n_kv_heads, d_head) -> int."""
    _check_counts(fn, name="kv_cache_elements_per_token", reference=ref.kv_cache_elements_per_token,
                  configs=configs, arg_names=("n_layers", "n_kv_heads", "d_head"), mistakes=KV_CACHE_MISTAKES,
                  hint="each layer caches one key and one value vector of d_head numbers per K/V head",
                  forbidden=FORBIDDEN["ex6"])


# ---------------------------------------------------------------------------------------------
# Exercise 7: what GQA and MQA save at a real model size
# ---------------------------------------------------------------------------------------------

# The sizes exercise 7 uses (the notebook prints them in a read-only cell). Llama-2-7B's attention
# (multi-head), the same layer with 8 K/V heads (Llama-3-8B and Mistral-7B use this GQA shape) and
# with one (MQA); GPT-2 small, whose projections have biases. fp16 cache of one 4096-token sequence.
REAL_SIZES = MappingProxyType({"n_layers": 32, "d_model": 4096, "n_heads": 32, "n_kv_heads_gqa": 8, "n_kv_heads_mqa": 1,
                                   "context": 4096, "bytes_per_element": 2, "gpt2_d_model": 768, "gpt2_n_heads": 12})


def _real_numbers(s: Any = REAL_SIZES) -> tuple[dict[str, float], dict[str, list[tuple[float, str]]]]:
    """The answers of exercise 7 for the sizes `s` (REAL_SIZES, or other sizes for the hidden test),
    and the wrong values the common mistakes give."""
    d_head = s["d_model"] // s["n_heads"]
    kv_heads = {"mha": s["n_heads"], "gqa": s["n_kv_heads_gqa"], "mqa": s["n_kv_heads_mqa"]}
    expected: dict[str, float] = {}
    wrong: dict[str, list[tuple[float, str]]] = {}

    def add(key: str, value: float, message: str) -> None:
        known = wrong.setdefault(key, [])
        if value == expected[key]:
            return
        for i, (v, first) in enumerate(known):
            if v == value:  # two mistakes give the same number: name both
                known[i] = (v, f"{first}; or else {message}")
                return
        known.append((value, message))

    for variant, h_kv in kv_heads.items():
        key = f"params_{variant}"
        args = (s["d_model"], s["n_heads"], h_kv, False)
        expected[key] = ref.attention_param_count(*args)
        add(key, expected[key] * s["n_layers"], f"that is all {s['n_layers']} layers; the question asks for one layer")
        for mistake in PARAM_COUNT_MISTAKES:
            add(key, mistake.impl(*args), mistake.message)
    gpt2 = (s["gpt2_d_model"], s["gpt2_n_heads"], None, True)
    expected["params_gpt2"] = ref.attention_param_count(*gpt2)
    for mistake in PARAM_COUNT_MISTAKES:
        add("params_gpt2", mistake.impl(*gpt2), mistake.message)

    tokens_bytes = s["context"] * s["bytes_per_element"]
    for variant, h_kv in kv_heads.items():
        key = f"kv_bytes_{variant}"
        per_token = ref.kv_cache_elements_per_token(s["n_layers"], h_kv, d_head)
        expected[key] = per_token * tokens_bytes
        if variant != "mha":
            add(key, ref.kv_cache_elements_per_token(s["n_layers"], s["n_heads"], d_head) * tokens_bytes,
                "the cache holds only the n_kv_heads key/value heads, not one K and V per query head")
        add(key, per_token * s["context"], "that counts numbers; multiply by 2 bytes per fp16 number")
        add(key, per_token * s["context"] * 4, "fp16 takes 2 bytes per number, not 4")
        add(key, per_token * s["bytes_per_element"], f"that is one token; the sequence has {s['context']} tokens")
        for mistake in KV_CACHE_MISTAKES[:2]:
            add(key, mistake.impl(s["n_layers"], h_kv, d_head) * tokens_bytes, mistake.message)
    expected["kv_saving_gqa"] = expected["kv_bytes_mha"] / expected["kv_bytes_gqa"]
    add("kv_saving_gqa", expected["kv_bytes_gqa"] / expected["kv_bytes_mha"],
        "that is GQA's cache as a fraction of MHA's; the saving factor is MHA's bytes / GQA's bytes")
    add("kv_saving_gqa", expected["params_mha"] / expected["params_gqa"],
        "that is the ratio of attention parameters; the question asks about the KV cache")
    return expected, wrong


_REAL_HINTS = {
    "params_mha": "W_Q, W_K, W_V and W_O are each d_model x d_model",
    "params_gqa": "W_K and W_V are (n_kv_heads * d_head) x d_model with d_head = d_model / n_heads",
    "params_mqa": "one K/V head: W_K and W_V are d_head x d_model",
    "params_gpt2": "four 768 x 768 weights plus four biases of 768",
    "kv_bytes_mha": "2 (K and V) x n_layers x n_kv_heads x d_head numbers per token, x tokens, x 2 bytes",
    "kv_bytes_gqa": "as for MHA, with 8 K/V heads instead of 32",
    "kv_bytes_mqa": "as for MHA, with a single K/V head",
    "kv_saving_gqa": "divide MHA's cache bytes by GQA's",
}


def check_real_model_numbers(**answers: Any) -> None:
    """Exercise 7: attention parameters and KV-cache bytes for MHA, GQA and MQA at real sizes."""
    expected, wrong = _real_numbers()
    check_numbers(answers, expected, tolerance={"kv_saving_gqa": 1e-9}, mistakes=wrong, hints=_REAL_HINTS,
                  name="check_real_model_numbers", integers=[k for k in expected if k != "kv_saving_gqa"])


# The hidden test re-runs the learner's cells with these sizes instead (see helpers.checks.recompute):
# every size differs from REAL_SIZES but MQA's single K/V head, d_head (64) too, and they are
# consistent (d_model divisible by n_heads, n_heads by n_kv_heads_gqa). fp32 cache: 4 bytes.
OTHER_SIZES = (MappingProxyType({"n_layers": 24, "d_model": 1536, "n_heads": 24, "n_kv_heads_gqa": 4, "n_kv_heads_mqa": 1,
                                 "context": 1024, "bytes_per_element": 4, "gpt2_d_model": 1024, "gpt2_n_heads": 16}),)
SIZES_MARKER = "# Read-only: the sizes the questions use."


def recheck_real_model_numbers(*, cells: Sequence[str] | None = None, namespace: Any = None) -> None:
    """Exercise 7's hidden test: the learner's cells after the sizes cell, re-run with OTHER_SIZES,
    give the answers that follow from those sizes (a typed-in number does not). `cells` and
    `namespace` replace IPython's history and namespace (for tests)."""
    recheck_with_other_sizes(tuple(_REAL_HINTS), sizes_marker=SIZES_MARKER, original=REAL_SIZES, variants=OTHER_SIZES,
                             expected_for=lambda sizes: _real_numbers(sizes)[0], checks=("check_real_model_numbers",),
                             tests=("recheck_real_model_numbers",), tolerance={"kv_saving_gqa": 1e-9}, cells=cells,
                             namespace=namespace)


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

# Each mistake is a complete, runnable wrong answer; each probe a variant no catalogue lists, named only
# when a wrong answer clearly is one of them.
MISTAKES = {
    "split_heads": SPLIT_MISTAKES,
    "merge_heads": MERGE_MISTAKES,
    "multi_head_attention": MHA_MISTAKES,
    "grouped_query_attention": GQA_MISTAKES,
    "attention_param_count": PARAM_COUNT_MISTAKES,
    "kv_cache_elements_per_token": KV_CACHE_MISTAKES,
}
PROBES = {"multi_head_attention": MHA_PROBES, "grouped_query_attention": GQA_PROBES}


protect(ref, sys.modules[__name__])
