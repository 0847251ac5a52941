"""Checks for chapter 03 (the feed-forward network and mixture-of-experts basics) and their catalogue
of known mistakes.

Each `check_*` takes the learner's function (or numbers), calls it on generated inputs and raises
`CheckFailed` with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes
and axis sizes: the visible tests use the defaults, the hidden tests use others.
"""

from __future__ import annotations

import functools
import math
import sys
import types
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import attention as attention_ref
from .. import ffn as ref
from . import probes as _probe_kit
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
    "check_feed_forward",
    "check_gelu",
    "check_moe_forward",
    "check_moe_numbers",
    "check_param_counts",
    "check_swiglu_ffn",
    "check_token_independence_test",
    "check_top_k_route",
]


# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# What each exercise asks the learner to write: an answer that is or calls these is refused. Torch
# built-ins are forbidden per exercise, not chapter-wide: exercise 1 asks for GELU itself, while
# exercises 2 and 3 may call F.gelu and F.silu. Exercise 5's answer is handed layers built from
# helpers.ffn (the probes themselves call helpers.ffn: that is allowed) and may not call
# token_influence; exercise 7 may call helpers.ffn.top_k_route, not moe_forward or MoEFFN.
# Exercises 4 and 8 ask for numbers.
FORBIDDEN = {
    "ex1": (ref, F.gelu, torch.nn.GELU.forward),
    "ex2": (ref,),
    "ex3": (ref,),
    "ex4": (),
    "ex5": (ref.token_influence,),
    "ex6": (ref,),
    "ex7": (ref.moe_forward, ref.MoEFFN.forward),
    "ex8": (),
}
# Reference functions an exercise may import (exercise 7 builds on helpers.ffn.top_k_route).
ALLOWED_REFERENCE_BY_EXERCISE = {"ex7": ("top_k_route",)}


# ---------------------------------------------------------------------------------------------
# Shared: the GELU and SiLU forms and the FFN weights several exercises' mistakes and inputs use
# ---------------------------------------------------------------------------------------------

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_erf(x: torch.Tensor, inner_scale: float = 1 / math.sqrt(2.0), half: float = 0.5) -> torch.Tensor:
    return half * x * (1.0 + torch.erf(x * inner_scale))


def _gelu_tanh(x: torch.Tensor, cubic: float = 0.044715) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(SQRT_2_OVER_PI * (x + cubic * x.pow(3))))


def _silu(h: torch.Tensor) -> torch.Tensor:
    return h * torch.sigmoid(h)


def _ffn_weights(gen: torch.Generator, d_model: int, d_ff: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """w1 (d_ff, d_model), b1 (d_ff,), w2 (d_model, d_ff), b2 (d_model,), scaled like nn.Linear's init x 2."""
    return (_randn(gen, d_ff, d_model, dtype=dtype, scale=2 / math.sqrt(d_model)), _randn(gen, d_ff, dtype=dtype),
            _randn(gen, d_model, d_ff, dtype=dtype, scale=2 / math.sqrt(d_ff)), _randn(gen, d_model, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Exercise 1: GELU, both forms
# ---------------------------------------------------------------------------------------------


def _gelu_variant(style: str) -> Callable[..., torch.Tensor]:
    def wrong(x, approximate="none"):
        if style == "tanh_always":
            return _gelu_tanh(x)
        if style == "erf_always":
            return _gelu_erf(x)
        if approximate == "tanh":
            return _gelu_tanh(x, cubic=0.0) if style == "no_cubic" else _gelu_tanh(x)
        return {"no_sqrt2": lambda: _gelu_erf(x, inner_scale=1.0), "no_half": lambda: _gelu_erf(x, half=1.0),
                "sigmoid": lambda: x * torch.sigmoid(1.702 * x), "relu": lambda: x.clamp(min=0),
                "no_cubic": lambda: _gelu_erf(x)}[style]()
    return wrong


GELU_MISTAKES = (
    Mistake("tanh_for_none",
            "approximate='none' asks for the exact GELU 0.5 x (1 + erf(x / sqrt 2)); this is the tanh "
            "approximation, which is up to 5e-4 off",
            _gelu_variant("tanh_always")),
    Mistake("approximate_ignored",
            "approximate='tanh' asks for 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); this answer "
            "returns the exact erf form whatever `approximate` says",
            _gelu_variant("erf_always")),
    Mistake("no_sqrt2",
            "erf takes x / sqrt(2), not x: the standard normal CDF is Phi(x) = 0.5 (1 + erf(x / sqrt 2))",
            _gelu_variant("no_sqrt2")),
    Mistake("no_half",
            "the factor 0.5 is missing: Phi(x) = 0.5 (1 + erf(x / sqrt 2)) lies between 0 and 1, so "
            "GELU(x) = x Phi(x) is at most x for x > 0",
            _gelu_variant("no_half")),
    Mistake("sigmoid_approximation",
            "x * sigmoid(1.702 x) is a third, rougher approximation of GELU; use erf for the exact form "
            "and the tanh formula for approximate='tanh'",
            _gelu_variant("sigmoid")),
    Mistake("no_cubic_term",
            "the tanh form has lost its cubic term: the argument of tanh is sqrt(2/pi) (x + 0.044715 x^3)",
            _gelu_variant("no_cubic")),
    Mistake("relu", "this is ReLU, max(x, 0); GELU is x Phi(x), smooth and slightly negative for x < 0",
            _gelu_variant("relu")),
)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


_GELU_FORM = "GELU is x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))"
GELU_PROBES = _probe_kit.probes({
    "silu": (f"this is SiLU, x * sigmoid(x); {_GELU_FORM}", lambda x, approximate="none": _silu(x)),
    "phi_only": (f"this is Phi(x), the normal CDF, alone; multiply it by x: {_GELU_FORM}",
                 lambda x, approximate="none": _phi(x)),
    "erf_of_half": (f"the argument of erf is x / 2; it is x / sqrt(2): {_GELU_FORM}",
                    lambda x, approximate="none": _gelu_erf(x, inner_scale=0.5)),
})


def check_gelu(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
               B: int = 2, T: int = 5, d: int = 7) -> None:
    """gelu(x, approximate="none") -> same shape: both forms, and the default."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T, "d": d}

    def x() -> torch.Tensor:
        return _randn(gen, B, T, d, dtype=dtype, scale=3.0)

    cases = [
        Case((x(), "none"), sizes, ("x", "approximate"), "approximate='none'"),
        Case((x(), "tanh"), sizes, ("x", "approximate"), "approximate='tanh'"),
        Case((x(),), sizes, ("x",), "approximate left at its default, 'none'"),
    ]
    check_function(fn, name="gelu", probes=GELU_PROBES, reference=ref.gelu, cases=cases, mistakes=GELU_MISTAKES,
                   forbidden=FORBIDDEN["ex1"])


# ---------------------------------------------------------------------------------------------
# Exercise 2: the feed-forward network
# ---------------------------------------------------------------------------------------------


def _ffn_variant(style: str) -> Callable[..., torch.Tensor]:
    def wrong(x, w1, b1, w2, b2):
        act = {"tanh": lambda h: _gelu_tanh(h), "relu": lambda h: h.clamp(min=0)}.get(style, _gelu_erf)
        if style == "no_bias":
            return _gelu_erf(x @ w1.T) @ w2.T
        if style == "activation_after_second":
            return _gelu_erf((x @ w1.T + b1) @ w2.T + b2)
        if style == "no_activation":
            return (x @ w1.T + b1) @ w2.T + b2
        if style == "b1_after_activation":
            return (_gelu_erf(x @ w1.T) + b1) @ w2.T + b2
        return act(x @ w1.T + b1) @ w2.T + b2
    return wrong


FFN_MISTAKES = (
    Mistake("activation_after_second",
            "the activation is applied after the second projection; it belongs between the two: "
            "W2 gelu(W1 x + b1) + b2, so the FFN's output is a linear map of the activated hidden units",
            _ffn_variant("activation_after_second")),
    Mistake("no_activation",
            "there is no activation, so the two projections collapse into one linear map; apply GELU to "
            "the hidden units: W2 gelu(W1 x + b1) + b2",
            _ffn_variant("no_activation")),
    Mistake("biases_ignored", "the biases b1 and b2 are ignored; add b1 before the activation and b2 at the end",
            _ffn_variant("no_bias")),
    Mistake("b1_after_activation",
            "b1 is added after the activation; it belongs inside it: gelu(x W1ᵀ + b1)",
            _ffn_variant("b1_after_activation")),
    Mistake("tanh_gelu",
            "this uses the tanh approximation of GELU; the exercise asks for the exact GELU "
            "(F.gelu's default, approximate='none')",
            _ffn_variant("tanh")),
    Mistake("relu", "this uses ReLU; the exercise asks for GELU (the exact form)", _ffn_variant("relu")),
)


def _ffn_probe(*, act: Callable[[torch.Tensor], torch.Tensor] = _gelu_erf, b1: bool = True, b2: bool = True):
    def wrong(x, w1, bias1, w2, bias2):
        h = x @ w1.T + bias1 if b1 else x @ w1.T  # (..., d_ff)
        out = act(h) @ w2.T  # (..., d_model)
        return out + bias2 if b2 else out
    return wrong


FFN_PROBES = _probe_kit.probes({
    "no_b1": ("b1 is missing: the hidden units are gelu(x W1ᵀ + b1)", _ffn_probe(b1=False)),
    "no_b2": ("b2 is missing: add it after the second projection, gelu(x W1ᵀ + b1) W2ᵀ + b2", _ffn_probe(b2=False)),
    "silu": ("the activation is SiLU, x * sigmoid(x); the exercise asks for GELU (the exact form)",
             _ffn_probe(act=_silu)),
    "sigmoid": ("the activation is sigmoid; the exercise asks for GELU, x Phi(x) (the exact form)",
                _ffn_probe(act=torch.sigmoid)),
})


def check_feed_forward(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                       B: int = 2, T: int = 5, d_model: int = 6, d_ff: int = 11) -> None:
    """feed_forward(x, w1, b1, w2, b2) = W2 gelu(W1 x + b1) + b2 on the last axis (exact GELU)."""
    gen = torch.Generator().manual_seed(seed)
    sizes3 = {"B": B, "T": T, "d_model": d_model, "d_ff": d_ff}
    names = ("x", "w1", "b1", "w2", "b2")
    x_strided = _randn(gen, T, B, d_model, dtype=dtype).transpose(0, 1)  # (B, T, d_model), not contiguous
    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype), *_ffn_weights(gen, d_model, d_ff, dtype)), sizes3, names),
        Case((_randn(gen, T, d_model, dtype=dtype), *_ffn_weights(gen, d_model, d_ff, dtype)),
             {"T": T, "d_model": d_model, "d_ff": d_ff}, names, "2-D input (T, d_model)"),
        Case((x_strided, *_ffn_weights(gen, d_model, d_ff, dtype)), sizes3, names, "a non-contiguous x"),
    ]
    check_function(fn, name="feed_forward", probes=FFN_PROBES, reference=ref.feed_forward, cases=cases,
                   mistakes=FFN_MISTAKES, forbidden=FORBIDDEN["ex2"],
                   prerequisites=MappingProxyType({"gelu": (check_gelu, "exercise 1")}))


# ---------------------------------------------------------------------------------------------
# Exercise 3: SwiGLU
# ---------------------------------------------------------------------------------------------


def _swiglu_variant(style: str) -> Callable[..., torch.Tensor]:
    def silu_(h):
        return h * torch.sigmoid(h)

    def wrong(x, w_gate, w_up, w_down):
        gate, up = x @ w_gate.T, x @ w_up.T  # (..., d_ff) each
        hidden = {"swapped": lambda: silu_(up) * gate, "silu_of_product": lambda: silu_(gate * up),
                  "sigmoid": lambda: torch.sigmoid(gate) * up, "gelu": lambda: _gelu_erf(gate) * up,
                  "bilinear": lambda: gate * up, "sum": lambda: silu_(gate) + up,
                  "no_up": lambda: silu_(gate)}[style]()
        return hidden @ w_down.T
    return wrong


SWIGLU_MISTAKES = (
    Mistake("gate_up_swapped",
            "gate and up are swapped: this computes silu(up x) * gate x; SiLU goes on the gate "
            "projection, silu(W_gate x) * (W_up x), or pretrained weights give wrong outputs",
            _swiglu_variant("swapped")),
    Mistake("silu_of_product",
            "SiLU is applied to the product; apply it to the gate alone: silu(W_gate x) * (W_up x)",
            _swiglu_variant("silu_of_product")),
    Mistake("sigmoid_gate",
            "the gate uses sigmoid (that is the original GLU); SwiGLU uses SiLU, x * sigmoid(x)",
            _swiglu_variant("sigmoid")),
    Mistake("gelu_gate", "the gate uses GELU (that is GeGLU); SwiGLU uses SiLU, x * sigmoid(x)",
            _swiglu_variant("gelu")),
    Mistake("no_gate_activation",
            "the gate has no activation, so the hidden units are a plain product (gate x) * (up x); "
            "apply SiLU to the gate",
            _swiglu_variant("bilinear")),
    Mistake("sum_not_product",
            "gate and up are added; SwiGLU multiplies them elementwise: silu(W_gate x) * (W_up x)",
            _swiglu_variant("sum")),
    Mistake("no_up_projection",
            "the up projection is missing: this is silu(W_gate x) W_down, a plain SiLU MLP; SwiGLU multiplies "
            "the gate elementwise by a second, linear branch before the down projection: "
            "(silu(W_gate x) * (W_up x)) W_down, which is why it has three weight matrices",
            _swiglu_variant("no_up")),
)


def _swiglu_probe(hidden: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    return lambda x, w_gate, w_up, w_down: hidden(x @ w_gate.T, x @ w_up.T) @ w_down.T


SWIGLU_PROBES = _probe_kit.probes({
    "relu_gate": ("the gate uses ReLU (that is ReGLU); SwiGLU uses SiLU, x * sigmoid(x)",
                  _swiglu_probe(lambda g, u: g.clamp(min=0) * u)),
    "up_unused": ("the up projection is not used: the hidden units are silu(x W_gateᵀ) * (x W_upᵀ)",
                  _swiglu_probe(lambda g, u: _silu(g) * g)),
    "silu_on_both": ("SiLU is applied to both projections; only the gate gets it: silu(x W_gateᵀ) * (x W_upᵀ)",
                     _swiglu_probe(lambda g, u: _silu(g) * _silu(u))),
})


def check_swiglu_ffn(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     B: int = 2, T: int = 5, d_model: int = 6, d_ff: int = 11) -> None:
    """swiglu_ffn(x, w_gate, w_up, w_down) = W_down (silu(W_gate x) * (W_up x))."""
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "w_gate", "w_up", "w_down")

    def weights() -> tuple[torch.Tensor, ...]:
        return (_randn(gen, d_ff, d_model, dtype=dtype, scale=2 / math.sqrt(d_model)),
                _randn(gen, d_ff, d_model, dtype=dtype, scale=2 / math.sqrt(d_model)),
                _randn(gen, d_model, d_ff, dtype=dtype, scale=2 / math.sqrt(d_ff)))

    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype), *weights()), {"B": B, "T": T, "d_model": d_model, "d_ff": d_ff}, names),
        Case((_randn(gen, T, d_model, dtype=dtype), *weights()), {"T": T, "d_model": d_model, "d_ff": d_ff}, names,
             "2-D input (T, d_model)"),
    ]
    check_function(fn, name="swiglu_ffn", probes=SWIGLU_PROBES, reference=ref.swiglu_ffn, cases=cases, mistakes=SWIGLU_MISTAKES,
                   forbidden=FORBIDDEN["ex3"])


# ---------------------------------------------------------------------------------------------
# Exercise 4: count MLP parameters and compare them with attention
# ---------------------------------------------------------------------------------------------

GPT2 = {"d_model": 768, "d_ff": 3072}
LLAMA = {"d_model": 4096, "d_ff": 11008}  # Llama-2 7B: SwiGLU, no biases, 32 heads (MHA)

_gpt2 = ref.block_param_counts(**GPT2)
_llama = ref.block_param_counts(**LLAMA, gated=True, bias=False)

COUNT_QUESTIONS = {
    "gpt2_mlp": _gpt2["mlp"],  # 4,722,432
    "gpt2_attention": _gpt2["attention"],  # 2,362,368
    "gpt2_mlp_share": _gpt2["mlp"] / (_gpt2["mlp"] + _gpt2["attention"]),  # 0.6666
    "llama_mlp": _llama["mlp"],  # 135,266,304
    "llama_attention": _llama["attention"],  # 67,108,864
    "llama_mlp_over_attention": _llama["mlp"] / _llama["attention"],  # 2.0156
    "swiglu_d_ff": ref.swiglu_width(768),  # 2048
}

_d, _f, _L, _Lf = GPT2["d_model"], GPT2["d_ff"], LLAMA["d_model"], LLAMA["d_ff"]
_COUNT_MISTAKES = {
    "gpt2_mlp": [
        (2 * _d * _f, "biases forgotten in the count: fc1 has d_ff = 3072 biases and fc2 has d_model = 768"),
        (_d * _f + _f, "that is one projection; the MLP has two, W1 (d_ff, d_model) and W2 (d_model, d_ff)"),
        (_d * _f, "that is one weight matrix; the MLP has two, W1 and W2, plus their biases"),
        (2 * _d * _f + 2 * _f, "b2 is added to the output, so it has d_model = 768 entries, not d_ff"),
    ],
    "gpt2_attention": [
        (4 * _d * _d, "biases forgotten in the count: each of W_Q, W_K, W_V, W_O has d_model = 768 biases"),
        (3 * _d * _d + 3 * _d, "that counts Q, K and V but not the output projection W_O"),
        (_d * _d + _d, "that is one projection; attention has four: W_Q, W_K, W_V and W_O"),
        (4 * _d * (_d // 12) + 4 * (_d // 12), ("that is one head; heads split d_model, so all 12 heads together "
                                               "have 4 d_model^2 weights")),
    ],
    "gpt2_mlp_share": [
        (0.5, "the MLP is not the same size as attention: 2 d_model d_ff = 8 d_model^2 against 4 d_model^2"),
        (2.0, "that is the ratio MLP / attention; the share is MLP / (MLP + attention)"),
        (1 / 3, "that is attention's share; the question asks for the MLP's"),
    ],
    "llama_mlp": [
        (2 * _L * _Lf, "a SwiGLU FFN has three matrices (gate, up and down), not two"),
        (3 * _L * _Lf + 2 * _Lf + _L, "Llama's linear layers have no biases"),
        (3 * _L * 4 * _L, "Llama-2 7B's d_ff is 11008, not 4 d_model"),
    ],
    "llama_attention": [
        (4 * _L * _L + 4 * _L, "Llama's attention projections have no biases"),
        (3 * _L * _L, "that counts Q, K and V but not the output projection W_O"),
    ],
    "llama_mlp_over_attention": [
        (2 * _Lf / (4 * _L), "that counts two FFN matrices; SwiGLU has three"),
        (1.0, "the FFN is about twice the size of attention: 3 x 4096 x 11008 against 4 x 4096^2"),
        (4 * _L / (3 * _Lf), "that is attention / MLP; the question asks for MLP / attention"),
    ],
    "swiglu_d_ff": [
        (4 * 768, "that is the plain MLP's width; with three matrices instead of two the width must shrink to 2/3 of it"),
        (2 * 768, "3 d_model d_ff = 2 d_model (4 d_model) gives d_ff = 8/3 d_model, not 2 d_model"),
        (4 * 768 * 3 // 2, "three matrices need a smaller width, not a larger one: 2/3 of 4 d_model"),
    ],
}

_COUNT_HINTS = {
    "gpt2_mlp": "W1 is (d_ff, d_model) with d_ff biases, W2 is (d_model, d_ff) with d_model biases",
    "gpt2_attention": "four (d_model, d_model) matrices W_Q, W_K, W_V, W_O, each with d_model biases",
    "gpt2_mlp_share": "MLP / (MLP + attention), a number between 0 and 1",
    "llama_mlp": "three (d_ff, d_model)-sized matrices, no biases",
    "llama_attention": "four (d_model, d_model) matrices, no biases",
    "llama_mlp_over_attention": "divide the two previous answers",
    "swiglu_d_ff": "solve 3 d_model d_ff = 2 d_model (4 d_model) for d_ff",
}


def check_param_counts(**answers: Any) -> None:
    """Exercise 4: MLP parameters against attention for GPT-2 small and Llama-2 7B, and the SwiGLU width."""
    check_numbers(answers, COUNT_QUESTIONS,
                  tolerance={"gpt2_mlp_share": 1e-3, "llama_mlp_over_attention": 1e-3},
                  mistakes=_COUNT_MISTAKES, hints=_COUNT_HINTS, name="check_param_counts",
                  integers=("gpt2_mlp", "gpt2_attention", "llama_mlp", "llama_attention", "swiglu_d_ff"))


# ---------------------------------------------------------------------------------------------
# Exercise 5: a test for token independence
# ---------------------------------------------------------------------------------------------

# The token-independence test: wrong answers of the form is_token_independent(fn, x) -> bool.


def _changes(fn: Callable, x: torch.Tensor, j: int, others: Sequence[int], atol: float = 1e-6) -> bool:
    moved = x.clone()
    moved[:, j] += 1.0
    return not torch.allclose(fn(moved)[:, list(others)], fn(x)[:, list(others)], rtol=0, atol=atol)


def _indep_variant(style: str) -> Callable[[Callable, torch.Tensor], bool]:
    def wrong(fn, x):
        T = x.shape[1]
        if style == "always_true":
            return True
        if style == "own_position":
            return not any(_changes(fn, x, j, range(T)) for j in range(T))
        if style == "last_only":
            return not _changes(fn, x, T - 1, range(T - 1))
        if style == "next_only":
            return not _changes(fn, x, 0, [1])
        if style == "loose":
            return not any(_changes(fn, x, j, [i for i in range(T) if i != j], atol=0.1) for j in range(T))
        if style == "permutation":
            perm = torch.arange(T - 1, -1, -1)
            return torch.allclose(fn(x[:, perm]), fn(x)[:, perm], atol=1e-6)
        raise ValueError(style)
    return wrong


INDEPENDENCE_MISTAKES = (
    Mistake("always_true",
            "returns True for self-attention, which mixes tokens; perturb one token and check whether the "
            "outputs at the other positions change",
            _indep_variant("always_true")),
    Mistake("own_position_compared",
            "returns False for a position-wise FFN: the perturbed token's own output is expected to change, "
            "so compare only the outputs at the other positions",
            _indep_variant("own_position")),
    Mistake("last_token_only",
            "perturbs only the last token, which a causal layer never lets earlier positions read; perturb "
            "every position j and compare the outputs at all positions other than j",
            _indep_variant("last_only")),
    Mistake("one_neighbour_only",
            "looks at only one other position; a layer can mix far-apart tokens (the trap here lets only the "
            "last position read the first token), so compare the outputs at every other position",
            _indep_variant("next_only")),
    Mistake("permutation_equivariance",
            "tests permutation equivariance, but attention without positions and a layer that adds the mean "
            "over tokens are permutation-equivariant and still mix tokens; perturb one token instead",
            _indep_variant("permutation")),
    Mistake("tolerance_too_loose",
            "the tolerance is so loose that a layer adding 5% of the previous token passes as independent; "
            "compare with torch.allclose's default tolerances (or torch.equal)",
            _indep_variant("loose")),
)


def _given_to_answer(fn: Callable) -> Callable:
    """The same function, with its code marked as not the checks' own.

    The learner's answer is meant to call these layers; the checks refuse answers that call the
    checks' code, so the layers are rebuilt with a code object whose file is not in helpers/checks.
    They call only torch and the course's reference functions, which an answer may use here.
    """
    code = fn.__code__.replace(co_filename=f"<layer given to your answer: {fn.__name__}>")
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _probes(gen: torch.Generator, d_model: int, dtype: torch.dtype) -> list[tuple[str, Callable, bool]]:
    """(description, layer (B, T, d_model) -> (B, T, d_model), is it token-independent?)."""
    w1, b1, w2, b2 = _ffn_weights(gen, d_model, 2 * d_model + 1, dtype)
    w_gate, w_up = (_randn(gen, 2 * d_model + 1, d_model, dtype=dtype) for _ in range(2))
    w_down = _randn(gen, d_model, 2 * d_model + 1, dtype=dtype)
    w_q, w_k, w_v = (_randn(gen, d_model, d_model, dtype=dtype) for _ in range(3))

    def ffn(x):
        return ref.feed_forward(x, w1, b1, w2, b2)

    def swiglu(x):
        return ref.swiglu_ffn(x, w_gate, w_up, w_down)

    def layer_norm(x):
        return F.layer_norm(x, (x.shape[-1],))

    def attention(x):
        return attention_ref.scaled_dot_product_attention(x @ w_q.T, x @ w_k.T, x @ w_v.T)[0]

    def causal_attention(x):
        mask = attention_ref.causal_mask(x.shape[1])
        return attention_ref.scaled_dot_product_attention(x @ w_q.T, x @ w_k.T, x @ w_v.T, mask)[0]

    def last_reads_first(x):
        out = ref.feed_forward(x, w1, b1, w2, b2)
        return torch.cat([out[:, :-1], out[:, -1:] + 0.5 * x[:, :1]], dim=1)

    def plus_token_mean(x):
        return ref.feed_forward(x, w1, b1, w2, b2) + x.mean(dim=1, keepdim=True)

    def leaks_previous_token(x):
        return ref.feed_forward(x, w1, b1, w2, b2) + 0.05 * torch.roll(x, 1, dims=1)

    return [
        ("a position-wise FFN (GELU)", _given_to_answer(ffn), True),
        ("a SwiGLU FFN", _given_to_answer(swiglu), True),
        ("LayerNorm over d_model (it mixes features within a token, never tokens)", _given_to_answer(layer_norm), True),
        ("self-attention", _given_to_answer(attention), False),
        ("causal self-attention", _given_to_answer(causal_attention), False),
        ("an FFN whose last output also reads the first token", _given_to_answer(last_reads_first), False),
        ("an FFN plus the mean over tokens", _given_to_answer(plus_token_mean), False),
        ("an FFN plus 5% of the previous token", _given_to_answer(leaks_previous_token), False),
    ]


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        return bool(value.item())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise CheckFailed(f"{name} should return True or False; it returned {type(value).__name__} {value!r}")


def check_token_independence_test(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                                  B: int = 2, T: int = 5, d_model: int = 6) -> None:
    """is_token_independent(fn, x) -> bool: True exactly for layers whose output i ignores tokens j != i."""
    name = "is_token_independent"
    gen = torch.Generator().manual_seed(seed)
    x = _randn(gen, B, T, d_model, dtype=dtype)  # (B, T, d_model)
    probes = _probes(gen, d_model, dtype)
    sizes = {"B": B, "T": T, "d_model": d_model}
    verify_environment()
    answers = []
    for description, layer, _ in probes:
        case = Case((layer, x), sizes, ("fn", "x"), description)
        answers.append(_as_bool(call_learner(fn, name, case, FORBIDDEN["ex5"]), name))
    expected = [independent for _, _, independent in probes]
    if answers == expected:
        verify_environment()
        print(f"✓ {name}: right on all {len(probes)} layers (3 token-independent, {len(probes) - 3} token-mixing)")
        return
    for mistake in INDEPENDENCE_MISTAKES:
        if [mistake.impl(layer, x.clone()) for _, layer, _ in probes] == answers:
            raise CheckFailed(f"{name}: {mistake.message}")
    wrong = next(i for i, (a, e) in enumerate(zip(answers, expected)) if a != e)
    description = probes[wrong][0]
    if expected[wrong]:
        why = "its output at position i depends on token i only, so only the perturbed token's own output may change"
    else:
        why = "perturbing some token changes the output at another position; try every position"
    raise CheckFailed(f"{name} returned {answers[wrong]} for {description}; expected {expected[wrong]}: {why} "
                      f"[inputs: x {tuple(x.shape)} = (B, T, d_model) {str(dtype).replace('torch.', '')}]")


# ---------------------------------------------------------------------------------------------
# Exercise 6: the top-k router
# ---------------------------------------------------------------------------------------------


def _route_variant(style: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    def wrong(router_logits, k):
        if style == "smallest":
            values, idx = router_logits.topk(k, dim=-1, largest=False)
            return torch.softmax(values, dim=-1), idx
        values, idx = router_logits.topk(k, dim=-1)
        probs = torch.softmax(router_logits, dim=-1)
        if style == "softmax_all":
            return probs, idx
        if style == "not_renormalized":
            return probs.gather(-1, idx), idx
        if style == "no_softmax":
            return values, idx
        if style == "token_axis":
            return torch.softmax(values, dim=-2), idx
        raise ValueError(style)
    return wrong


ROUTE_MISTAKES = (
    Mistake("softmax_all_experts",
            "the weights are a softmax over all n_experts, shape (..., n_experts); return only the k "
            "chosen experts' weights, shape (..., k), from a softmax over their k logits",
            _route_variant("softmax_all")),
    Mistake("not_renormalized",
            "the weights are the all-expert softmax probabilities of the chosen k, so they sum to less "
            "than 1; take the softmax over the k chosen logits (equivalently, divide the k probabilities "
            "by their sum)",
            _route_variant("not_renormalized")),
    Mistake("no_softmax", "the weights are the raw logits of the chosen experts; take a softmax over those k logits",
            _route_variant("no_softmax")),
    Mistake("smallest_logits",
            "these are the k experts with the smallest logits; route each token to its k largest "
            "(torch.topk's default, largest=True)",
            _route_variant("smallest")),
    Mistake("softmax_token_axis",
            "the softmax runs over the token axis (dim=-2); each token's k weights must sum to 1, so take "
            "it over the last axis",
            _route_variant("token_axis")),
)


def _route_probe(order: str):
    def wrong(router_logits, k):
        values, idx = router_logits.topk(k, dim=-1)
        weights = torch.softmax(values, dim=-1)
        if order == "weights_reversed":
            return weights.flip(-1), idx
        by_index = idx.argsort(dim=-1)  # the same pairs, listed by expert index
        return weights.gather(-1, by_index), idx.gather(-1, by_index)
    return wrong


ROUTE_PROBES = _probe_kit.probes({
    "by_expert_index": ("the chosen experts are listed by expert index; list them as torch.topk does, largest "
                        "logit first, with weights[..., j] belonging to indices[..., j]", _route_probe("by_index")),
    "weights_reversed": ("the weights are in the opposite order to the indices: weights[..., j] must be the "
                         "weight of expert indices[..., j]", _route_probe("weights_reversed")),
})


def check_top_k_route(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                      B: int = 2, T: int = 5, n_experts: int = 7, k: int = 3) -> None:
    """top_k_route(router_logits, k) -> (weights (..., k), expert_indices (..., k)), softmax over the chosen k."""
    gen = torch.Generator().manual_seed(seed)
    names = ("router_logits", "k")
    cases = [
        Case((_randn(gen, T, n_experts, dtype=dtype, scale=2.0), k), {"T": T, "n_experts": n_experts, "k": k}, names),
        Case((_randn(gen, B, T, n_experts, dtype=dtype, scale=2.0), k), {"B": B, "T": T, "n_experts": n_experts, "k": k},
             names, "3-D logits (B, T, n_experts)"),
        Case((_randn(gen, T, n_experts, dtype=dtype, scale=2.0), 1), {"T": T, "n_experts": n_experts}, names, "k=1"),
    ]
    check_function(fn, name="top_k_route", probes=ROUTE_PROBES, reference=ref.top_k_route, cases=cases,
                   outputs=("weights", "expert_indices"), mistakes=ROUTE_MISTAKES, forbidden=FORBIDDEN["ex6"])


# ---------------------------------------------------------------------------------------------
# Exercise 7: the MoE forward pass
# ---------------------------------------------------------------------------------------------


def _moe_variant(style: str) -> Callable[..., torch.Tensor]:
    def wrong(x, router_weight, experts, k):
        logits = x @ router_weight.T  # (..., n_experts)
        values, idx = logits.topk(k, dim=-1)  # (..., k)
        weights = {"not_renormalized": lambda: torch.softmax(logits, -1).gather(-1, idx),
                   "unweighted": lambda: torch.ones_like(values),
                   "mean": lambda: torch.full_like(values, 1.0 / k),
                   "misaligned": lambda: torch.softmax(values, -1).flip(-1)}.get(style, lambda: torch.softmax(values, -1))()
        flat = x.reshape(-1, x.shape[-1])  # (N, d_model)
        outs = torch.stack([expert(flat) for expert in experts], dim=1)  # (N, n_experts, d_model)
        if style == "dense_softmax":
            gate = torch.softmax(logits, -1).reshape(-1, len(experts))  # (N, n_experts)
        else:
            gate = torch.zeros(flat.shape[0], len(experts), dtype=x.dtype).scatter(
                -1, idx.reshape(-1, k), weights.reshape(-1, k))  # (N, n_experts)
        return (gate[:, :, None] * outs).sum(1).reshape(x.shape)
    return wrong


MOE_MISTAKES = (
    Mistake("not_renormalized",
            "the chosen experts are weighted by their all-expert softmax probabilities, which sum to less "
            "than 1; weight them by a softmax over the k chosen logits",
            _moe_variant("not_renormalized")),
    Mistake("unweighted_sum",
            "the chosen experts' outputs are added without the router weights; multiply each by its weight",
            _moe_variant("unweighted")),
    Mistake("mean_of_chosen",
            "the chosen experts are averaged with equal weights 1/k; weight each by the softmax of its router logit",
            _moe_variant("mean")),
    Mistake("dense_softmax",
            "every expert contributes, weighted by the softmax over all experts (a dense mixture); only the "
            "top-k experts of each token may contribute",
            _moe_variant("dense_softmax")),
    Mistake("weights_misaligned",
            "each weight is paired with the wrong expert: keep the weights in the same order as the expert "
            "indices (the largest weight goes with the largest logit)",
            _moe_variant("misaligned")),
)


def _moe_probe(weigh: Callable[[torch.Tensor], torch.Tensor]):
    def wrong(x, router_weight, experts, k):
        values, idx = (x @ router_weight.T).topk(k, dim=-1)  # (..., k)
        flat = x.reshape(-1, x.shape[-1])  # (N, d_model)
        outs = torch.stack([expert(flat) for expert in experts], dim=1)  # (N, n_experts, d_model)
        gate = torch.zeros(flat.shape[0], len(experts), dtype=x.dtype).scatter(
            -1, idx.reshape(-1, k), weigh(values).reshape(-1, k))  # (N, n_experts)
        return (gate[:, :, None] * outs).sum(1).reshape(x.shape)
    return wrong


MOE_PROBES = _probe_kit.probes({
    "raw_logit_weights": ("the chosen experts are weighted by their raw router logits; weight them by a softmax "
                          "over the k chosen logits", _moe_probe(lambda v: v)),
    "sigmoid_weights": ("the chosen experts are weighted by the sigmoid of their logits; this exercise weights "
                        "them by a softmax over the k chosen logits", _moe_probe(torch.sigmoid)),
})


def _experts(gen: torch.Generator, n_experts: int, d_model: int, d_ff: int, dtype: torch.dtype,
             gated: bool) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """Expert FFNs as functions (N, d_model) -> (N, d_model): partials of the course's reference FFNs."""
    experts = []
    for _ in range(n_experts):
        if gated:
            w = [_randn(gen, d_ff, d_model, dtype=dtype, scale=2 / math.sqrt(d_model)) for _ in range(2)]
            w_down = _randn(gen, d_model, d_ff, dtype=dtype, scale=2 / math.sqrt(d_ff))
            experts.append(functools.partial(ref.swiglu_ffn, w_gate=w[0], w_up=w[1], w_down=w_down))
        else:
            w1, b1, w2, b2 = _ffn_weights(gen, d_model, d_ff, dtype)
            experts.append(functools.partial(ref.feed_forward, w1=w1, b1=b1, w2=w2, b2=b2))
    return experts


def check_moe_forward(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, T: int = 5,
                      d_model: int = 6, d_ff: int = 9, n_experts: int = 4, k: int = 2) -> None:
    """moe_forward(x, router_weight, experts, k) -> (..., d_model): top-k experts, softmax-weighted."""
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "router_weight", "experts", "k")
    other_k = 1 if k != 1 else min(2, n_experts)
    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype), _randn(gen, n_experts, d_model, dtype=dtype),
              _experts(gen, n_experts, d_model, d_ff, dtype, gated=False), k),
             {"B": B, "T": T, "d_model": d_model, "n_experts": n_experts}, names, f"GELU experts, k={k}"),
        Case((_randn(gen, T, d_model, dtype=dtype), _randn(gen, n_experts, d_model, dtype=dtype),
              _experts(gen, n_experts, d_model, d_ff, dtype, gated=True), other_k),
             {"T": T, "d_model": d_model, "n_experts": n_experts}, names, f"2-D input, SwiGLU experts, k={other_k}"),
    ]
    check_function(fn, name="moe_forward", probes=MOE_PROBES, reference=ref.moe_forward, cases=cases,
                   mistakes=MOE_MISTAKES, forbidden=FORBIDDEN["ex7"],
                   prerequisites=MappingProxyType({"top_k_route": (check_top_k_route, "exercise 6")}))


# ---------------------------------------------------------------------------------------------
# Exercise 8: MoE numbers
# ---------------------------------------------------------------------------------------------

MIXTRAL = {"d_model": 4096, "d_ff": 14336, "n_experts": 8, "k": 2}  # Mixtral 8x7B, per layer
_mixtral_expert = ref.ffn_param_count(MIXTRAL["d_model"], MIXTRAL["d_ff"], gated=True, bias=False)
# The balance example: 8 tokens, 4 experts, top-1 counts (4, 2, 1, 1), mean router probabilities P.
BALANCE_COUNTS = (4, 2, 1, 1)
BALANCE_P = (0.4, 0.3, 0.2, 0.1)
_f = [c / sum(BALANCE_COUNTS) for c in BALANCE_COUNTS]

MOE_QUESTIONS = {
    "mixtral_total_expert_params": MIXTRAL["n_experts"] * _mixtral_expert,  # 1,409,286,144
    "mixtral_active_expert_params": MIXTRAL["k"] * _mixtral_expert,  # 352,321,536
    "balance_loss": 4 * sum(f * p for f, p in zip(_f, BALANCE_P)),  # 1.25
    "balanced_loss": 1.0,
    "capacity": ref.expert_capacity(8, 4, k=1, capacity_factor=1.0),  # 2
    "dropped": sum(max(c - 2, 0) for c in BALANCE_COUNTS),  # 2
    "dropped_at_1_5": sum(max(c - ref.expert_capacity(8, 4, k=1, capacity_factor=1.5), 0) for c in BALANCE_COUNTS),  # 1
}

_MOE_MISTAKES = {
    "mixtral_total_expert_params": [
        (8 * _mixtral_expert + 8 * 4096, "the question asks for the expert FFNs only; leave the router out"),
        (8 * 2 * 4096 * 14336, "each expert is a SwiGLU FFN with three matrices, not two"),
        (2 * _mixtral_expert, "that is what one token uses (k = 2 experts); the layer holds all 8"),
    ],
    "mixtral_active_expert_params": [
        (_mixtral_expert, "Mixtral routes each token to k = 2 experts, not 1"),
        (8 * _mixtral_expert, "that is every expert; a token runs only its k = 2 experts"),
        (2 * 2 * 4096 * 14336, "each expert is a SwiGLU FFN with three matrices, not two"),
    ],
    "balance_loss": [
        (sum(f * p for f, p in zip(_f, BALANCE_P)), "the factor n_experts = 4 is missing: loss = n * sum_i f_i P_i"),
        (4 * sum(f * f for f in _f), ("that multiplies f_i by itself; the loss multiplies the fraction f_i by the mean "
                                     "router probability P_i")),
        (4 * sum(p * p for p in BALANCE_P), ("that multiplies P_i by itself; the loss multiplies the fraction f_i by the "
                                            "mean router probability P_i")),
    ],
    "balanced_loss": [
        (0.25, "the factor n_experts is missing: with f_i = P_i = 1/n the loss is n * n * (1/n)^2 = 1"),
        (0.0, "the loss is not 0 at balance: it is n * sum_i (1/n)(1/n) = 1, its smallest value"),
    ],
    "capacity": [
        (8, "that is every token; capacity = capacity_factor * tokens * k / n_experts"),
        (1, "8 tokens x top-1 over 4 experts is 2 per expert on average, times capacity factor 1.0"),
    ],
    "dropped": [
        (4, "only the assignments beyond capacity are dropped: expert 0 serves its first 2 tokens and drops the other 2"),
        (6, "experts 2 and 3 are under capacity: they drop nothing, and unused slots are not dropped tokens"),
    ],
    "dropped_at_1_5": [
        (2, "with capacity factor 1.5 each expert has ceil(1.5 x 2) = 3 slots"),
        (0, "expert 0 receives 4 tokens and has 3 slots, so one is dropped"),
    ],
}

_MOE_HINTS = {
    "mixtral_total_expert_params": "8 experts, each three 4096 x 14336 matrices",
    "mixtral_active_expert_params": "a token runs k = 2 experts",
    "balance_loss": "f = counts / 8, then 4 * sum_i f_i P_i",
    "balanced_loss": "put f_i = P_i = 1/4 in the formula",
    "capacity": "ceil(capacity_factor * tokens * k / n_experts)",
    "dropped": "for each expert, max(count - capacity, 0)",
    "dropped_at_1_5": "recompute the capacity with factor 1.5, then count the overflow",
}


def check_moe_numbers(**answers: Any) -> None:
    """Exercise 8: total vs active parameters, the balance loss, capacity and dropped tokens."""
    check_numbers(answers, MOE_QUESTIONS, tolerance={"balance_loss": 1e-6, "balanced_loss": 1e-6},
                  mistakes=_MOE_MISTAKES, hints=_MOE_HINTS, name="check_moe_numbers",
                  integers=("mixtral_total_expert_params", "mixtral_active_expert_params", "capacity", "dropped",
                            "dropped_at_1_5"))


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

# Each mistake is a complete, runnable wrong answer; each probe a variant no catalogue lists, named only
# when a wrong answer clearly is one of them.
PROBES = {"gelu": GELU_PROBES, "feed_forward": FFN_PROBES, "swiglu_ffn": SWIGLU_PROBES, "top_k_route": ROUTE_PROBES,
          "moe_forward": MOE_PROBES}


MISTAKES = {
    "gelu": GELU_MISTAKES,
    "feed_forward": FFN_MISTAKES,
    "swiglu_ffn": SWIGLU_MISTAKES,
    "token_independence": INDEPENDENCE_MISTAKES,
    "top_k_route": ROUTE_MISTAKES,
    "moe_forward": MOE_MISTAKES,
}


protect(ref, sys.modules[__name__])
