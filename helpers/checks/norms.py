"""Checks for chapter 04 (LayerNorm, RMSNorm, Pre-LN and Post-LN blocks, residual-stream norms)
and their catalogue of known mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

The sublayers and norms handed to the learner's block functions are built from torch alone (an
nn.Sequential MLP, a fixed attention pattern applied with torch.matmul, nn.LayerNorm / nn.RMSNorm
with random gamma and beta), so calling them is never mistaken for calling the checks' own code.
norm1 and norm2 have different parameters and the attention pattern mixes tokens, so every order
of the four calls gives different numbers: each wrong order is recognised by its output.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from .. import norms as ref
from . import probes as _probes
from .core import (
    Case,
    CheckFailed,
    Mistake,
    check_function,
    check_numbers,
    protect,
    verify_environment,
)
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "check_layer_norm",
    "check_norm_counts",
    "check_norms_by_hand",
    "check_post_ln_block",
    "check_pre_ln_block",
    "check_residual_norms",
    "check_rms_norm",
]


# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The learner writes these themselves: an answer that is or calls one of them is refused.
_NORM_BUILTINS = (
    F.layer_norm, torch.layer_norm, torch.native_layer_norm, nn.LayerNorm.forward,
    F.rms_norm, torch.rms_norm, nn.RMSNorm.forward,
    F.group_norm, torch.group_norm, nn.GroupNorm.forward,
    F.instance_norm, torch.instance_norm, F.batch_norm, torch.batch_norm,
)
# The block exercises hand over the norms and sublayers: only the block equations are the learner's.
_BLOCK_IMPLEMENTATIONS = (ref.pre_ln_block, ref.post_ln_block, nn.TransformerEncoderLayer.forward,
                          nn.TransformerEncoder.forward)
# Exercises 1 and 7 ask for numbers.
FORBIDDEN = {
    "ex1": (),
    "ex2": (ref, *_NORM_BUILTINS),
    "ex3": (ref, *_NORM_BUILTINS),
    "ex4": _BLOCK_IMPLEMENTATIONS,
    "ex5": _BLOCK_IMPLEMENTATIONS,
    "ex6": (ref.residual_norms,),
    "ex7": (),
}


# ---------------------------------------------------------------------------------------------
# Shared: the statistics' axes and the inputs of exercises 2 and 3
# ---------------------------------------------------------------------------------------------


def _stats_dims(axis: str, x: torch.Tensor) -> tuple[int, ...]:
    """The axes a (right or wrong) norm takes its statistics over."""
    if axis == "batch":
        if x.dim() < 3:
            raise ValueError("no batch axis")  # this mistake cannot be told apart on (T, d_model)
        return (0,)
    return {"features": (-1,), "sequence": (-2,), "sequence_and_features": (-2, -1)}[axis]


def _divide_by_spread(numerator, second_moment, eps, eps_place: str):
    """numerator / sqrt(second_moment + eps) (the variance for LayerNorm, the mean square for RMSNorm),
    or with eps in one of the catalogued wrong places: "outside" the root, "none", or "no_sqrt"."""
    if eps_place == "inside":
        return numerator / torch.sqrt(second_moment + eps)
    if eps_place == "outside":
        return numerator / (torch.sqrt(second_moment) + eps)
    if eps_place == "none":
        return numerator / torch.sqrt(second_moment)
    return numerator / (second_moment + eps)  # "no_sqrt"


def _tokens(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Tokens with varied offsets and spreads; one token is tiny (entries ~1e-3), so that eps matters there."""
    offsets = _randn(gen, *shape[:-1], 1, dtype=torch.float64) * 2
    spreads = torch.rand(*shape[:-1], 1, generator=gen, dtype=torch.float64) * 3 + 0.5
    x = _randn(gen, *shape, dtype=torch.float64) * spreads + offsets
    small = (0,) * (len(shape) - 2) + (min(1, shape[-2] - 1),)
    x[small] = _randn(gen, shape[-1], dtype=torch.float64) * 1e-3
    return x.to(dtype)


# ---------------------------------------------------------------------------------------------
# Shared: the blocks' sublayers and norms, and the block orders both block exercises' mistakes use
# ---------------------------------------------------------------------------------------------


class _Given(functools.partial):
    """A sublayer or norm handed to the learner: a plain call of a torch callable, with a short repr."""

    def __new__(cls, description: str, func: Callable[..., Any], *args: Any) -> Self:
        self = super().__new__(cls, func, *args)
        self.description = description
        return self

    def __repr__(self) -> str:
        return self.description


def _fill_(param: torch.Tensor, values: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(values)


def _sublayers(gen: torch.Generator, T: int, d_model: int, d_ff: int, dtype: torch.dtype, norm: str
               ) -> tuple[_Given, _Given, _Given, _Given]:
    """attn: a fixed causal attention pattern (T, T) applied with torch.matmul; ffn: Linear-tanh-Linear;
    norm1, norm2: torch's own norms with different random parameters."""
    scores = _randn(gen, T, T, dtype=torch.float64) * 2
    pattern = torch.softmax(scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), dim=-1)
    attn = _Given(f"attn (a fixed causal attention pattern of shape ({T}, {T}), applied as pattern @ x)",
                  torch.matmul, pattern.to(dtype))
    with torch.random.fork_rng(devices=[]):  # build modules without touching the learner's random state
        mlp = nn.Sequential(nn.Linear(d_model, d_ff, dtype=dtype), nn.Tanh(), nn.Linear(d_ff, d_model, dtype=dtype))
        norms = [nn.LayerNorm(d_model, eps=1e-5, dtype=dtype) if norm == "layernorm"
                 else nn.RMSNorm(d_model, eps=1e-6, dtype=dtype) for _ in range(2)]
    for layer in (mlp[0], mlp[2]):
        _fill_(layer.weight, _randn(gen, *layer.weight.shape, dtype=dtype) * 1.5 / math.sqrt(layer.in_features))
        _fill_(layer.bias, _randn(gen, *layer.bias.shape, dtype=dtype) * 0.5)
    for module in norms:
        _fill_(module.weight, 1 + 0.5 * _randn(gen, d_model, dtype=dtype))
        if getattr(module, "bias", None) is not None:
            _fill_(module.bias, 0.5 * _randn(gen, d_model, dtype=dtype))
    mlp.requires_grad_(False)
    for module in norms:
        module.requires_grad_(False)
    kind = "nn.LayerNorm" if norm == "layernorm" else "nn.RMSNorm"
    return (attn,
            _Given(f"ffn (Linear {d_model}->{d_ff}, tanh, Linear {d_ff}->{d_model})", mlp),
            _Given(f"norm1 ({kind}({d_model}) with its own gamma)", norms[0]),
            _Given(f"norm2 ({kind}({d_model}) with another gamma)", norms[1]))


def _block_cases(seed: int, dtype: torch.dtype, B: int, T: int, d_model: int, d_ff: int) -> list[Case]:
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "attn", "ffn", "norm1", "norm2")
    sizes = {"B": B, "T": T, "d_model": d_model}
    return [
        Case((_randn(gen, B, T, d_model, dtype=dtype) * 2, *_sublayers(gen, T, d_model, d_ff, dtype, "layernorm")),
             sizes, names, "LayerNorm norms"),
        Case((_randn(gen, B, T, d_model, dtype=dtype) + 1, *_sublayers(gen, T, d_model, d_ff, dtype, "rmsnorm")),
             sizes, names, "RMSNorm norms"),
    ]


def _residual_from_normalized(x, attn, ffn, norm1, norm2):
    h = norm1(x)
    x = h + attn(h)
    h = norm2(x)
    return h + ffn(h)


def _norm_on_sublayer_output(x, attn, ffn, norm1, norm2):
    x = x + norm1(attn(x))
    return x + norm2(ffn(x))


def _swap_norms(block):
    return lambda x, attn, ffn, norm1, norm2: block(x, attn, ffn, norm2, norm1)


def _swap_sublayers(block):
    return lambda x, attn, ffn, norm1, norm2: block(x, ffn, attn, norm1, norm2)


def _pre(x, attn, ffn, norm1, norm2):
    x = x + attn(norm1(x))
    return x + ffn(norm2(x))


def _post(x, attn, ffn, norm1, norm2):
    x = norm1(x + attn(x))
    return norm2(x + ffn(x))


# ---------------------------------------------------------------------------------------------
# Exercise 1: LayerNorm and RMSNorm for one vector, by hand
# ---------------------------------------------------------------------------------------------

# Exercise 1's vector (also printed in the exercise notebook). eps is huge on purpose, so that
# where it goes changes the answer: var + eps = 16 and mean(x^2) + eps = 25.
HAND_X = [0.0, 2.0, 2.0, 8.0]
HAND_GAMMA = [2.0, 0.5, 1.0, 2.0]
HAND_BETA = [0.5, 0.0, 0.0, -1.0]
HAND_EPS = 7.0


def _hand_variants() -> dict[str, dict[str, Any]]:
    """The right answers of exercise 1 and the ones each known mistake gives."""
    x = torch.tensor(HAND_X, dtype=torch.float64)
    gamma = torch.tensor(HAND_GAMMA, dtype=torch.float64)
    beta = torch.tensor(HAND_BETA, dtype=torch.float64)
    eps, d = HAND_EPS, len(HAND_X)
    mean = x.mean()
    var = (x - mean).pow(2).mean()
    ms = x.pow(2).mean()
    x_hat = (x - mean) / torch.sqrt(var + eps)
    ln = {
        "right": x_hat * gamma + beta,
        "unbiased": (x - mean) / torch.sqrt(var * d / (d - 1) + eps) * gamma + beta,
        "eps_outside": (x - mean) / (torch.sqrt(var) + eps) * gamma + beta,
        "no_eps": (x - mean) / torch.sqrt(var) * gamma + beta,
        "no_affine": x_hat,
        "no_beta": x_hat * gamma,
        "no_gamma": x_hat + beta,
        "beta_first": (x_hat + beta) * gamma,
    }
    rms_value = torch.sqrt(ms + eps)
    rms = {
        "right": x / rms_value * gamma,
        "subtracts_mean": x_hat * gamma,
        "eps_outside": x / (torch.sqrt(ms) + eps) * gamma,
        "no_eps": x / torch.sqrt(ms) * gamma,
        "no_gamma": x / rms_value,
        "with_beta": x / rms_value * gamma + beta,
        "sum_not_mean": x / torch.sqrt(x.pow(2).sum() + eps) * gamma,
    }
    return {"mean": mean.item(), "var": var.item(), "rms": rms_value.item(), "ms": ms.item(), "ln": ln,
            "rms_vec": rms, "sum_sq": x.pow(2).sum().item()}


_M_UNBIASED = ("the variance is divided by d_model - 1 = 3 (the unbiased variance, torch.var's default); "
               "LayerNorm divides by d_model = 4")

_HAND_WHY = {
    "unbiased": _M_UNBIASED,
    "eps_outside": "eps is added outside the square root; it goes inside: sqrt(var + eps)",
    "no_eps": "eps is missing: the denominator is sqrt(var + eps), and eps = 7 here",
    "no_affine": "these are the normalized values before gamma and beta; the output is x_hat * gamma + beta",
    "no_beta": "beta is not added: the output is x_hat * gamma + beta",
    "no_gamma": "gamma is not applied: the output is x_hat * gamma + beta",
    "beta_first": "beta is added before multiplying by gamma; the output is x_hat * gamma + beta",
}

_RMS_WHY = {
    "subtracts_mean": "RMSNorm does not subtract the mean: divide x itself by sqrt(mean(x^2) + eps)",
    "eps_outside": "eps is added outside the square root; it goes inside: sqrt(mean(x^2) + eps)",
    "no_eps": "eps is missing: the denominator is sqrt(mean(x^2) + eps), and eps = 7 here",
    "no_gamma": "gamma is not applied: the output is x / rms * gamma",
    "with_beta": "RMSNorm has no beta: the output is x / rms * gamma",
    "sum_not_mean": "the squares are summed, not averaged: rms = sqrt(mean(x^2) + eps)",
}


def _as_vector(name: str, value: Any) -> torch.Tensor:
    if value is None:
        raise CheckFailed(f"{name} has no answer yet: fill in the numbers and run its cell")
    try:
        vector = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckFailed(f"{name} should be a list of 4 numbers ({error})") from None
    if tuple(vector.shape) != (4,):
        raise CheckFailed(f"{name} has shape {tuple(vector.shape)}; expected (4,), one number per feature of x")
    return vector


def check_norms_by_hand(mean_x: Any, var_x: Any, ln_by_hand: Any, rms_x: Any, rms_by_hand: Any, *,
                        tolerance: float = 2e-3) -> None:
    """Exercise 1: mean, variance and LayerNorm of HAND_X; its RMS and RMSNorm, to three decimals."""
    v = _hand_variants()
    scalar_mistakes = {
        "mean_x": [(sum(HAND_X), "that is the sum; the mean divides it by d_model = 4"),
                   (sum(HAND_X) / 3, "the mean divides by d_model = 4, not by 3")],
        "var_x": [(v["var"] * 4 / 3, _M_UNBIASED),
                  (math.sqrt(v["var"]), "that is the standard deviation; the variance is its square, mean((x - mean)^2)"),
                  (v["var"] + HAND_EPS, "that includes eps; give the variance itself, mean((x - mean)^2)"),
                  (v["ms"], "that is the mean of x^2; the variance subtracts the mean first: mean((x - mean)^2)")],
    }
    verify_environment()
    hints = {"mean_x": "add the four numbers and divide by 4",
             "var_x": "average the squared differences from the mean",
             "rms_x": "square each entry, average the squares, add eps, take the square root"}
    _check_scalar("mean_x", mean_x, v["mean"], scalar_mistakes["mean_x"], hints["mean_x"], tolerance)
    _check_scalar("var_x", var_x, v["var"], scalar_mistakes["var_x"], hints["var_x"], tolerance)
    _check_vector("ln_by_hand", _as_vector("ln_by_hand", ln_by_hand), v["ln"], _HAND_WHY, tolerance)
    rms_mistakes = {"rms_x": [
        (math.sqrt(v["ms"]), "eps is missing: rms = sqrt(mean(x^2) + eps), and eps = 7 here"),
        (math.sqrt(v["ms"]) + HAND_EPS, "eps is added outside the square root; rms = sqrt(mean(x^2) + eps)"),
        (math.sqrt(v["var"] + HAND_EPS), "that is sqrt(var + eps): RMSNorm does not subtract the mean; use mean(x^2)"),
        (math.sqrt(v["sum_sq"] + HAND_EPS), "the squares are summed, not averaged: rms = sqrt(mean(x^2) + eps)"),
        (v["ms"] + HAND_EPS, "the square root is missing: rms = sqrt(mean(x^2) + eps)"),
    ]}
    _check_scalar("rms_x", rms_x, v["rms"], rms_mistakes["rms_x"], hints["rms_x"], tolerance)
    _check_vector("rms_by_hand", _as_vector("rms_by_hand", rms_by_hand), v["rms_vec"], _RMS_WHY, tolerance)
    verify_environment()
    print("✓ mean, variance, LayerNorm, RMS and RMSNorm are all right")


def _check_scalar(key: str, value: Any, target: float, mistakes: Sequence[tuple[float, str]], hint: str,
                  tolerance: float) -> None:
    """One number, as check_numbers judges it (without its success line)."""
    if value is None:
        raise CheckFailed(f"{key} has no answer yet: assign a number to it and run its cell")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CheckFailed(f"{key} should be a number; got {type(value).__name__}")
    if abs(float(value) - target) <= tolerance:
        return
    for wrong, message in mistakes:
        if abs(float(value) - wrong) <= tolerance:
            raise CheckFailed(f"{key} = {value}: {message}")
    raise CheckFailed(f"{key} = {value} is not right; {hint}")


def _check_vector(label: str, mine: torch.Tensor, variants: dict[str, torch.Tensor], why: dict[str, str],
                  tolerance: float) -> None:
    if (mine - variants["right"]).abs().max() <= tolerance:
        return
    for key, reason in why.items():
        if (mine - variants[key]).abs().max() <= tolerance:
            raise CheckFailed(f"{label}: {reason}")
    bad = int(((mine - variants["right"]).abs() > tolerance).nonzero()[0])
    raise CheckFailed(f"{label} is off at feature {bad} (give at least three decimals)")


# ---------------------------------------------------------------------------------------------
# Exercise 2: LayerNorm for tensors
# ---------------------------------------------------------------------------------------------


def _layer_norm(*, axis: str = "features", correction: int = 0, eps_place: str = "inside",
                center: bool = True, affine: str = "gamma_beta", fixed_eps: float | None = None):
    """A complete layer_norm with the given mistakes built in."""
    def wrong(x, gamma, beta, eps=1e-5):
        eps = eps if fixed_eps is None else fixed_eps
        dims = _stats_dims(axis, x)
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, correction=correction)
        numerator = x - mean if center else x
        x_hat = _divide_by_spread(numerator, var, eps, eps_place)
        if affine == "gamma_beta":
            return x_hat * gamma + beta
        if affine == "none":
            return x_hat
        if affine == "gamma":
            return x_hat * gamma
        if affine == "beta":
            return x_hat + beta
        return (x_hat + beta) * gamma  # "beta_first"
    return wrong


LAYER_NORM_MISTAKES = (
    Mistake("over_batch",
            "the statistics are taken over the batch axis (dim=0), so a token's output depends on the "
            "other sequences in the batch; LayerNorm takes the mean and variance of each token over its "
            "own d_model features (dim=-1)",
            _layer_norm(axis="batch")),
    Mistake("over_sequence",
            "the statistics are taken over the sequence axis (dim=-2), so each token is normalized with "
            "the other tokens' values; LayerNorm normalizes each token over its own d_model features (dim=-1)",
            _layer_norm(axis="sequence")),
    Mistake("over_sequence_and_features",
            "the statistics are taken over the whole sequence (dims -2 and -1 together); LayerNorm "
            "normalizes each token separately, over its d_model features only (dim=-1)",
            _layer_norm(axis="sequence_and_features")),
    Mistake("unbiased",
            "the variance is the unbiased one (divided by d_model - 1, torch.var's default); LayerNorm "
            "uses the biased variance, divided by d_model: x.var(dim=-1, correction=0) or "
            "((x - mean) ** 2).mean(dim=-1)",
            _layer_norm(correction=1)),
    Mistake("eps_outside",
            "eps is added outside the square root, (x - mean) / (sqrt(var) + eps); it belongs inside: "
            "(x - mean) / sqrt(var + eps)",
            _layer_norm(eps_place="outside")),
    Mistake("ignores_eps",
            "the eps argument is ignored (1e-5 is used whatever eps is passed); use the eps the function receives",
            _layer_norm(fixed_eps=1e-5)),
    Mistake("no_eps",
            "eps is missing: divide by sqrt(var + eps), which keeps a nearly constant token from being "
            "blown up (or divided by zero)",
            _layer_norm(eps_place="none")),
    Mistake("no_sqrt",
            "the centered x is divided by the variance; divide by the standard deviation sqrt(var + eps)",
            _layer_norm(eps_place="no_sqrt")),
    Mistake("no_centering",
            "the mean is not subtracted from x before dividing; LayerNorm computes (x - mean) / sqrt(var + eps)",
            _layer_norm(center=False)),
    Mistake("no_affine",
            "gamma and beta are not applied; the normalized x_hat is then scaled and shifted: x_hat * gamma + beta",
            _layer_norm(affine="none")),
    Mistake("no_beta", "beta is not added: the output is x_hat * gamma + beta", _layer_norm(affine="gamma")),
    Mistake("no_gamma", "gamma is not applied: the output is x_hat * gamma + beta", _layer_norm(affine="beta")),
    Mistake("beta_first",
            "beta is added before multiplying by gamma, (x_hat + beta) * gamma; the output is x_hat * gamma + beta",
            _layer_norm(affine="beta_first")),
)


def _ln_probe(*, spread: str = "std", affine: Callable[..., torch.Tensor] = lambda xh, g, b: xh * g + b):
    def wrong(x, gamma, beta, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        if spread == "std":
            scale = ((x - mean) ** 2).mean(-1, keepdim=True).add(eps).sqrt()
        elif spread == "mad":
            scale = (x - mean).abs().mean(-1, keepdim=True) + eps
        else:  # "uncentered": mean(x^2) for the variance, while the numerator is centred
            scale = (x * x).mean(-1, keepdim=True).add(eps).sqrt()
        return affine((x - mean) / scale, gamma, beta)
    return wrong


_SPREAD = "LayerNorm divides by the standard deviation, sqrt(mean((x - mean)^2) + eps)"
LAYER_NORM_PROBES = _probes.probes({
    "gamma_beta_swapped": ("gamma and beta are swapped: the output is x_hat * gamma + beta",
                           _ln_probe(affine=lambda xh, g, b: xh * b + g)),
    "beta_multiplied": ("beta multiplies instead of being added: the output is x_hat * gamma + beta",
                        _ln_probe(affine=lambda xh, g, b: xh * g * b)),
    "mean_abs_deviation": (f"the spread is the mean absolute deviation, mean(|x - mean|); {_SPREAD}",
                           _ln_probe(spread="mad")),
    "uncentered_variance": (f"the variance is mean(x^2), without subtracting the mean first; {_SPREAD}",
                            _ln_probe(spread="uncentered")),
})


def _centered_symptom(got: Any, case: Case) -> str | None:
    """For layer_norm: undo gamma and beta; a right answer then has mean 0 per token."""
    _x, gamma, beta = case.args[:3]
    z = (got.detach().double() - beta.double()) / gamma.double()  # (..., d_model)
    if (z.mean(-1).abs() > 1e-3).any():
        return ("after undoing gamma and beta (out = x_hat * gamma + beta) the tokens do not have mean 0: either "
                "each token's own mean over its d_model features (dim=-1) is not subtracted, or gamma and beta "
                "are not applied as x_hat * gamma + beta")
    return None


def check_layer_norm(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                     B: int = 2, T: int = 5, d_model: int = 7, eps: float = 0.1) -> None:
    """layer_norm(x, gamma, beta, eps) over the last axis, like torch.nn.LayerNorm(d_model, eps)."""
    gen = torch.Generator().manual_seed(seed)

    def gamma_beta() -> tuple[torch.Tensor, torch.Tensor]:
        return 1 + 0.5 * _randn(gen, d_model, dtype=dtype), 0.5 * _randn(gen, d_model, dtype=dtype)

    names = ("x", "gamma", "beta", "eps")
    sizes3, sizes2 = {"B": B, "T": T, "d_model": d_model}, {"T": T, "d_model": d_model}
    wide = _tokens(gen, T, B, d_model, dtype=dtype).transpose(0, 1)  # (B, T, d_model), not contiguous
    cases = [
        Case((_tokens(gen, B, T, d_model, dtype=dtype), *gamma_beta(), 1e-5), sizes3, names,
             "(B, T, d_model) input, eps=1e-5, one token tiny so that eps matters"),
        Case((_tokens(gen, T, d_model, dtype=dtype), *gamma_beta(), 1e-5), sizes2, names, "(T, d_model) input"),
        Case((wide, *gamma_beta(), eps), sizes3, names, f"a non-contiguous input and eps={eps}"),
    ]
    check_function(fn, name="layer_norm", probes=LAYER_NORM_PROBES, reference=ref.layer_norm, cases=cases, outputs=("output",),
                   mistakes=LAYER_NORM_MISTAKES, forbidden=FORBIDDEN["ex2"],
                   diagnose=lambda got, expected, case: _centered_symptom(got, case))


# ---------------------------------------------------------------------------------------------
# Exercise 3: RMSNorm for tensors
# ---------------------------------------------------------------------------------------------


def _rms_norm(*, axis: str = "features", eps_place: str = "inside", center: bool = False,
              reduce: str = "mean", gamma_used: bool = True, fixed_eps: float | None = None):
    """A complete rms_norm with the given mistakes built in."""
    def wrong(x, gamma, eps=1e-6):
        eps = eps if fixed_eps is None else fixed_eps
        dims = _stats_dims(axis, x)
        if center:
            x = x - x.mean(dim=dims, keepdim=True)
        square = x.pow(2)
        ms = square.mean(dim=dims, keepdim=True) if reduce == "mean" else square.sum(dim=dims, keepdim=True)
        y = _divide_by_spread(x, ms, eps, eps_place)
        return y * gamma if gamma_used else y
    return wrong


RMS_NORM_MISTAKES = (
    Mistake("subtracts_mean",
            "the mean is subtracted first, which makes it LayerNorm without beta; RMSNorm divides x "
            "itself by its root mean square sqrt(mean(x^2) + eps), with no centering",
            _rms_norm(center=True)),
    Mistake("over_batch",
            "the mean square is taken over the batch axis (dim=0); RMSNorm takes it over each token's "
            "own d_model features (dim=-1)",
            _rms_norm(axis="batch")),
    Mistake("over_sequence",
            "the mean square is taken over the sequence axis (dim=-2); RMSNorm takes it over each "
            "token's own d_model features (dim=-1)",
            _rms_norm(axis="sequence")),
    Mistake("eps_outside",
            "eps is added outside the square root, x / (sqrt(mean(x^2)) + eps); it belongs inside: "
            "x / sqrt(mean(x^2) + eps)",
            _rms_norm(eps_place="outside")),
    Mistake("ignores_eps",
            "the eps argument is ignored (1e-6 is used whatever eps is passed); use the eps the function receives",
            _rms_norm(fixed_eps=1e-6)),
    Mistake("no_eps", "eps is missing: divide by sqrt(mean(x^2) + eps)", _rms_norm(eps_place="none")),
    Mistake("no_sqrt",
            "x is divided by the mean square; divide by its square root, sqrt(mean(x^2) + eps)",
            _rms_norm(eps_place="no_sqrt")),
    Mistake("sum_not_mean",
            "the squares are summed, not averaged, which makes the output's L2 norm 1 instead of its "
            "RMS; use mean(x^2) over the d_model features",
            _rms_norm(reduce="sum")),
    Mistake("no_gamma", "gamma is not applied: the output is x / sqrt(mean(x^2) + eps) * gamma",
            _rms_norm(gamma_used=False)),
)


def _rms_probe(*, spread: str = "rms", how: str = "divide", affine: Callable[..., torch.Tensor] = lambda y, g: y * g):
    def wrong(x, gamma, eps=1e-6):
        scale = ((x * x).mean(-1, keepdim=True) + eps).sqrt() if spread == "rms" else x.abs().mean(-1, keepdim=True) + eps
        return affine(x / scale if how == "divide" else x * scale, gamma)
    return wrong


RMS_NORM_PROBES = _probes.probes({
    "mean_abs": ("the scale is mean(|x|); RMSNorm divides by the root mean square, sqrt(mean(x^2) + eps)",
                 _rms_probe(spread="mean_abs")),
    "gamma_added": ("gamma is added; it multiplies: x / sqrt(mean(x^2) + eps) * gamma",
                    _rms_probe(affine=lambda y, g: y + g)),
    "multiplied_by_rms": ("x is multiplied by its RMS; divide by it: x / sqrt(mean(x^2) + eps) * gamma",
                          _rms_probe(how="multiply")),
})


def check_rms_norm(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                   B: int = 2, T: int = 5, d_model: int = 7, eps: float = 0.1) -> None:
    """rms_norm(x, gamma, eps) over the last axis, like torch.nn.RMSNorm(d_model, eps=eps)."""
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "gamma", "eps")
    sizes3, sizes2 = {"B": B, "T": T, "d_model": d_model}, {"T": T, "d_model": d_model}
    wide = _tokens(gen, T, B, d_model, dtype=dtype).transpose(0, 1)  # (B, T, d_model), not contiguous
    cases = [
        Case((_tokens(gen, B, T, d_model, dtype=dtype), 1 + 0.5 * _randn(gen, d_model, dtype=dtype), 1e-6),
             sizes3, names, "(B, T, d_model) input, eps=1e-6, one token tiny so that eps matters"),
        Case((_tokens(gen, T, d_model, dtype=dtype), 1 + 0.5 * _randn(gen, d_model, dtype=dtype), 1e-6),
             sizes2, names, "(T, d_model) input"),
        Case((wide, 1 + 0.5 * _randn(gen, d_model, dtype=dtype), eps), sizes3, names,
             f"a non-contiguous input and eps={eps}"),
    ]
    check_function(fn, name="rms_norm", probes=RMS_NORM_PROBES, reference=ref.rms_norm, cases=cases, outputs=("output",),
                   mistakes=RMS_NORM_MISTAKES, forbidden=FORBIDDEN["ex3"])


# ---------------------------------------------------------------------------------------------
# Exercise 4: the Pre-LN block
# ---------------------------------------------------------------------------------------------


def _pre_ln_missing_final_residual(x, attn, ffn, norm1, norm2):
    x = x + attn(norm1(x))
    return ffn(norm2(x))


def _pre_ln_no_residuals(x, attn, ffn, norm1, norm2):
    return ffn(norm2(attn(norm1(x))))


def _pre_ln_missing_first_residual(x, attn, ffn, norm1, norm2):
    x = attn(norm1(x))
    return x + ffn(norm2(x))


def _pre_ln_parallel(x, attn, ffn, norm1, norm2):
    return x + attn(norm1(x)) + ffn(norm2(x))


PRE_LN_MISTAKES = (
    Mistake("missing_final_residual",
            "the second residual is missing: the block returns ffn(norm2(x)) instead of x + ffn(norm2(x)); "
            "in Pre-LN both sublayers add their edit to the stream: x = x + ffn(norm2(x))",
            _pre_ln_missing_final_residual),
    Mistake("missing_first_residual",
            "the first residual is missing: x = attn(norm1(x)) drops the incoming stream; it must be "
            "x = x + attn(norm1(x))",
            _pre_ln_missing_first_residual),
    Mistake("no_residuals",
            "there are no residual connections: each sublayer's output replaces the stream instead of "
            "being added to it (x = x + attn(norm1(x)), then x = x + ffn(norm2(x)))",
            _pre_ln_no_residuals),
    Mistake("residual_from_normalized",
            "the residual adds the normalized copy, norm1(x) + attn(norm1(x)); in Pre-LN the raw stream "
            "bypasses the norm: x + attn(norm1(x))",
            _residual_from_normalized),
    Mistake("post_ln",
            "this is the Post-LN block, norm1(x + attn(x)); Pre-LN normalizes the sublayer's input and "
            "adds its output to the raw stream: x + attn(norm1(x))",
            _post),
    Mistake("norm_on_output",
            "the norm is applied to the sublayer's output, x + norm1(attn(x)); in Pre-LN it is applied "
            "to the sublayer's input: x + attn(norm1(x))",
            _norm_on_sublayer_output),
    Mistake("parallel",
            "ffn reads the block's input rather than the stream after the attention update (this is the "
            "parallel block of GPT-J and PaLM); here x = x + attn(norm1(x)) comes first, then "
            "x = x + ffn(norm2(x)) on that new x",
            _pre_ln_parallel),
    Mistake("norms_swapped",
            "norm2 is used before attn and norm1 before ffn; norm1 belongs to attention and norm2 to the "
            "feed-forward network",
            _swap_norms(_pre)),
    Mistake("sublayers_swapped",
            "the feed-forward network runs before attention; a block applies attn first, then ffn",
            _swap_sublayers(_pre)),
)

PRE_LN_PROBES = _probes.probes({
    "norm1_twice": ("norm1 also normalizes the FFN's input; each sublayer has its own norm: "
                    "h = x + attn(norm1(x)), then h + ffn(norm2(h))",
                    lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + ffn(norm1(h))),
    "norm2_twice": ("norm2 also normalizes the attention's input; each sublayer has its own norm: "
                    "h = x + attn(norm1(x)), then h + ffn(norm2(h))",
                    lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm2(x))) + ffn(norm2(h))),
    "attn_twice": ("the attention sublayer runs twice; the second sublayer is the FFN: h + ffn(norm2(h))",
                   lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + attn(norm2(h))),
    "ffn_twice": ("the FFN runs twice; the first sublayer is attention: h = x + attn(norm1(x))",
                  lambda x, attn, ffn, norm1, norm2: (h := x + ffn(norm1(x))) + ffn(norm2(h))),
    "no_norm1": ("the attention reads x without norm1; Pre-LN normalizes each sublayer's input: x + attn(norm1(x))",
                 lambda x, attn, ffn, norm1, norm2: (h := x + attn(x)) + ffn(norm2(h))),
    "no_norm2": ("the FFN reads h without norm2; Pre-LN normalizes each sublayer's input: h + ffn(norm2(h))",
                 lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + ffn(h)),
    "half_updates": ("each sublayer's output is added at half size (x + 0.5 * attn(norm1(x)), h + 0.5 * "
                     "ffn(norm2(h))); the residual adds the whole update: x + attn(norm1(x)), then h + ffn(norm2(h))",
                     lambda x, attn, ffn, norm1, norm2: (h := x + 0.5 * attn(norm1(x))) + 0.5 * ffn(norm2(h))),
    "half_attn_update": ("the attention's output is added at half size (x + 0.5 * attn(norm1(x))); the residual adds "
                         "the whole update: x + attn(norm1(x))",
                         lambda x, attn, ffn, norm1, norm2: (h := x + 0.5 * attn(norm1(x))) + ffn(norm2(h))),
    "half_ffn_update": ("the FFN's output is added at half size (h + 0.5 * ffn(norm2(h))); the residual adds the "
                        "whole update: h + ffn(norm2(h))",
                        lambda x, attn, ffn, norm1, norm2: (h := x + attn(norm1(x))) + 0.5 * ffn(norm2(h))),
    "averaged": ("the stream and each update are averaged, (x + attn(norm1(x))) / 2; the residual adds the update "
                 "to the stream unscaled: x + attn(norm1(x))",
                 lambda x, attn, ffn, norm1, norm2: ((h := (x + attn(norm1(x))) / 2) + ffn(norm2(h))) / 2),
})


def check_pre_ln_block(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                       B: int = 2, T: int = 5, d_model: int = 7, d_ff: int = 11) -> None:
    """pre_ln_block(x, attn, ffn, norm1, norm2): x = x + attn(norm1(x)); x = x + ffn(norm2(x))."""
    check_function(fn, name="pre_ln_block", probes=PRE_LN_PROBES, reference=ref.pre_ln_block,
                   cases=_block_cases(seed, dtype, B, T, d_model, d_ff), outputs=("output",),
                   mistakes=PRE_LN_MISTAKES, forbidden=FORBIDDEN["ex4"])


# ---------------------------------------------------------------------------------------------
# Exercise 5: the Post-LN block
# ---------------------------------------------------------------------------------------------


def _post_ln_ffn_reads_input(x, attn, ffn, norm1, norm2):
    h = norm1(x + attn(x))
    return norm2(h + ffn(x))


def _post_ln_no_residuals(x, attn, ffn, norm1, norm2):
    return norm2(ffn(norm1(attn(x))))


def _post_ln_missing_second_residual(x, attn, ffn, norm1, norm2):
    x = norm1(x + attn(x))
    return norm2(ffn(x))


def _post_ln_missing_second_norm(x, attn, ffn, norm1, norm2):
    x = norm1(x + attn(x))
    return x + ffn(x)


POST_LN_MISTAKES = (
    Mistake("norm_before_add",
            "the sublayer's output is normalized before the residual add, x + norm1(attn(x)); Post-LN "
            "adds first and normalizes the sum: norm1(x + attn(x))",
            _norm_on_sublayer_output),
    Mistake("stream_normalized_before_add",
            "the stream is normalized before the residual add, norm1(x) + attn(norm1(x)); Post-LN adds "
            "the raw x and attn(x) first and normalizes the sum: norm1(x + attn(x))",
            _residual_from_normalized),
    Mistake("pre_ln",
            "this is the Pre-LN block, x + attn(norm1(x)); Post-LN adds the sublayer's output to the "
            "stream and normalizes the sum: norm1(x + attn(x))",
            _pre),
    Mistake("no_residuals",
            "there are no residual connections: norm1(attn(x)) drops x; Post-LN normalizes the sum, "
            "norm1(x + attn(x))",
            _post_ln_no_residuals),
    Mistake("missing_second_residual",
            "the second residual is missing: norm2(ffn(x)) drops the stream; it must be norm2(x + ffn(x))",
            _post_ln_missing_second_residual),
    Mistake("missing_second_norm",
            "the second norm is missing: after the feed-forward network the sum is normalized too, "
            "norm2(x + ffn(x))",
            _post_ln_missing_second_norm),
    Mistake("ffn_reads_input",
            "ffn reads the block's input instead of the stream after the attention sub-block; use the "
            "new x = norm1(x + attn(x)) in norm2(x + ffn(x))",
            _post_ln_ffn_reads_input),
    Mistake("norms_swapped",
            "norm2 is used after attn and norm1 after ffn; norm1 belongs to the attention sub-block and "
            "norm2 to the feed-forward one",
            _swap_norms(_post)),
    Mistake("sublayers_swapped",
            "the feed-forward network runs before attention; a block applies attn first, then ffn",
            _swap_sublayers(_post)),
)

POST_LN_PROBES = _probes.probes({
    "norm1_twice": ("norm1 is used after the FFN too; the second norm is norm2: norm2(h + ffn(h))",
                    lambda x, attn, ffn, norm1, norm2: norm1((h := norm1(x + attn(x))) + ffn(h))),
    "ffn_reads_unnormalized": ("the FFN reads x + attn(x) before norm1; it reads h = norm1(x + attn(x)), the "
                               "stream the second residual continues from",
                               lambda x, attn, ffn, norm1, norm2: norm2(norm1(s := x + attn(x)) + ffn(s))),
    "attn_twice": ("the attention sublayer runs twice; the second sublayer is the FFN: norm2(h + ffn(h))",
                   lambda x, attn, ffn, norm1, norm2: norm2((h := norm1(x + attn(x))) + attn(h))),
})


def check_post_ln_block(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                        B: int = 2, T: int = 5, d_model: int = 7, d_ff: int = 11) -> None:
    """post_ln_block(x, attn, ffn, norm1, norm2): x = norm1(x + attn(x)); x = norm2(x + ffn(x))."""
    check_function(fn, name="post_ln_block", probes=POST_LN_PROBES, reference=ref.post_ln_block,
                   cases=_block_cases(seed, dtype, B, T, d_model, d_ff), outputs=("output",),
                   mistakes=POST_LN_MISTAKES, forbidden=FORBIDDEN["ex5"])


# ---------------------------------------------------------------------------------------------
# Exercise 6: measure the residual stream
# ---------------------------------------------------------------------------------------------


def _stream(x, blocks):
    """[x_0, x_1, ..., x_L]: the residual stream before the first block and after each block."""
    states = [x]
    for block in blocks:
        states.append(block(states[-1]))
    return states


def _residual_wrong(kind: str):
    def wrong(x, blocks):
        states = _stream(x, blocks)
        if kind == "frobenius":
            return torch.stack([s.norm() for s in states])
        if kind == "rms":
            return torch.stack([s.pow(2).mean(-1).sqrt().mean() for s in states])
        if kind == "no_input":
            return torch.stack([s.norm(dim=-1).mean() for s in states[1:]])
        if kind == "squared":
            return torch.stack([s.pow(2).sum(-1).mean() for s in states])
        if kind == "over_sequence":
            return torch.stack([s.norm(dim=-2).mean() for s in states])
        if kind == "sum_over_tokens":
            return torch.stack([s.norm(dim=-1).sum() for s in states])
        if kind == "edits":
            return torch.stack([(b - a).norm(dim=-1).mean() for a, b in itertools.pairwise(states)])
        # "not_chained": every block reads the input x
        return torch.stack([x.norm(dim=-1).mean()] + [block(x).norm(dim=-1).mean() for block in blocks])
    return wrong


RESIDUAL_MISTAKES = (
    Mistake("frobenius",
            "each entry is the norm of the whole (B, T, d_model) tensor, which grows with the number of "
            "tokens; take each token's L2 norm over d_model (dim=-1) and average over the B * T tokens",
            _residual_wrong("frobenius")),
    Mistake("rms",
            "each entry is the tokens' RMS (the L2 norm divided by sqrt(d_model)); measure the L2 norm, "
            "x.norm(dim=-1), averaged over the tokens",
            _residual_wrong("rms")),
    Mistake("no_input",
            "the input stream is missing: entry 0 is the norm of x before the first block, so L blocks "
            "give L + 1 entries",
            _residual_wrong("no_input")),
    Mistake("edits",
            "these are the norms of each block's edit, x_l - x_(l-1); measure the stream itself, x_l, "
            "including x_0 = x",
            _residual_wrong("edits")),
    Mistake("squared",
            "these are mean squared norms; take the square root of each token's sum of squares (its L2 "
            "norm) before averaging",
            _residual_wrong("squared")),
    Mistake("over_sequence",
            "the norm runs over the sequence axis (dim=-2); a token's norm runs over its d_model "
            "features (dim=-1)",
            _residual_wrong("over_sequence")),
    Mistake("sum_over_tokens",
            "the token norms are summed; average them over the B * T tokens",
            _residual_wrong("sum_over_tokens")),
    Mistake("not_chained",
            "every block is applied to the input x; a stack feeds each block the previous block's "
            "output: x_l = blocks[l-1](x_(l-1))",
            _residual_wrong("not_chained")),
)


class _Blocks(list):
    """The list of blocks handed to residual_norms, with a short repr."""

    def __repr__(self) -> str:
        return f"[{len(self)} blocks]"


def _encoder_stack(seed: int, n_layers: int, d_model: int, n_heads: int, d_ff: int, dtype: torch.dtype,
                   norm_first: bool) -> _Blocks:
    """n_layers of torch's own TransformerEncoderLayer (eval mode, no dropout, frozen)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers = [nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True,
                                             norm_first=norm_first, dtype=dtype).eval()
                  for _ in range(n_layers)]
    for layer in layers:
        layer.requires_grad_(False)  # the same (fused) code path whether or not grad mode is on
    return _Blocks(layers)


def check_residual_norms(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                         B: int = 2, T: int = 5, d_model: int = 12, n_heads: int = 3, d_ff: int = 20,
                         n_layers: int = 5) -> None:
    """residual_norms(x, blocks) -> (L + 1,): mean per-token L2 norm of x and of each block's output."""
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "blocks")
    sizes = {"B": B, "T": T, "d_model": d_model, "L + 1": n_layers + 1}
    cases = [
        Case((_randn(gen, B, T, d_model, dtype=dtype),
              _encoder_stack(seed, n_layers, d_model, n_heads, d_ff, dtype, True)), sizes, names,
             f"{n_layers} Pre-LN TransformerEncoderLayer blocks"),
        Case((_randn(gen, B, T, d_model, dtype=dtype) * 3,
              _encoder_stack(seed + 1, n_layers, d_model, n_heads, d_ff, dtype, False)), sizes, names,
             f"{n_layers} Post-LN TransformerEncoderLayer blocks"),
    ]
    check_function(fn, name="residual_norms", reference=ref.residual_norms, cases=cases,
                   outputs=("norms",), mistakes=RESIDUAL_MISTAKES, forbidden=FORBIDDEN["ex6"])


# ---------------------------------------------------------------------------------------------
# Exercise 7: count it
# ---------------------------------------------------------------------------------------------

COUNT_QUESTIONS = {
    "n_means": 8 * 512,  # one mean (and one variance) per token: B * T
    "ln_params_gpt2": (2 * 12 + 1) * 2 * 768,  # 2 LayerNorms per block + ln_f, gamma and beta each
    "rms_params_llama": (2 * 32 + 1) * 4096,  # 2 RMSNorms per block + the final norm, gamma only
}

_COUNT_MISTAKES = {
    "n_means": [(768, "that is one mean per feature, BatchNorm's statistics; LayerNorm takes one mean per token"),
                (8, "that is one mean per sequence; LayerNorm takes one per token, B * T of them"),
                (512, "that is one mean per position; every sequence of the batch has its own tokens: B * T"),
                (8 * 512 * 768, "that is one per number; LayerNorm averages each token's d_model features into one mean")],
    "ln_params_gpt2": [(2 * 12 * 2 * 768, "the final LayerNorm (ln_f) after the last block is missing"),
                       ((2 * 12 + 1) * 768, "LayerNorm has two vectors per norm, gamma and beta"),
                       (2 * 12 * 768, "LayerNorm has gamma and beta, and there is a final ln_f too"),
                       ((12 + 1) * 2 * 768, "each GPT-2 block has two LayerNorms, one before attention and one before the MLP")],
    "rms_params_llama": [((2 * 32 + 1) * 2 * 4096, "RMSNorm has no beta: one vector, gamma, per norm"),
                         (2 * 32 * 4096, "the final norm after the last block is missing"),
                         ((32 + 1) * 4096, "each Llama block has two RMSNorms, one before attention and one before the MLP")],
}

_COUNT_HINTS = {
    "n_means": "LayerNorm computes one mean and one variance per token",
    "ln_params_gpt2": "count the norms (two per block and one at the end), then the numbers in each",
    "rms_params_llama": "count the norms (two per block and one at the end), then the numbers in each",
}


def check_norm_counts(**answers: Any) -> None:
    """Exercise 7: statistics per batch, and norm parameters in GPT-2 small and Llama-2 7B."""
    check_numbers(answers, COUNT_QUESTIONS, mistakes=_COUNT_MISTAKES, hints=_COUNT_HINTS,
                  name="check_norm_counts", integers=COUNT_QUESTIONS)


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

# Each mistake is a complete, runnable wrong answer; each probe a variant no catalogue lists, named only
# when a wrong answer clearly is one of them.
PROBES = {"layer_norm": LAYER_NORM_PROBES, "rms_norm": RMS_NORM_PROBES, "pre_ln_block": PRE_LN_PROBES,
          "post_ln_block": POST_LN_PROBES}


MISTAKES = {
    "layer_norm": LAYER_NORM_MISTAKES,
    "rms_norm": RMS_NORM_MISTAKES,
    "pre_ln_block": PRE_LN_MISTAKES,
    "post_ln_block": POST_LN_MISTAKES,
    "residual_norms": RESIDUAL_MISTAKES,
}


protect(ref, sys.modules[__name__])
