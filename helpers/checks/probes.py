"""Reusable probe builders: systematic variants of the course's computations that a check compares a
wrong answer with when no catalogued mistake matches (`core.check_function(..., probes=...)`).

Each builder returns complete, runnable functions with the exercise's signature, wrapped in
`core.Probe` with the sentence that names the variant. Chapters 01 (attention) and 02 (heads) share
the attention variants; chapters 03 and 04 build theirs from the small pieces here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .core import Probe

NEG_INF = float("-inf")

# ---------------------------------------------------------------------------------------------
# Attention: the scale, the mask's fill, the softmax, the order of q and k
# ---------------------------------------------------------------------------------------------

# key -> (what the scores were divided by, 1 / that as a function of q (..., T_q, d), k (..., T_k, d))
_SCALES_QK = {
    "scale_sqrt_T_k": ("sqrt(T_k), the square root of the number of keys", lambda q, k: k.shape[-2] ** -0.5),
    "scale_T_k": ("T_k, the number of keys", lambda q, k: 1.0 / k.shape[-2]),
    "scale_sqrt_T_q": ("sqrt(T_q), the square root of the number of queries", lambda q, k: q.shape[-2] ** -0.5),
    "scale_T_q": ("T_q, the number of queries", lambda q, k: 1.0 / q.shape[-2]),
}
_SCALES_T = {  # self-attention, where T_q = T_k = T
    "scale_sqrt_T": ("sqrt(T), the square root of the sequence length", lambda q, k: k.shape[-2] ** -0.5),
    "scale_T": ("T, the sequence length", lambda q, k: 1.0 / k.shape[-2]),
}


def scale_message(divisor: str, width: str) -> str:
    return (f"the scores are divided by {divisor}; divide them by sqrt({width}), the square root of the "
            f"width of a query and key vector")


def scale_variants(width: str, *, self_attention: bool = False,
                   extra: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]] | None = None
                   ) -> dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor], float]]]:
    """key -> (message, scale(q, k)) for the scales people use by mistake instead of 1/sqrt(width)."""
    table = dict(_SCALES_T if self_attention else _SCALES_QK)
    table.update(extra or {})
    return {key: (scale_message(divisor, width), f) for key, (divisor, f) in table.items()}


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, *, fill: str = "-inf", shift: bool = True,
                   dim: int = -1, after: bool = False) -> torch.Tensor:
    """The course's masked softmax (blocked -> 0, fully blocked rows -> 0) or a variant of it:
    fill "zero" (blocked scores set to 0), shift=False (no max subtraction: exp overflows),
    after=True (the mask multiplies the weights after an unmasked softmax)."""
    if mask is None or after:
        s = scores
    else:
        s = scores.masked_fill(~mask, 0.0 if fill == "zero" else NEG_INF)
    if shift:
        weights = torch.softmax(s, dim=dim)
    else:
        e = torch.exp(s)
        weights = e / e.sum(dim=dim, keepdim=True)
    if mask is not None:
        allowed = mask.expand(weights.shape)
        if after:
            return weights * allowed
        if fill != "zero":
            weights = torch.where(allowed.any(dim=dim, keepdim=True), weights, torch.zeros((), dtype=weights.dtype))
    return weights


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              scale: Callable[[torch.Tensor, torch.Tensor], float] | None = None, swap_qk: bool = False,
              out_scale: bool = False, **softmax: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scale * q kᵀ) v with one mistake built in (or none): another scale, K Qᵀ for Q Kᵀ,
    the scale applied to the output instead of the scores, or a softmax variant (see masked_softmax)."""
    factor = (scale or (lambda q_, k_: q_.shape[-1] ** -0.5))(q, k)
    scores = (k @ q.transpose(-2, -1)) if swap_qk else (q @ k.transpose(-2, -1))
    if not out_scale:
        scores = scores * factor
    weights = masked_softmax(scores, mask, **softmax)
    out = weights @ v
    return (out * factor if out_scale else out), weights


def softmax_temperature(weights: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None) -> float | None:
    """c when `weights` = softmax(c * scores) on every row (blocked keys 0), else None: the learner's
    weights reveal that the scores were scaled by c times what they should be."""
    w = weights.detach().cpu().double()
    s = scores.detach().cpu().double().expand(w.shape)
    allowed = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.expand(w.shape).cpu()
    rows = allowed.sum(-1) >= 2
    if not bool(rows.any()) or not bool((w[allowed] > 0).all()):
        return None
    log_w = torch.where(allowed, torch.log(w.clamp_min(1e-300)), torch.zeros((), dtype=w.dtype))
    s = torch.where(allowed, s, torch.zeros((), dtype=s.dtype))
    n = allowed.sum(-1, keepdim=True).clamp_min(1)
    centre = lambda t: torch.where(allowed, t - t.sum(-1, keepdim=True) / n, torch.zeros((), dtype=t.dtype))  # noqa: E731
    a, b = centre(s)[rows], centre(log_w)[rows]
    if float((a * a).sum()) == 0.0:
        return None
    c = float((a * b).sum() / (a * a).sum())
    residual = float(((b - c * a) ** 2).sum()) ** 0.5 / max(float((b * b).sum()) ** 0.5, 1e-300)
    return c if residual < 1e-4 and math.isfinite(c) else None


def temperature_message(c: float, width: str) -> str:
    """The sentence for weights that are softmax(c * the right scores)."""
    return (f"the weights are a softmax of the right scores times {c:.4g}: the scale is off by that factor "
            f"(the scores are Q Kᵀ / sqrt({width}))")


def probes(table: dict[str, tuple[str, Callable[..., Any]]]) -> tuple[Probe, ...]:
    """Probes from key -> (message, impl)."""
    return tuple(Probe(key, message, impl) for key, (message, impl) in table.items())
