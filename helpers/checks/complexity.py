"""Checks for chapter 07 (FLOPs, KV-cache memory, cached decoding, the online softmax) and their mistakes.

Each `check_*` takes the learner's function (or numbers), runs it on inputs it makes, and raises
`CheckFailed` with one sentence when something is wrong. Keyword arguments choose other seeds,
dtypes, sizes and configurations: the visible tests use the defaults, the hidden tests others.

FLOP convention everywhere: one multiply-add is 2 FLOPs, and only matrix products count (what
torch.utils.flop_counter.FlopCounterMode counts). Answers may use chapter 01's
`helpers.attention.scaled_dot_product_attention`; they may not call `helpers.complexity` (the
reference), `helpers.blocks` (its cache and generation), or, for the online softmax, any torch
attention (`F.scaled_dot_product_attention`) or softmax: the point is to write the running
statistics yourself.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from .. import blocks as _blocks
from .. import complexity as ref
from ..attention import scaled_dot_product_attention
from ..numerics import close
from ..shapes import fmt_shape
from . import probes as _probes
from .conventions import rank_aware_mask_advice
from .core import (
    Case,
    CheckFailed,
    Mistake,
    ShapeRecorder,
    as_count,
    call_learner,
    check_function,
    check_numbers,
    protect,
    refuse_answers_computed_by,
    verify_environment,
)
from .core import randn as _randn
from .recompute import recheck_with_other_sizes  # imported here: it starts recording the cells run

__all__ = [
    "MISTAKES",
    "REAL_CONFIGS",
    "check_attend_with_cache",
    "check_attention_flops",
    "check_decode_roofline",
    "check_embed_new_tokens",
    "check_kv_cache_bytes",
    "check_kv_cache_numbers",
    "check_mlp_flops",
    "check_online_softmax_attention",
]

# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

_COURSE = (ref, _blocks)
_TORCH_ATTENTION = (F.scaled_dot_product_attention, torch.softmax, F.softmax, torch.Tensor.softmax,
                    torch.logsumexp, torch.Tensor.logsumexp)
FORBIDDEN = {
    "ex1": _COURSE,
    "ex2": _COURSE,
    "ex3": _COURSE,
    "ex4": _COURSE,
    "ex5": _COURSE,
    "ex6": _COURSE + (F.scaled_dot_product_attention,),
    "ex7": _COURSE + _TORCH_ATTENTION,
    "ex8": _COURSE,
}


# ---------------------------------------------------------------------------------------------
# Shared: counts checked on several configurations (exercises 1 to 3)
# ---------------------------------------------------------------------------------------------


def _as_count(name: str, value: Any) -> int:
    """An integer count: an int or a NumPy integer; a float (even 3.0) or a tensor is named (core.as_count)."""
    return as_count(name, value, verb="is")


def _normalise(name: str, got: Any, keys: Sequence[str] | None) -> Any:
    if keys is None:
        return _as_count(name, got)
    if not isinstance(got, dict) or set(got) != set(keys):
        shown = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise CheckFailed(f"{name} should return a dict with the keys {', '.join(keys)}; got {shown}")
    return {key: _as_count(f"{name}[{key!r}]", got[key]) for key in keys}


def _factor_symptom(got: Sequence[Any], expected: Sequence[Any], configs: Sequence[tuple],
                    arg_names: tuple[str, ...], keys: Sequence[str] | None) -> str | None:
    """The sentence for counts that are off, on every configuration, by one argument's value (a
    factor too many or missing), or None. For dict counts, each wrong part is looked at alone."""
    parts = [None] if keys is None else list(keys)
    found = []
    for part in parts:
        g = [x if part is None else x[part] for x in got]
        e = [x if part is None else x[part] for x in expected]
        if g == e:
            continue
        if any(x == 0 for x in e):
            return None
        ratios = [a / b for a, b in zip(g, e)]
        label = "the count" if part is None else f"{part}"
        named = None
        for index, arg in enumerate(arg_names):
            values = [c[index] if index < len(c) else None for c in configs]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 1 for v in values):
                continue
            if all(math.isclose(r, 1 / v, rel_tol=1e-9) for r, v in zip(ratios, values)):
                named = f"{label} lacks a factor of {arg} (it is {arg} times too small on every configuration)"
            elif all(math.isclose(r, v, rel_tol=1e-9) for r, v in zip(ratios, values)):
                named = f"{label} has a factor of {arg} too many ({arg} times too large on every configuration)"
            if named:
                break
        if named is None:
            return None
        found.append(named)
    return "; ".join(found) if found else None


def _check_counts(fn: Any, *, name: str, reference: Callable[..., Any], configs: Sequence[tuple],
                  arg_names: tuple[str, ...], mistakes: Sequence[Mistake], hint: str,
                  keys: Sequence[str] | None = None, probes: Sequence[Mistake] = (),
                  forbidden: Sequence[Any]) -> None:
    """Every configuration must give the reference's count. A catalogued mistake, then a probe, is
    named when it gives the learner's counts on every configuration (one configuration alone can fit
    several); else a factor of one argument too many or missing; else the wrong part."""
    verify_environment()
    cases = [Case(tuple(config), {}, arg_names) for config in configs]
    got = [_normalise(name, call_learner(fn, name, case, forbidden), keys) for case in cases]
    expected = [reference(*config) for config in configs]
    if got == expected:
        verify_environment()
        print(f"✓ {name}: right for all {len(configs)} configurations")
        return
    first = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
    where = f"{name}({cases[first].describe_inputs()})"
    for mistake in (*mistakes, *probes):
        if all(mistake.impl(*config) == g for config, g in zip(configs, got)):
            raise CheckFailed(f"{where}: {mistake.message}")
    symptom = _factor_symptom(got, expected, configs, arg_names, keys)
    if symptom:
        raise CheckFailed(f"{where}: {symptom}; {hint}")
    if keys is not None:
        wrong = [k for k in keys if got[first][k] != expected[first][k]]
        raise CheckFailed(f"{where}: {', '.join(wrong)} not right (got {got[first][wrong[0]]} for {wrong[0]}); {hint}")
    raise CheckFailed(f"{where} = {got[first]} is not right; {hint}")


# ---------------------------------------------------------------------------------------------
# Exercise 1: attention FLOPs, part by part
# ---------------------------------------------------------------------------------------------


_PARTS = ("projections", "scores", "values", "output")


def _attention_counts(d_model, n_heads, T, n_kv_heads=None, *, mac=2, kv="right", score_width="d_head",
                      output=True):
    """attention_flops with mistakes built in; returns the four parts."""
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    d_head = d_model // n_heads
    d_kv = d_model if kv == "n_heads" else n_kv_heads * d_head
    width = d_model if score_width == "d_model" else d_head
    return {"projections": mac * T * d_model * (d_model + 2 * d_kv),
            "scores": mac * n_heads * T * T * width,
            "values": mac * n_heads * T * T * width,
            "output": mac * T * d_model * d_model if output else 0}


def _attention_right(d_model, n_heads, T, n_kv_heads=None):
    counts = ref.attention_flops(d_model, n_heads, T, n_kv_heads=n_kv_heads)
    return {part: counts[part] for part in _PARTS}


ATTENTION_FLOP_MISTAKES = (
    Mistake("multiply_add_as_one",
            "every count is half the expected one: a multiply-add is 2 FLOPs (one multiply, one add), so a "
            "(m x k) @ (k x n) product costs 2 m k n FLOPs",
            lambda *a: _attention_counts(*a, mac=1)),
    Mistake("n_heads_for_kv",
            "K and V are projected to n_heads * d_head = d_model features; with n_kv_heads key/value heads "
            "W_K and W_V have only n_kv_heads * d_head outputs each",
            lambda *a: _attention_counts(*a, kv="n_heads")),
    Mistake("scores_with_d_model",
            "each head's scores and weighted values use its own d_head features, not d_model: Q Kᵀ costs "
            "2 H T T d_head in all (that is 2 T T d_model, not 2 H T T d_model)",
            lambda *a: _attention_counts(*a, score_width="d_model")),
    Mistake("output_forgotten",
            "the output projection W_O is a d_model x d_model matrix product too: 2 T d_model² FLOPs",
            lambda *a: _attention_counts(*a, output=False)),
)


def _attention_variant(*, drop: str | None = None, projected: str = "qkv", causal: bool = False):
    """attention_flops with one change: a part left at 0, only some of Q, K, V projected, or the
    scores and values counted for the causal half of the (query, key) pairs."""
    def wrong(d_model, n_heads, T, n_kv_heads=None):
        counts = _attention_right(d_model, n_heads, T, n_kv_heads)
        d_kv = (n_heads if n_kv_heads is None else n_kv_heads) * (d_model // n_heads)
        counts["projections"] = 2 * T * d_model * sum({"q": d_model, "k": d_kv, "v": d_kv}[c] for c in projected)
        if causal:
            for part in ("scores", "values"):
                counts[part] = counts[part] // (T * T) * (T * (T + 1) // 2)
        if drop:
            counts[drop] = 0
        return counts
    return wrong


ATTENTION_FLOP_PROBES = _probes.probes({
    "values_forgotten": ("values is 0: the weighted sum A V is a matrix product too, (T x T) @ (T x d_head) per "
                         "head: 2 H T T d_head FLOPs", _attention_variant(drop="values")),
    "scores_forgotten": ("scores is 0: Q Kᵀ is a matrix product too, (T x d_head) @ (d_head x T) per head: "
                         "2 H T T d_head FLOPs", _attention_variant(drop="scores")),
    "only_q_projected": ("projections counts only x W_Qᵀ; K and V are projected too, each to n_kv_heads * d_head "
                         "features: 2 T d_model (d_model + 2 n_kv_heads d_head)", _attention_variant(projected="q")),
    "q_not_projected": ("projections leaves out x W_Qᵀ (2 T d_model²); Q, K and V are all projected",
                        _attention_variant(projected="kv")),
    "causal_half": ("scores and values count only the causal half of the (query, key) pairs, T (T + 1) / 2; "
                    "the matrix products compute all T x T scores (the mask only hides some afterwards)",
                    _attention_variant(causal=True)),
})

# (d_model, n_heads, T, n_kv_heads)
ATTENTION_CONFIGS = ((64, 4, 16, None), (96, 6, 10, 2), (768, 12, 1024, None), (4096, 32, 4096, 8), (48, 4, 1, 1))


def check_attention_flops(fn: Any, *, configs: Sequence[tuple] = ATTENTION_CONFIGS) -> None:
    """attention_flops(d_model, n_heads, T, n_kv_heads=None) -> {"projections", "scores", "values", "output"}."""
    _check_counts(fn, name="attention_flops", reference=_attention_right, configs=configs,
                  arg_names=("d_model", "n_heads", "T", "n_kv_heads"), mistakes=ATTENTION_FLOP_MISTAKES,
                  probes=ATTENTION_FLOP_PROBES, forbidden=FORBIDDEN["ex1"],
                  keys=_PARTS, hint="count 2 m k n for every (m x k) @ (k x n) product: x W_Qᵀ, x W_Kᵀ, x W_Vᵀ, "
                                    "Q Kᵀ and A V per head, and the output projection")


# ---------------------------------------------------------------------------------------------
# Exercise 2: MLP FLOPs
# ---------------------------------------------------------------------------------------------


def _mlp(d_model, d_ff, T, kind="gelu", *, mac=2, matrices=None):
    n = matrices if matrices is not None else (2 if kind == "gelu" else 3)
    return n * mac * T * d_model * d_ff


MLP_FLOP_MISTAKES = (
    Mistake("multiply_add_as_one",
            "the count is half the expected one: a multiply-add is 2 FLOPs, so each d_model x d_ff matrix "
            "costs 2 T d_model d_ff",
            lambda d, f, T, kind="gelu": _mlp(d, f, T, kind, mac=1)),
    Mistake("swiglu_two_matrices",
            "SwiGLU has three matrices (gate, up and down), each 2 T d_model d_ff FLOPs; two were counted",
            lambda d, f, T, kind="gelu": _mlp(d, f, T, kind, matrices=2)),
    Mistake("one_matrix",
            "only one matrix was counted; the FFN has an up projection and a down projection (and a gate in SwiGLU)",
            lambda d, f, T, kind="gelu": _mlp(d, f, T, kind, matrices=1)),
)


MLP_FLOP_PROBES = _probes.probes({
    "gelu_three_matrices": ("the GELU MLP is counted with three matrices, like SwiGLU; a GELU MLP has two (up and "
                            "down), SwiGLU three (gate, up, down)",
                            lambda d, f, T, kind="gelu": _mlp(d, f, T, kind, matrices=3)),
    "kinds_swapped": ("the matrix counts of the two kinds are swapped: GELU has two matrices (up, down), SwiGLU "
                      "three (gate, up, down)",
                      lambda d, f, T, kind="gelu": _mlp(d, f, T, kind, matrices=3 if kind == "gelu" else 2)),
})

# (d_model, d_ff, T, kind)
MLP_CONFIGS = ((64, 172, 16, "swiglu"), (64, 256, 16, "gelu"), (768, 3072, 1024, "gelu"), (4096, 14336, 1, "swiglu"))


def check_mlp_flops(fn: Any, *, configs: Sequence[tuple] = MLP_CONFIGS) -> None:
    """mlp_flops(d_model, d_ff, T, kind="gelu") -> int."""
    _check_counts(fn, name="mlp_flops", reference=lambda d, f, T, kind="gelu": ref.mlp_flops(d, f, T, kind=kind),
                  configs=configs, arg_names=("d_model", "d_ff", "T", "kind"), mistakes=MLP_FLOP_MISTAKES,
                  probes=MLP_FLOP_PROBES, forbidden=FORBIDDEN["ex2"],
                  hint="a GELU MLP has 2 matrices of d_model x d_ff, SwiGLU 3; each costs 2 T d_model d_ff FLOPs")


# ---------------------------------------------------------------------------------------------
# Exercise 3: the KV cache's memory
# ---------------------------------------------------------------------------------------------


def _kv(n_layers, n_kv_heads, d_head, tokens, batch=1, dtype=torch.float16, *, kv=2, layers=True,
        bytes_rule="right", use_batch=True):
    size = {"right": torch.empty((), dtype=dtype).element_size(), "two": 2, "four": 4,
            "bits": torch.finfo(dtype).bits if dtype.is_floating_point else 8}[bytes_rule]
    return kv * (n_layers if layers else 1) * (batch if use_batch else 1) * n_kv_heads * tokens * d_head * size


KV_BYTES_MISTAKES = (
    Mistake("k_or_v_only",
            "only one of K and V is counted: the cache stores a key and a value vector per token, so multiply by 2",
            lambda *a: _kv(*a, kv=1)),
    Mistake("one_layer",
            "this is one layer's cache; every layer keeps its own keys and values, so multiply by n_layers",
            lambda *a: _kv(*a, layers=False)),
    Mistake("bytes_fixed_two",
            "2 bytes per element is right for float16/bfloat16 only; take the size from the dtype "
            "(torch.empty((), dtype=dtype).element_size(): 4 for float32, 8 for float64)",
            lambda *a: _kv(*a, bytes_rule="two")),
    Mistake("bytes_fixed_four",
            "4 bytes per element is float32's size; take it from the dtype (2 for float16/bfloat16, 8 for float64)",
            lambda *a: _kv(*a, bytes_rule="four")),
    Mistake("bits_not_bytes",
            "the size per element is in bits (e.g. 16 for float16); memory is counted in bytes, 8 bits each",
            lambda *a: _kv(*a, bytes_rule="bits")),
    Mistake("batch_forgotten",
            "every sequence of the batch has its own cache; multiply by batch",
            lambda *a: _kv(*a, use_batch=False)),
)

# (n_layers, n_kv_heads, d_head, tokens, batch, dtype)
KV_BYTES_CONFIGS = ((32, 32, 128, 4096, 1, torch.float16), (32, 8, 128, 8192, 4, torch.bfloat16),
                    (2, 1, 16, 10, 3, torch.float32), (12, 12, 64, 1024, 2, torch.float64))


def check_kv_cache_bytes(fn: Any, *, configs: Sequence[tuple] = KV_BYTES_CONFIGS) -> None:
    """kv_cache_bytes(n_layers, n_kv_heads, d_head, tokens, batch, dtype) -> int (bytes)."""
    _check_counts(fn, name="kv_cache_bytes",
                  reference=lambda L, h, d, t, b, dt: ref.kv_cache_bytes(L, h, d, t, batch=b, dtype=dt),
                  configs=configs, arg_names=("n_layers", "n_kv_heads", "d_head", "tokens", "batch", "dtype"),
                  mistakes=KV_BYTES_MISTAKES, forbidden=FORBIDDEN["ex3"],
                  hint="2 (K and V) x n_layers x batch x n_kv_heads x tokens x d_head x bytes per element")


# ---------------------------------------------------------------------------------------------
# Exercise 4: the KV cache of real decoders
# ---------------------------------------------------------------------------------------------


# Real decoders (the notebook prints them in a read-only cell): Llama-2-7B (MHA), Llama-3-8B (GQA,
# 8 K/V heads), Falcon-7B (MQA: one K/V head of 64 for 71 query heads), all fp16.
REAL_CONFIGS = MappingProxyType({
    "llama2_7b": MappingProxyType({"n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "d_head": 128, "context": 4096}),
    "llama3_8b": MappingProxyType({"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "d_head": 128, "context": 8192}),
    "falcon_7b": MappingProxyType({"n_layers": 32, "n_heads": 71, "n_kv_heads": 1, "d_head": 64, "context": 2048}),
    "bytes_per_element": 2, "batch": 16, "gpu_bytes": 80 * 2**30, "weight_bytes_llama3": 16 * 10**9,
})


def _real_numbers(s: Any = REAL_CONFIGS) -> tuple[dict[str, float], dict[str, list[tuple[float, str]]]]:
    """The answers of exercise 4 for the sizes `s` (REAL_CONFIGS, or other sizes for the hidden test),
    and the wrong values the common mistakes give."""
    size = s["bytes_per_element"]
    expected: dict[str, float] = {}
    wrong: dict[str, list[tuple[float, str]]] = {}

    def add(key: str, value: float, message: str) -> None:
        known = wrong.setdefault(key, [])
        if value == expected[key]:
            return
        for i, (v, first) in enumerate(known):
            if v == value:
                known[i] = (v, f"{first}; or else {message}")
                return
        known.append((value, message))

    def per_sequence(c, *, heads=None, kv=2, layers=True, size=size, tokens=None):
        return (kv * (c["n_layers"] if layers else 1) * (heads or c["n_kv_heads"]) * c["d_head"]
                * (tokens or c["context"]) * size)

    for name in ("llama2_7b", "llama3_8b", "falcon_7b"):
        c, key = s[name], f"kv_{name}"
        expected[key] = per_sequence(c)
        add(key, per_sequence(c, heads=c["n_heads"]),
            "n_heads was used where n_kv_heads belongs: the cache holds only the key/value heads")
        add(key, per_sequence(c, kv=1), KV_BYTES_MISTAKES[0].message)
        add(key, per_sequence(c, layers=False), KV_BYTES_MISTAKES[1].message)
        add(key, per_sequence(c, size=4), "fp16 takes 2 bytes per number, not 4")
        add(key, per_sequence(c, size=1), "that counts numbers; multiply by 2 bytes per fp16 number")
        add(key, per_sequence(c, tokens=1), f"that is one token; the sequence has {c['context']} tokens")
    c = s["llama3_8b"]
    expected["kv_batch_llama3"] = expected["kv_llama3_8b"] * s["batch"]
    add("kv_batch_llama3", expected["kv_llama3_8b"], f"that is one sequence; the batch holds {s['batch']}")
    free = s["gpu_bytes"] - s["weight_bytes_llama3"]
    expected["max_batch_llama3"] = free // expected["kv_llama3_8b"]
    add("max_batch_llama3", s["gpu_bytes"] // expected["kv_llama3_8b"],
        "the weights take memory too: subtract them before dividing by one sequence's cache")
    add("max_batch_llama3", -(-free // expected["kv_llama3_8b"]), "a batch is a whole number of sequences: round down")
    add("max_batch_llama3", free // per_sequence(c, heads=c["n_heads"]),
        "n_heads was used where n_kv_heads belongs: GQA's cache is 4 times smaller")
    expected["gqa_saving_llama3"] = c["n_heads"] / c["n_kv_heads"]
    add("gqa_saving_llama3", c["n_kv_heads"] / c["n_heads"],
        "that is GQA's cache as a fraction of MHA's; the saving factor is MHA's bytes / GQA's bytes")
    return expected, wrong


_REAL_HINTS = {
    "kv_llama2_7b": "2 (K and V) x n_layers x n_kv_heads x d_head x context x 2 bytes",
    "kv_llama3_8b": "as for Llama-2, with 8 K/V heads and 8192 tokens",
    "kv_falcon_7b": "one K/V head of d_head = 64",
    "kv_batch_llama3": "one sequence's cache times the batch",
    "max_batch_llama3": "(GPU memory - weights) // one sequence's cache",
    "gqa_saving_llama3": "MHA would cache n_heads heads, GQA caches n_kv_heads",
}


def check_kv_cache_numbers(**answers: Any) -> None:
    """Exercise 4: KV-cache bytes of real decoders (MHA, GQA, MQA), a batch, and what fits on a GPU."""
    expected, wrong = _real_numbers()
    refuse_answers_computed_by(expected, FORBIDDEN["ex4"])
    check_numbers(answers, expected, tolerance={"gqa_saving_llama3": 1e-9}, mistakes=wrong, hints=_REAL_HINTS,
                  name="check_kv_cache_numbers", integers=[k for k in expected if k != "gqa_saving_llama3"])


# The hidden test re-runs the learner's cells with these sizes instead (see helpers.checks.recompute):
# every size differs from REAL_CONFIGS but the MHA/GQA/MQA shapes (Llama-2 one K/V head per query head,
# Falcon a single one), and (GPU - weights) is not a whole number of sequences. The cache stays fp16:
# the exercise welcomes `kv_cache_bytes`, which takes a dtype (torch.float16), not bytes_per_element.
OTHER_CONFIGS = (MappingProxyType({
    "llama2_7b": MappingProxyType({"n_layers": 40, "n_heads": 40, "n_kv_heads": 40, "d_head": 64, "context": 2048}),
    "llama3_8b": MappingProxyType({"n_layers": 24, "n_heads": 24, "n_kv_heads": 4, "d_head": 64, "context": 4096}),
    "falcon_7b": MappingProxyType({"n_layers": 16, "n_heads": 20, "n_kv_heads": 1, "d_head": 96, "context": 1024}),
    "bytes_per_element": 2, "batch": 8, "gpu_bytes": 40 * 2**30, "weight_bytes_llama3": 21 * 2**29,
}),)
SIZES_MARKER = "# Read-only: the sizes the questions use."


def recheck_kv_cache_numbers(*, cells: Sequence[str] | None = None, namespace: Any = None) -> None:
    """Exercise 4's hidden test: the learner's cells after the sizes cell, re-run with OTHER_CONFIGS,
    give the answers that follow from those sizes (a typed-in number does not). `cells` and
    `namespace` replace IPython's history and namespace (for tests)."""
    refuse_answers_computed_by(_REAL_HINTS, FORBIDDEN["ex4"], cells=cells, namespace=namespace)
    recheck_with_other_sizes(tuple(_REAL_HINTS), sizes_marker=SIZES_MARKER, original=REAL_CONFIGS,
                             variants=OTHER_CONFIGS, expected_for=lambda sizes: _real_numbers(sizes)[0],
                             checks=("check_kv_cache_numbers",), tests=("recheck_kv_cache_numbers",),
                             tolerance={"gqa_saving_llama3": 1e-9}, cells=cells, namespace=namespace)


# ---------------------------------------------------------------------------------------------
# Exercise 5: new tokens at the right position
# ---------------------------------------------------------------------------------------------


def _embed(ids, wte, wpe, cache_length, *, shift=0, offset=True):
    start = cache_length + shift if offset else 0
    T = ids.shape[1]
    return wte[ids] + wpe[start:start + T]  # (B, T, d_model)


EMBED_MISTAKES = (
    Mistake("offset_forgotten",
            "the new tokens got positions 0 .. T - 1; after cache_length cached tokens they sit at positions "
            "cache_length .. cache_length + T - 1, so take wpe[cache_length : cache_length + T]",
            lambda ids, wte, wpe, n: _embed(ids, wte, wpe, n, offset=False)),
    Mistake("offset_minus_one",
            "the position offset is off by one (one too small): with cache_length tokens cached at positions "
            "0 .. cache_length - 1, the next token's position is cache_length itself",
            lambda ids, wte, wpe, n: _embed(ids, wte, wpe, n, shift=-1)),
    Mistake("offset_plus_one",
            "the position offset is off by one (one too large): positions count from 0, so the first new token "
            "is at position cache_length, not cache_length + 1",
            lambda ids, wte, wpe, n: _embed(ids, wte, wpe, n, shift=1)),
)


def _rows_of(table: torch.Tensor, vectors: torch.Tensor) -> list[int] | None:
    """For each vector (N, d), the index of the row of `table` (R, d) it equals, or None if one has none."""
    t, v = table.detach().cpu().double(), vectors.detach().cpu().double()
    gap = (v[:, None, :] - t[None, :, :]).abs().amax(dim=-1)  # (N, R)
    best = gap.argmin(dim=-1)
    scale = max(float(t.abs().max()), 1.0)
    if bool((gap.gather(1, best[:, None]) > 1e-5 * scale).any()):
        return None
    return [int(r) for r in best]


def _embed_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """Which row of wpe each new token got (got - wte[ids]), or that the token embedding is missing."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and got.is_floating_point()):
        return None
    ids, wte, wpe, n = case.args
    B, T = ids.shape
    want = list(range(n, n + T))
    rows = _rows_of(wpe, (got - wte[ids]).reshape(B * T, -1))
    if rows is None:
        if _rows_of(wpe, got.reshape(B * T, -1)) is not None:
            return ("the output holds position rows only: the token embeddings wte[ids] are missing; the result is "
                    "wte[ids] + wpe[cache_length : cache_length + T]")
        return None
    grid = [rows[b * T:(b + 1) * T] for b in range(B)]
    if grid[0] != want and all(g == grid[0] for g in grid):
        shift = {g - w for g, w in zip(grid[0], want)}
        how = (f"every new token got the position row {grid[0][0]}" if len(set(grid[0])) == 1 else
               f"all positions are off by {shift.pop():+d}" if len(shift) == 1 else f"the tokens got the rows {grid[0]}")
        return (f"{how} of wpe; after {n} cached tokens the new tokens sit at the positions {want}: "
                f"wpe[cache_length : cache_length + T]")
    if [r for g in grid for r in g] == ids.reshape(-1).tolist():
        return ("wpe is indexed with the token ids (wpe[ids]); it is indexed with positions: "
                "wpe[cache_length : cache_length + T]")
    return (f"the position rows differ between sequences ({grid}); every sequence's new tokens sit at the same "
            f"positions {want}")


def check_embed_new_tokens(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, V: int = 11,
                           d_model: int = 6, T_max: int = 20) -> None:
    """embed_new_tokens(ids, wte, wpe, cache_length) -> (B, T, d_model)."""
    gen = torch.Generator().manual_seed(seed)
    wte, wpe = _randn(gen, V, d_model, dtype=dtype), _randn(gen, T_max, d_model, dtype=dtype)
    names = ("ids", "wte", "wpe", "cache_length")
    cases = []
    for T, n, note in ((1, 7, "one new token after 7 cached"), (3, 5, "3 new tokens after 5 cached"),
                       (4, 0, "the prompt: nothing cached yet")):
        sizes = {"B": B, "T": T, "V": V, "d_model": d_model, "T_max": T_max}
        ids = torch.randint(0, V, (B, T), generator=gen)
        cases.append(Case((ids, wte, wpe, n), sizes, names, note))
    check_function(fn, name="embed_new_tokens", reference=ref.embed_new_tokens, cases=cases,
                   outputs=("embeddings",), mistakes=EMBED_MISTAKES, forbidden=FORBIDDEN["ex5"],
                   diagnose=_embed_diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 6: one attention step with a KV cache
# ---------------------------------------------------------------------------------------------


def _step(q, k_new, v_new, k_cache, v_cache, *, mask="bottom_right", append=True, kv_map="interleave",
          cache_heads="kv"):
    H, H_kv = q.shape[1], k_new.shape[1]
    k_all = torch.cat([k_cache, k_new], dim=2)  # (B, H_kv, T_k, d_head)
    v_all = torch.cat([v_cache, v_new], dim=2)
    k_use, v_use = (k_all, v_all) if append else (k_cache, v_cache)
    g = H // H_kv
    if kv_map == "interleave":
        k_rep, v_rep = k_use.repeat_interleave(g, dim=1), v_use.repeat_interleave(g, dim=1)
    else:
        k_rep, v_rep = k_use.repeat(1, g, 1, 1), v_use.repeat(1, g, 1, 1)
    T_q, T_k = q.shape[2], k_use.shape[2]
    if mask == "bottom_right":
        m = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(T_k - T_q)
    elif mask == "top_left":
        m = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril()
    elif mask == "off_by_one":
        m = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(T_k - T_q - 1)
    else:
        m = None
    out, _ = scaled_dot_product_attention(q, k_rep, v_rep, m)
    if cache_heads == "repeated":
        k_all, v_all = k_all.repeat_interleave(g, dim=1), v_all.repeat_interleave(g, dim=1)
    return out, k_all, v_all


STEP_MISTAKES = (
    Mistake("top_left_mask",
            "the causal mask is aligned top-left (as torch's is_causal=True does): new query i then sees only "
            "keys 0 .. i and misses the most recent cached tokens; align it bottom-right, query i sees keys "
            "0 .. T_past + i (torch.ones(T_new, T_k).tril(diagonal=T_k - T_new))",
            lambda *a: _step(*a, mask="top_left")),
    Mistake("mask_off_by_one",
            "the cache mask is shifted by one: each new query is blocked from its own key; query i is token "
            "T_past + i and may attend to keys 0 .. T_past + i, itself included",
            lambda *a: _step(*a, mask="off_by_one")),
    Mistake("no_mask",
            "no causal mask among the new tokens: when several tokens arrive at once (a prefill), token i must "
            "not see the new tokens after it",
            lambda *a: _step(*a, mask="none")),
    Mistake("not_appended_first",
            "the queries attend to the old cache only; append the new keys and values first, so each new "
            "token also sees itself",
            lambda *a: _step(*a, append=False)),
    Mistake("kv_head_modulo",
            "query head h reads K/V head h % H_kv (as .repeat does); it should read head h // (H / H_kv): "
            "repeat_interleave along the head axis",
            lambda *a: _step(*a, kv_map="modulo")),
    Mistake("cache_repeated_heads",
            "the returned cache holds the K/V heads repeated to H heads; keep the H_kv heads in the cache (that "
            "is what GQA and MQA save) and repeat them only for the attention",
            lambda *a: _step(*a, cache_heads="repeated")),
)


def _step_variant(*, order: str = "append", scale: str = "sqrt_d", mask: int = 0, returned: str = "kv"):
    """attend_with_cache with one change: the new keys and values put before the cache, the scale of
    the scores, the mask shifted by `mask` diagonals, or the cache returned as (v_all, k_all)."""
    def wrong(q, k_new, v_new, k_cache, v_cache):
        join = (lambda old, new: torch.cat([new, old], dim=2)) if order == "prepend" else (
            lambda old, new: torch.cat([old, new], dim=2))
        k_all, v_all = join(k_cache, k_new), join(v_cache, v_new)  # (B, H_kv, T_k, d_head)
        g = q.shape[1] // k_all.shape[1]
        T_q, T_k = q.shape[2], k_all.shape[2]
        m = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(T_k - T_q + mask)
        factor = {"sqrt_d": None, "none": lambda q_, k_: 1.0, "d": lambda q_, k_: 1.0 / q_.shape[-1]}[scale]
        out, _ = _probes.attention(q, k_all.repeat_interleave(g, dim=1), v_all.repeat_interleave(g, dim=1), m,
                                   scale=factor)
        return (out, v_all, k_all) if returned == "vk" else (out, k_all, v_all)
    return wrong


STEP_PROBES = _probes.probes({
    "new_before_cache": ("the new keys and values are put before the cached ones; they come after them (the cache "
                         "holds the earlier tokens): torch.cat([k_cache, k_new], dim=2)", _step_variant(order="prepend")),
    "no_scale": ("the scores are not divided by sqrt(d_head); a cached step computes the same attention as "
                 "without a cache: softmax(Q Kᵀ / sqrt(d_head)) V", _step_variant(scale="none")),
    "scale_d_head": ("the scores are divided by d_head; divide them by its square root, sqrt(d_head)",
                     _step_variant(scale="d")),
    "mask_sees_next": ("the mask lets each new query see one key too many, the next token (tril(T_k - T_new + 1)); "
                       "query i is token T_past + i and sees keys 0 .. T_past + i: tril(diagonal=T_k - T_new)",
                       _step_variant(mask=1)),
    "k_v_swapped": ("the returned cache is (v_all, k_all): return the keys first, (out, k_all, v_all)",
                    _step_variant(returned="vk")),
})


def _step_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """Which of the three outputs is wrong, and what the wrong cache holds."""
    if not (isinstance(got, (tuple, list)) and len(got) == 3):
        return None
    q, k_new, v_new, k_cache, v_cache = case.args
    right = [bool(torch.allclose(g.detach().cpu().double(), e.cpu().double(), rtol=1e-4, atol=1e-6))
             for g, e in zip(got, expected)]
    names = ("out", "k_all", "v_all")
    if right[0] and not all(right):
        wrong = [n for n, ok in zip(names, right) if not ok]
        for n in wrong:
            g = got[names.index(n)].detach().cpu().double()
            for other, e in zip(names[1:], expected[1:]):
                if other != n and torch.allclose(g, e.cpu().double(), rtol=1e-4, atol=1e-6):
                    return (f"out is right, but {n} holds what {other} should: {n} = torch.cat([{n[0]}_cache, "
                            f"{n[0]}_new], dim=2)")
        return (f"out is right, but {', '.join(wrong)} not: return the cache you attended over, "
                "torch.cat([k_cache, k_new], dim=2) and torch.cat([v_cache, v_new], dim=2), with its H_kv heads")
    if right[1] and right[2] and not right[0]:
        return ("k_all and v_all are right, so the attention over them is wrong: each query head h reads K/V head "
                "h // (H / H_kv), the scores are Q Kᵀ / sqrt(d_head), and the mask is "
                "torch.ones(T_new, T_k).tril(diagonal=T_k - T_new)")
    return None


@rank_aware_mask_advice()  # helpers.shapes' mask advice, for per-head scores
def check_attend_with_cache(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, H: int = 6,
                            H_kv: int = 2, d_head: int = 4, T_past: int = 5) -> None:
    """attend_with_cache(q, k_new, v_new, k_cache, v_cache) -> (out, k_all, v_all)."""
    gen = torch.Generator().manual_seed(seed)
    names = ("q", "k_new", "v_new", "k_cache", "v_cache")

    def case(T_new: int, past: int, n_kv: int, note: str) -> Case:
        sizes = {"B": B, "H": H, "H_kv": n_kv, "T_new": T_new, "T_past": past, "T_k": past + T_new, "d_head": d_head}
        args = (_randn(gen, B, H, T_new, d_head, dtype=dtype), _randn(gen, B, n_kv, T_new, d_head, dtype=dtype),
                _randn(gen, B, n_kv, T_new, d_head, dtype=dtype), _randn(gen, B, n_kv, past, d_head, dtype=dtype),
                _randn(gen, B, n_kv, past, d_head, dtype=dtype))
        return Case(args, sizes, names, note)

    cases = [
        case(3, T_past, H_kv, f"3 new tokens after {T_past} cached, {H} query heads sharing {H_kv} K/V heads"),
        case(1, T_past, H_kv, f"one new token after {T_past} cached"),
        case(4, 0, 1, "a prompt of 4 tokens, empty cache, one K/V head (MQA)"),
        case(2, T_past + 1, H, "2 new tokens, plain multi-head (H_kv = H)"),
    ]
    check_function(fn, name="attend_with_cache", reference=ref.attend_with_cache, cases=cases,
                   outputs=("out", "k_all", "v_all"), mistakes=STEP_MISTAKES, probes=STEP_PROBES,
                   diagnose=_step_diagnose,
                   forbidden=FORBIDDEN["ex6"])


# ---------------------------------------------------------------------------------------------
# Exercise 7: FlashAttention's online softmax over blocks
# ---------------------------------------------------------------------------------------------


def _online(q, k, v, block_size, *, rescale_sum=True, rescale_acc=True, running_max=True, normalise=True,
            scale="sqrt_d", rescale="old", per_block=False):
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale == "sqrt_d" else 1.0
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype)
    l = torch.zeros((*q.shape[:-1], 1), dtype=q.dtype)
    acc = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=q.dtype)
    for start in range(0, k.shape[-2], block_size):
        s = (q @ k[..., start:start + block_size, :].transpose(-2, -1)) * scale
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True)) if running_max else torch.zeros_like(m)
        p = torch.exp(s - m_new)
        c = torch.exp(m - m_new) if running_max else torch.ones_like(m)
        if per_block:  # each block's own softmax, the blocks' outputs averaged
            acc, l = acc + (p / p.sum(dim=-1, keepdim=True)) @ v[..., start:start + block_size, :], l + 1
        elif rescale == "both":
            l = c * (l + p.sum(dim=-1, keepdim=True))
            acc = c * (acc + p @ v[..., start:start + block_size, :])
        else:
            l = (c if rescale_sum else 1) * l + p.sum(dim=-1, keepdim=True)
            acc = (c if rescale_acc else 1) * acc + p @ v[..., start:start + block_size, :]
        m = m_new
    return acc / l if normalise else acc


ONLINE_MISTAKES = (
    Mistake("sum_not_rescaled",
            "the running sum l is not rescaled when the running max grows: before adding a block, multiply "
            "l by exp(m_old - m_new), as you do for the accumulated output",
            lambda q, k, v, b: _online(q, k, v, b, rescale_sum=False)),
    Mistake("output_not_rescaled",
            "the accumulated output is not rescaled when the running max grows: multiply it by "
            "exp(m_old - m_new) before adding the new block's exp(S - m_new) @ V",
            lambda q, k, v, b: _online(q, k, v, b, rescale_acc=False)),
    Mistake("nothing_rescaled",
            "neither the running sum nor the accumulated output is rescaled when the max grows; both were "
            "summed under the old max and must be multiplied by exp(m_old - m_new)",
            lambda q, k, v, b: _online(q, k, v, b, rescale_sum=False, rescale_acc=False)),
    Mistake("no_running_max",
            "there is no running max: exp(S) of large scores overflows to inf (and inf / inf is NaN); "
            "subtract the largest score seen so far before exp, and rescale when it grows",
            lambda q, k, v, b: _online(q, k, v, b, running_max=False)),
    Mistake("not_normalised",
            "the output is not divided by the running sum at the end: softmax weights sum to 1, so return acc / l",
            lambda q, k, v, b: _online(q, k, v, b, normalise=False)),
)


ONLINE_PROBES = _probes.probes({
    "no_scale": ("the scores are not divided by sqrt(d_head); the online softmax computes softmax(Q Kᵀ / "
                 "sqrt(d_head)) V, one block at a time", lambda q, k, v, b: _online(q, k, v, b, scale="none")),
    "rescale_new_block": ("the new block is rescaled too: acc = c * (acc + P V) multiplies the block just computed "
                          "under m_new by exp(m_old - m_new); only the old sums are rescaled: "
                          "acc = c * acc + P V, l = c * l + P.sum(-1)",
                          lambda q, k, v, b: _online(q, k, v, b, rescale="both")),
    "blocks_averaged": ("each block is normalised on its own and the blocks' outputs averaged; the blocks share "
                        "one softmax: keep the unnormalised sums (with the running max) and divide by l once, "
                        "at the end", lambda q, k, v, b: _online(q, k, v, b, per_block=True)),
})


def _online_diagnose(got: Any, expected: Any, case: Case) -> str | None:
    """An output that is exact attention over a contiguous run of the keys only: which keys were used."""
    if not (isinstance(got, torch.Tensor) and got.shape == expected.shape and bool(torch.isfinite(got).all())):
        return None
    q, k, v, block = case.args
    T_k = k.shape[-2]
    g = got.detach().cpu().double()
    q, k, v = (t.detach().cpu().double() for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    for start in range(T_k):
        for stop in range(start + 1, T_k + 1):
            if (start, stop) == (0, T_k):
                continue
            part = torch.softmax(scores[..., start:stop], dim=-1) @ v[..., start:stop, :]  # (..., T_q, d_v)
            if torch.allclose(g, part, rtol=1e-4, atol=1e-6):
                last = "the last block alone: the earlier blocks' sums were multiplied by 0 or " \
                       "dropped (update m to m_new after each block, and carry l and acc over to the next)" if start > 0 and stop == T_k and start % block == 0 else (
                    f"keys {stop} .. {T_k - 1} are skipped: the last block is shorter when block_size does not "
                    "divide T_k, and must be included" if start == 0 else "")
                return (f"your output is attention over keys {start} .. {stop - 1} only" + (f": {last}" if last else "")
                        + f"; every block of the {T_k} keys must contribute")
    return None


def _widest_score_block(shapes: Sequence[tuple[int, ...]], T_q: int, T_k: int, block: int,
                        others: Sequence[int]) -> tuple[int, tuple[int, ...]] | None:
    """The widest block of scores among `shapes` wider than `block` keys: neighbouring axes (T_q, w),
    or (w, T_q) as the last two (scores transposed), with block < w <= T_k, where w is no other axis's
    size (d_head, d_v)."""
    widest = None
    for shape in shapes:
        widths = [b for a, b in zip(shape, shape[1:]) if a == T_q]
        if len(shape) >= 2 and shape[-1] == T_q:
            widths.append(shape[-2])
        for w in widths:
            if block < w <= T_k and w not in others and (widest is None or w > widest[0]):
                widest = (w, shape)
    return widest


def _online_structure(fn: Any, case: Case) -> str | None:
    """The answer must form scores for at most block_size keys at a time: the whole score matrix at
    once (exp(S - max) over all keys) gives the right numbers but is not the online softmax."""
    q, k, v, block = case.args
    T_q, T_k = q.shape[-2], k.shape[-2]
    if block >= T_k:
        return None
    with ShapeRecorder() as recorder:
        call_learner(fn, "online_softmax_attention", case, FORBIDDEN["ex7"])
    found = _widest_score_block(recorder.shapes, T_q, T_k, block, (q.shape[-1], v.shape[-1]))
    if found is None:
        return None
    width, shape = found
    whole = "the whole score matrix" if width == T_k else f"scores for {width} keys at once"
    return (f"your function forms {whole} (a tensor of shape {fmt_shape(shape)}) with block_size = {block} "
            f"and T_k = {T_k}; the exercise asks for the online softmax: loop over blocks of at most "
            f"block_size keys, score one block at a time, and carry the running max m, the running sum l "
            f"and the accumulated output from block to block")


def _online_reference(q, k, v, block_size):
    return ref.tiled_attention(q, k, v, block_size=block_size)


def check_online_softmax_attention(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float64, B: int = 2,
                                   T_q: int = 5, T_k: int = 11, d_head: int = 4, d_v: int = 3,
                                   block_sizes: Sequence[int] = (4, 1, 11)) -> None:
    """online_softmax_attention(q, k, v, block_size) -> (..., T_q, d_v), no mask."""
    gen = torch.Generator().manual_seed(seed)
    names = ("q", "k", "v", "block_size")
    sizes = {"B": B, "T_q": T_q, "T_k": T_k, "d_head": d_head, "d_v": d_v}
    big = 900.0 if dtype == torch.float64 else 60.0  # scores large enough that exp(S) overflows

    def args(block: int, scale: float) -> tuple:
        q = _randn(gen, B, T_q, d_head, dtype=dtype, scale=scale)
        # keys sorted by their first score, rising: the running max grows block after block
        k = _randn(gen, B, T_k, d_head, dtype=dtype, scale=scale)
        order = (q[:, :1] @ k.transpose(-2, -1))[:, 0].argsort(dim=-1)  # (B, T_k)
        k = torch.gather(k, 1, order[..., None].expand_as(k))
        return (q, k, _randn(gen, B, T_k, d_v, dtype=dtype), block)

    first = block_sizes[0]
    cases = [Case(args(first, 1.0), sizes, names, f"block_size = {first}, which does not divide T_k = {T_k}"),
             Case(args(first, 1.0), sizes, names, f"block_size = {first}, keys whose scores grow block by block"),
             Case(args(first, math.sqrt(big)), sizes, names, f"large scores (exp overflows in {str(dtype)[6:]})")]
    cases += [Case(args(b, 1.0), sizes, names, f"block_size = {b}") for b in block_sizes[1:]]
    check_function(fn, name="online_softmax_attention", reference=_online_reference, cases=cases,
                   outputs=("output",), mistakes=ONLINE_MISTAKES, forbidden=FORBIDDEN["ex7"],
                   probes=ONLINE_PROBES, diagnose=_online_diagnose, structure=_online_structure)


# ---------------------------------------------------------------------------------------------
# Exercise 8: a decode step on the roofline of a real chip
# ---------------------------------------------------------------------------------------------


ROOFLINE_KEYS = ("intensity", "seconds", "crossover_batch")


def _roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth, *, mac=2, weight_bytes="right",
              per_sequence=False, time_rule="max", crossover_rule="right"):
    """decode_roofline with mistakes built in."""
    size = 1 if weight_bytes == "numbers" else bytes_per_param
    flops = mac * n_params * batch
    moved = n_params * size * (batch if per_sequence else 1)
    t_compute, t_memory = flops / peak_flops, moved / bandwidth
    seconds = {"max": max(t_compute, t_memory), "sum": t_compute + t_memory, "compute": t_compute,
               "memory": t_memory}[time_rule]
    ridge = peak_flops / bandwidth
    per_batch = mac / size  # FLOP/byte that each sequence of the batch adds
    crossover = {"right": math.ceil(ridge / per_batch), "down": math.floor(ridge / per_batch),
                 "ridge": math.ceil(ridge)}[crossover_rule]
    if per_sequence:
        crossover = math.ceil(ridge * bytes_per_param / 2)  # the formula, known by heart
    return {"intensity": flops / moved, "seconds": seconds, "crossover_batch": crossover}


ROOFLINE_MISTAKES = (
    Mistake("multiply_add_as_one",
            "intensity is half the expected one: each weight is used in one multiply-add per sequence, 2 FLOPs, "
            "so a step does 2 n_params batch FLOPs",
            lambda *a: _roofline(*a, mac=1)),
    Mistake("weights_as_numbers",
            "intensity divides by the number of weights, not their bytes: a step moves n_params x bytes_per_param "
            "bytes",
            lambda *a: _roofline(*a, weight_bytes="numbers")),
    Mistake("weights_per_sequence",
            "intensity does not grow with the batch: the weights are read once per step and serve every sequence "
            "of the batch, so the bytes are n_params x bytes_per_param whatever the batch",
            lambda *a: _roofline(*a, per_sequence=True)),
    Mistake("times_added",
            "seconds adds the compute time and the memory time; the chip does both at once, so the step takes the "
            "longer of the two: max(FLOPs / peak_flops, bytes / bandwidth)",
            lambda *a: _roofline(*a, time_rule="sum")),
    Mistake("flops_over_peak",
            "seconds is FLOPs / peak_flops, the arithmetic alone; below the ridge the step waits for its bytes: "
            "max(FLOPs / peak_flops, bytes / bandwidth)",
            lambda *a: _roofline(*a, time_rule="compute")),
    Mistake("bytes_over_bandwidth",
            "seconds is bytes / bandwidth on every configuration, also past the crossover batch, where the "
            "arithmetic takes longer: max(FLOPs / peak_flops, bytes / bandwidth)",
            lambda *a: _roofline(*a, time_rule="memory")),
    Mistake("crossover_is_the_ridge",
            "crossover_batch is the ridge itself; it is the batch whose intensity 2 batch / bytes_per_param "
            "reaches the ridge: ridge x bytes_per_param / 2 (the two agree only at 2 bytes per weight)",
            lambda *a: _roofline(*a, crossover_rule="ridge")),
    Mistake("crossover_rounded_down",
            "crossover_batch is rounded down; at that batch the intensity is still below the ridge (memory-bound): "
            "round up to the first batch at or past it",
            lambda *a: _roofline(*a, crossover_rule="down")),
)

# (n_params, batch, bytes_per_param, peak_flops, bandwidth): an 8B model on an H100 (bf16) at batch 1
# and 512, a 70B model on an A100 (bf16), a 6.7B model in int8 on an A100 (624 TOPS dense), GPT-2
# small in float32 on the A100's plain FP32 units (19.5 TFLOP/s).
ROOFLINE_CONFIGS = ((8_030_261_248, 1, 2, 989.4e12, 3.35e12), (8_030_261_248, 512, 2, 989.4e12, 3.35e12),
                    (70_553_706_496, 32, 2, 312e12, 2.039e12), (6_738_415_616, 200, 1, 624e12, 2.039e12),
                    (124_439_808, 8, 4, 19.5e12, 1.555e12))
_ROOFLINE_ARGS = ("n_params", "batch", "bytes_per_param", "peak_flops", "bandwidth")
_ROOFLINE_HINT = ("a step does 2 n_params batch FLOPs and moves n_params bytes_per_param bytes; it takes "
                  "max(FLOPs / peak_flops, bytes / bandwidth); it is compute-bound from the first whole batch "
                  "whose intensity reaches peak_flops / bandwidth")


def _roofline_values(name: str, got: Any) -> dict[str, Any]:
    if not isinstance(got, dict) or set(got) != set(ROOFLINE_KEYS):
        shown = sorted(got) if isinstance(got, dict) else type(got).__name__
        raise CheckFailed(f"{name} should return a dict with the keys {', '.join(ROOFLINE_KEYS)}; got {shown}")
    out = {"crossover_batch": as_count(f"{name}['crossover_batch']", got["crossover_batch"], verb="is")}
    for key in ("intensity", "seconds"):
        value = got[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise CheckFailed(f"{name}['{key}'] should be a number; got {type(value).__name__}")
        out[key] = float(value)
    return out


def _same(got: Sequence[dict], expected: Sequence[dict], key: str) -> bool:
    g = torch.tensor([float(x[key]) for x in got], dtype=torch.float64)
    e = torch.tensor([float(x[key]) for x in expected], dtype=torch.float64)
    return bool(torch.isfinite(g).all()) and close(g, e, n=4)


def check_decode_roofline(fn: Any, *, configs: Sequence[tuple] = ROOFLINE_CONFIGS) -> None:
    """decode_roofline(n_params, batch, bytes_per_param, peak_flops, bandwidth) -> {"intensity", "seconds",
    "crossover_batch"}: one decode step of a batch through a model's weights (no KV cache), on the roofline."""
    name = "decode_roofline"
    verify_environment()
    cases = [Case(tuple(config), {}, _ROOFLINE_ARGS) for config in configs]
    got = [_roofline_values(name, call_learner(fn, name, case, FORBIDDEN["ex8"])) for case in cases]
    expected = [_roofline(*config) for config in configs]
    wrong = [key for key in ROOFLINE_KEYS if not _same(got, expected, key)]
    if not wrong:
        verify_environment()
        print(f"✓ {name}: right for all {len(configs)} configurations")
        return
    key = wrong[0]
    first = next(i for i in range(len(configs)) if not _same(got[i:i + 1], expected[i:i + 1], key))
    where = f"{name}({cases[first].describe_inputs()})"
    made = {mistake: [mistake.impl(*config) for config in configs] for mistake in ROOFLINE_MISTAKES}
    # A mistake that gives every value the learner got is named first; else one that explains the first wrong value.
    for whole in (True, False):
        for mistake, values in made.items():
            if not _same(values, expected, key) and all(_same(got, values, k) for k in (ROOFLINE_KEYS if whole else (key,))):
                raise CheckFailed(f"{where}: {mistake.message}")
    raise CheckFailed(f"{where}: {key} is not right (got {got[first][key]:.6g}); {_ROOFLINE_HINT}")


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

PROBES = {"attention_flops": ATTENTION_FLOP_PROBES, "mlp_flops": MLP_FLOP_PROBES, "attend_with_cache": STEP_PROBES,
          "online_softmax_attention": ONLINE_PROBES}

MISTAKES = {
    "attention_flops": ATTENTION_FLOP_MISTAKES,
    "mlp_flops": MLP_FLOP_MISTAKES,
    "kv_cache_bytes": KV_BYTES_MISTAKES,
    "embed_new_tokens": EMBED_MISTAKES,
    "attend_with_cache": STEP_MISTAKES,
    "online_softmax_attention": ONLINE_MISTAKES,
    "decode_roofline": ROOFLINE_MISTAKES,
}

protect(ref, _blocks, sys.modules[__name__])
