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


def _fits(angles: torch.Tensor, phi: torch.Tensor, tol: float) -> bool:
    """Every angle of phi equals the one of `angles` (same shape) within tol, modulo 2 pi."""
    return bool((_wrap(angles - phi).abs() <= tol).all())


def _rows_at_other_positions(phi: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor, *, what: str,
                             tol: float) -> str | None:
    """The sentence when every row t of phi (T, P) has the right frequencies at a whole-number position
    of its own other than positions[t] (shifted, reversed, negated), or None."""
    T, _ = phi.shape
    span = int(positions.abs().max()) + T + 8
    candidates = torch.arange(-span, span + 1, dtype=torch.float64)  # (C,) the positions tried
    found = []
    for t in range(T):
        err = _wrap(candidates[:, None] * theta[None, :] - phi[t][None, :]).abs().amax(dim=-1)  # (C,)
        best = int(err.argmin())
        found.append(int(candidates[best]) if float(err[best]) <= tol else None)
    if not all(p is not None for p in found):
        return None
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


def _pairs_not_turning(phi: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor, *, pair: str,
                       base: float, width: str, tol: float) -> str | None:
    """The sentence when the positions are right but some pairs keep their angle at 0, or None."""
    _, P = phi.shape
    frozen = [k for k in range(P) if bool((_wrap(phi[:, k]).abs() <= tol).all())
              and bool((_wrap(positions * theta[k]).abs() > tol).any())]
    if not frozen:
        return None
    rest = [k for k in range(P) if k not in frozen]
    turning = torch.tensor([0.0 if k in frozen else 1.0 for k in range(P)], dtype=torch.float64)  # (P,)
    if not _fits(positions[:, None] * theta[None, :] * turning, phi, tol):
        return None
    return (f"the {pair} for k in {frozen} are not rotated at all; every pair k = 0 .. {P - 1} turns, by "
            f"theta_k = {base:g}^(-2k / {width}) per position" + (f" (pairs {rest} are right)" if rest else ""))


def _other_frequencies(phi: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor, *, base: float,
                       width: str, tol: float) -> str | None:
    """The sentence when the rows sit at consecutive positions but each pair turns at another rate than
    theta (another base or exponent, or one pair off), or None."""
    T, P = phi.shape
    steps = positions[1:] - positions[:-1]
    if not (T >= 2 and bool((steps == 1).all())):
        return None
    rate = _wrap(phi[1:] - phi[:-1]).median(dim=0).values  # (P,) the angle per position of each pair
    if not (_fits(positions[:, None] * rate[None, :], phi, tol) and P >= 2 and float(rate[1]) > 0
            and float(rate[0]) > 0):
        return None
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


def angle_symptom(phi: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor, *, what: str, pair: str,
                  base: float, width: str, tol: float = 1e-3) -> str | None:
    """The sentence for angles phi (T, P) that are not positions[t] * theta[k], or None.

    phi[t, k] is the angle the learner's code gave row t, pair k (mod 2 pi); the rows are meant to
    sit at `positions` (T,) and pair k to turn by theta[k] (P,) = base^(-2k / width) per position.
    Told apart: every row at another position (off by some, reversed, negated), some pairs not
    turning at all, and frequencies of another base or exponent. `what` names a row ("token",
    "row"), `pair` a pair ("pair k (channels k, k + d_head/2)")."""
    phi, positions, theta = phi.double(), positions.double(), theta.double()
    T, P = phi.shape  # (T, P): one angle per row and pair
    if _fits(positions[:, None] * theta[None, :], phi, tol):
        return None
    return (_rows_at_other_positions(phi, positions, theta, what=what, tol=tol)  # 1. each row at another position
            or _pairs_not_turning(phi, positions, theta, pair=pair, base=base, width=width, tol=tol)  # 2. pairs at 0
            or _other_frequencies(phi, positions, theta, base=base, width=width, tol=tol))  # 3. other rates


# =============================================================================================
# Chapters 08 (training signals) and 09 (diagnostics): the exercises' computations, each with
# its knobs, so that a chapter's probe table lists the variants by name. The defaults are right.
# =============================================================================================

IGNORE_INDEX = -100


def next_token_loss(*, offset: int = 1, drop_first: bool = False, ignore: str = "skip", log_dim: int | None = -1,
                    reduce: str = "targets", smoothing: float = 0.0, base: float = math.e) -> Callable[..., Any]:
    """lm_loss(logits, ids, ignore_index) with one knob turned.

    offset: logits at t are scored against ids[:, t + offset] (0: no shift); drop_first: with offset 0,
    the first position is left out instead of the last. ignore: "skip" (the ignored targets count
    nowhere), "as_token_0" (scored against token 0 and counted), "mask_from_inputs" (the mask is read
    from the ids the model read, the targets clamped to 0). log_dim: the axis of the log_softmax
    (None: the raw logits). reduce: "targets" (sum / number of scored targets), "per_sequence",
    "batch" (sum / B), "positions" (sum / (B * (T - 1))). smoothing: label smoothing; base: the log's base."""
    def lm_loss(logits, ids, ignore_index=IGNORE_INDEX):
        T = ids.shape[1]
        if drop_first:
            z, y = logits[:, 1:], ids[:, 1:]
        else:
            z, y = logits[:, :T - offset] if offset >= 0 else logits[:, -offset:], \
                ids[:, offset:] if offset >= 0 else ids[:, :T + offset]
        real = y != ignore_index  # (B, T'): the targets that count
        if ignore == "mask_from_inputs":
            scored = counted = ids[:, :y.shape[1]] != ignore_index
        else:
            scored, counted = (torch.ones_like(real) if ignore == "as_token_0" else real), real
        safe = torch.where(real, y, torch.zeros_like(y))
        log_p = z if log_dim is None else torch.log_softmax(z, dim=log_dim)
        nll = -log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T')
        if smoothing:
            nll = (1 - smoothing) * nll - smoothing * log_p.mean(-1)
        nll = nll * scored / math.log(base)
        if reduce == "per_sequence":
            return (nll.sum(1) / counted.sum(1)).mean()
        divisor = {"targets": counted.sum(), "batch": z.shape[0], "positions": counted.numel()}[reduce]
        return nll.sum() / divisor
    return lm_loss


def bert_masking(*, select: str = "u < p", swap_random_keep: bool = False, mirror: bool = False, high: int = 0,
                 swap_draws: bool = False, unselected: int = IGNORE_INDEX) -> Callable[..., Any]:
    """mlm_mask(ids, mask_id, vocab_size, generator) with one knob turned: select "u < p" or "u > 1 - p"
    (the top of u's range); swap_random_keep: random where r >= 0.9, kept where 0.8 <= r < 0.9; mirror: the
    bands counted from the top of r (mask where r > 0.2, random where 0.1 < r <= 0.2); high: randint's upper
    bound minus vocab_size; swap_draws: u is the second draw and r the first; unselected: the label of a
    position that was not selected."""
    def mlm_mask(ids, mask_id, vocab_size, generator):
        first = torch.rand(ids.shape, generator=generator)
        second = torch.rand(ids.shape, generator=generator)
        u, r = (second, first) if swap_draws else (first, second)
        r = 1 - r if mirror else r
        random_ids = torch.randint(0, vocab_size + high, ids.shape, generator=generator)
        selected = u < 0.15 if select == "u < p" else u > 0.85
        to_random = (r >= 0.9) if swap_random_keep else (r >= 0.8) & (r < 0.9)
        inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(selected & to_random, random_ids, inputs)
        return inputs, torch.where(selected, ids, torch.full_like(ids, unselected))
    return mlm_mask


def _moved_tokens(out: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) twice -> (B, T) bool: which outputs moved beyond a tolerance, per sequence."""
    diff = ~torch.isclose(out, base, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
    return diff.reshape(diff.shape[0], diff.shape[1], -1).any(-1)


def perturbation_leaks(*, perturb: str = "token_j", sequences: str = "any", transpose: bool = False
                       ) -> Callable[..., Any]:
    """future_leaks(f, ids, vocab_size) with one knob turned: perturb "token_j", "token_j_minus_1" (the
    token before j) or "from_j" (every token from j on); sequences: an output moved in "any" sequence,
    in "all" of them, or in the "first" only; transpose: (j, i) instead of (i, j)."""
    def future_leaks(f, ids, vocab_size):
        T = ids.shape[1]
        base = f(ids)
        leaks = torch.zeros(T, T, dtype=torch.bool)
        for j in range(T):
            changed = ids.clone()
            where = {"token_j": slice(j, j + 1), "token_j_minus_1": slice(max(j - 1, 0), max(j - 1, 0) + 1),
                     "from_j": slice(j, T)}[perturb]
            changed[:, where] = (ids[:, where] + 1) % vocab_size
            moved = _moved_tokens(f(changed), base)  # (B, T)
            moved = {"any": moved.any(0), "all": moved.all(0), "first": moved[0]}[sequences]
            leaks[:, j] = moved & (torch.arange(T) < j)
        return leaks.T.contiguous() if transpose else leaks
    return future_leaks


def row_entropy(*, log: Callable[[torch.Tensor], torch.Tensor] = torch.log, weight: str = "p",
                reduce: str = "sum", normalise: bool = False, resoftmax: bool = False) -> Callable[..., Any]:
    """attention_entropy(weights) with one knob turned: log (torch.log10, torch.log1p, ...); weight "p" or
    "one" (-sum ln p, the p left out); reduce "sum" or "mean" over the keys; normalise: divided by
    ln T_k; resoftmax: the weights softmaxed again first."""
    def attention_entropy(weights):
        w = torch.softmax(weights, dim=-1) if resoftmax else weights
        logs = torch.where(w > 0, log(w), torch.zeros((), dtype=w.dtype))
        terms = -(w * logs if weight == "p" else logs)
        h = terms.sum(-1) if reduce == "sum" else terms.mean(-1)
        return h / math.log(w.shape[-1]) if normalise else h
    return attention_entropy


def stream_update_ratio(*, update: str = "previous", size: str = "before", norm: str = "l2", power: int = 1,
                        reduce: str = "mean") -> Callable[..., Any]:
    """update_ratios(stream) with one knob turned: update "previous" (x_{l+1} - x_l) or "input"
    (x_{l+1} - x_0); size "before" (||x_l||) or "after" (||x_{l+1}||); norm "l2", "l1", "std" (over
    d_model) or "element" (|.| per entry, the ratio averaged over entries); power: the ratio raised to it;
    reduce: "mean" or "sum" over the tokens."""
    def update_ratios(stream):
        delta = stream[1:] - (stream[:-1] if update == "previous" else stream[:1])
        x = stream[:-1] if size == "before" else stream[1:]
        if norm == "element":
            return (delta.abs() / x.abs()).mean(dim=(1, 2, 3))
        measure = {"l2": lambda t: t.norm(dim=-1), "l1": lambda t: t.abs().sum(-1), "std": lambda t: t.std(-1)}[norm]
        ratio = (measure(delta) / measure(x)) ** power  # (L, B, T)
        return ratio.mean(dim=(1, 2)) if reduce == "mean" else ratio.sum(dim=(1, 2))
    return update_ratios
