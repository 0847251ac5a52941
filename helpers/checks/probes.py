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


# =============================================================================================
# Chapters 05-07 (positions, cached decoding): what a table of angles says about a rotation.
# (Kept apart from the other chapters' additions.)
# =============================================================================================


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles brought into (-pi, pi]."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def angle_symptom(phi: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor, *, what: str, pair: str,
                  base: float, width: str, tol: float = 1e-3) -> str | None:
    """The sentence for angles phi (T, P) that are not positions[t] * theta[k], or None.

    phi[t, k] is the angle the learner's code gave row t, pair k (mod 2 pi); the rows are meant to
    sit at `positions` (T,) and pair k to turn by theta[k] (P,) = base^(-2k / width) per position.
    Told apart: every row at another position (off by some, reversed, negated), some pairs not
    turning at all, and frequencies of another base or exponent. `what` names a row ("token",
    "row"), `pair` a pair ("pair k (channels k, k + d_head/2)")."""
    phi, positions, theta = phi.double(), positions.double(), theta.double()
    T, P = phi.shape

    def fits(angles: torch.Tensor) -> bool:
        return bool((_wrap(angles - phi).abs() <= tol).all())

    if fits(positions[:, None] * theta[None, :]):
        return None
    # 1. every row at a whole-number position of its own, with the right frequencies
    span = int(positions.abs().max()) + T + 8
    candidates = torch.arange(-span, span + 1, dtype=torch.float64)
    found = []
    for t in range(T):
        err = _wrap(candidates[:, None] * theta[None, :] - phi[t][None, :]).abs().amax(dim=-1)
        best = int(err.argmin())
        found.append(int(candidates[best]) if float(err[best]) <= tol else None)
    if all(p is not None for p in found):
        got = [int(p) for p in found]  # type: ignore[arg-type]
        want = [int(p) for p in positions]
        shifts = {g - w for g, w in zip(got, want)}
        if len(shifts) == 1:
            (shift,) = shifts
            later = f"{abs(shift)} position{'s' if abs(shift) > 1 else ''} {'later' if shift > 0 else 'earlier'}"
            return (f"every {what} got the angle of a position {later} than its own (the positions are off by "
                    f"{shift:+d}): {what} t is at position {want[0]} + t here, but your first {what} got the angle of "
                    f"position {got[0]}")
        return (f"the {what}s are rotated as the positions {got}; they are at {want} (offset + t for {what} t)")
    # 2. the right positions, but some pairs keep their angle at 0
    frozen = [k for k in range(P) if bool((_wrap(phi[:, k]).abs() <= tol).all())
              and bool((_wrap(positions * theta[k]).abs() > tol).any())]
    if frozen:
        rest = [k for k in range(P) if k not in frozen]
        if fits(positions[:, None] * theta[None, :] * torch.tensor([0.0 if k in frozen else 1.0 for k in range(P)],
                                                                     dtype=torch.float64)):
            return (f"the {pair} for k in {frozen} are not rotated at all; every pair k = 0 .. {P - 1} turns, by "
                    f"theta_k = {base:g}^(-2k / {width}) per position" + (f" (pairs {rest} are right)" if rest else ""))
    # 3. the right positions, but each pair turns at another rate
    steps = positions[1:] - positions[:-1]
    if T >= 2 and bool((steps == 1).all()):
        rate = _wrap(phi[1:] - phi[:-1]).median(dim=0).values  # (P,) the angle per position of each pair
        if fits(positions[:, None] * rate[None, :]) and P >= 2 and float(rate[1]) > 0 and float(rate[0]) > 0:
            k = torch.arange(1, P, dtype=torch.float64)
            # rate_k = rate_0 * B^(-2k/width): B from each pair
            logs = -torch.log(rate[1:] / rate[0]) * (2 * P) / (2 * k)  # width = 2 P channels
            if bool(((logs - logs.mean()).abs() <= 1e-3 * logs.abs().max()).all()):
                other = math.exp(float(logs.mean()))
                return (f"the frequencies are those of base {other:.4g} (pair k turns by {other:.4g}^(-2k / {width}) per "
                        f"position; pair 1 by {float(rate[1]):.4g} instead of {float(theta[1]):.4g}); theta_k = "
                        f"{base:g}^(-2k / {width}): check the base {base:g} and the exponent 2k / {width}")
            off = ((rate - theta).abs() > tol).nonzero()
            if len(off) == 0:
                return None
            bad = int(off[0])
            return (f"the positions are right but pair {bad} turns by {float(rate[bad]):.4g} per position instead of "
                    f"theta_{bad} = {base:g}^(-2*{bad} / {width}) = {float(theta[bad]):.4g}: the frequencies are wrong")
    return None

