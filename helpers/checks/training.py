"""Checks for chapter 08 (training signals) and their mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

Answers write the losses themselves from log_softmax / logsumexp and indexing: they may not call
`helpers.training` (the reference), `F.cross_entropy`, `F.nll_loss` or torch's loss modules.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import loss_curves as _curves
from .. import training as ref
from ..blocks import ModelConfig, TinyDecoder
from . import probes as _probes
from .core import (
    Case,
    CheckFailed,
    Mistake,
    call_learner,
    check_function,
    check_numbers,
    compare,
    protect,
    verify_environment,
)
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "PROBES",
    "check_lm_loss",
    "check_loss_curves",
    "check_mlm_mask",
    "check_padding_labels",
    "check_teacher_forcing_inputs",
    "check_tie_weights",
    "check_training_numbers",
    "NUMBERS",
]

# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

FORBIDDEN = {
    "ex1": (ref, F.cross_entropy, F.nll_loss, nn.CrossEntropyLoss.forward, nn.NLLLoss.forward),
    "ex2": (ref,),
    "ex3": (ref,),
    "ex4": (ref,),
    "ex5": (),
    "ex6": (ref,),
    "ex7": (),
}


# ---------------------------------------------------------------------------------------------
# Shared: the ignore index, token ids, and positions named in messages
# ---------------------------------------------------------------------------------------------

IGNORE = -100


def _ids(gen: torch.Generator, B: int, T: int, V: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=gen)


def _positions(mask: torch.Tensor, limit: int = 3) -> str:
    found = [tuple(int(i) for i in index) for index in mask.nonzero()[:limit]]
    more = int(mask.sum()) - len(found)
    return ", ".join(map(str, found)) + (f" and {more} more" if more > 0 else "")


# ---------------------------------------------------------------------------------------------
# Exercise 1: the next-token loss
# ---------------------------------------------------------------------------------------------

# Mistakes: each is a complete, runnable wrong answer

def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per position, 0 where the target is ignored: (B, T)."""
    keep = targets != IGNORE
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    picked = logits.log_softmax(-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return -picked * keep


def _mean(nll: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nll.sum() / (targets != IGNORE).sum()


def _lm_no_shift(logits, ids, ignore_index=IGNORE):
    return _mean(_nll(logits, ids), ids)  # WRONG: position t scored against its own token


def _lm_wrong_way(logits, ids, ignore_index=IGNORE):
    return _mean(_nll(logits[:, 1:], ids[:, :-1]), ids[:, :-1])  # WRONG: predicts the previous token


def _lm_padded_average(logits, ids, ignore_index=IGNORE):
    nll = _nll(logits[:, :-1], ids[:, 1:])  # (B, T-1), 0 at ignored targets
    return nll.mean()  # WRONG: divides by every position, padding included


def _lm_softmax_twice(logits, ids, ignore_index=IGNORE):
    probs = logits.softmax(-1)  # WRONG: the loss then applies its own softmax to probabilities
    return _mean(_nll(probs[:, :-1], ids[:, 1:]), ids[:, 1:])


def _lm_sum(logits, ids, ignore_index=IGNORE):
    return _nll(logits[:, :-1], ids[:, 1:]).sum()  # WRONG: a sum, it grows with the batch


def _lm_log_probs_positive(logits, ids, ignore_index=IGNORE):
    return -_mean(_nll(logits[:, :-1], ids[:, 1:]), ids[:, 1:])  # WRONG: the mean log-probability, not its negative


LM_LOSS_MISTAKES = (
    Mistake("no_shift",
            "there is no shift: logits at position t are scored against ids[:, t], the token the model just "
            "read; score them against the next token, logits[:, :-1] against ids[:, 1:]",
            _lm_no_shift),
    Mistake("shift_wrong_way",
            "the shift goes the wrong way: logits[:, 1:] against ids[:, :-1] asks each position for the "
            "previous token; position t predicts ids[:, t + 1], so use logits[:, :-1] and ids[:, 1:]",
            _lm_wrong_way),
    Mistake("padded_average",
            "the mean runs over every position, padding included: ignored targets (ignore_index) must count "
            "neither in the sum nor in the number you divide by",
            _lm_padded_average),
    Mistake("softmax_twice",
            "the loss is computed on probabilities: softmax was applied to the logits and then log_softmax "
            "(softmax twice); the loss takes the raw logits",
            _lm_softmax_twice),
    Mistake("summed",
            "the losses are summed, not averaged: the result grows with B and T; divide by the number of "
            "scored (not ignored) targets",
            _lm_sum),
    Mistake("sign",
            "the sign is flipped: this is the mean log-probability of the targets (negative); the loss is "
            "its negative, -log p",
            _lm_log_probs_positive),
)


# Probes: variants no catalogue lists, named only when a wrong answer clearly is one of them

_loss = _probes.next_token_loss
_ONE_TERM = "each scored target adds -log softmax(z[b, t])[ids[b, t + 1]], over the last axis (V)"
LM_LOSS_PROBES = _probes.probes({
    "shift_by_two": ("logits at position t are scored against ids[:, t + 2], two tokens ahead; the next token is "
                     "ids[:, t + 1]: pair logits[:, :-1] with ids[:, 1:]", _loss(offset=2)),
    "no_shift_first_dropped": ("there is no shift: logits[:, 1:] are scored against ids[:, 1:], each position "
                               "against the token it just read (ids[:, t]); pair logits[:, :-1] with ids[:, 1:]",
                               _loss(offset=0, drop_first=True)),
    "ignored_scored_as_token_0": ("targets equal to ignore_index (-100) are scored as token 0 and counted; leave "
                                  "them out of both the sum and the count (keep = targets != ignore_index)",
                                  _loss(ignore="as_token_0", reduce="positions")),
    "ignored_scored_as_token_0_not_counted": (
        "targets equal to ignore_index (-100) are scored as token 0 (they are left out of the count but not of the "
        "sum); multiply each position's loss by keep = targets != ignore_index before summing",
        _loss(ignore="as_token_0")),
    "mask_from_inputs": ("the ignore mask is read from the ids the model read (ids[:, :-1]), not from the targets "
                         "ids[:, 1:]: the last real token's prediction of padding is scored; build keep from the "
                         "shifted targets", _loss(ignore="mask_from_inputs")),
    "mean_per_sequence": ("the loss is averaged per sequence, then over sequences, so a sequence with fewer real "
                          "targets weighs more; divide the sum over all scored targets by their number",
                          _loss(reduce="per_sequence")),
    "divided_by_B": ("the sum is divided by B, the number of sequences; divide by the number of scored targets "
                     "(those not equal to ignore_index)", _loss(reduce="batch")),
    "log_softmax_over_T": (f"the log_softmax runs over the positions (dim=1); {_ONE_TERM}", _loss(log_dim=1)),
    "log_softmax_over_B": (f"the log_softmax runs over the batch (dim=0); {_ONE_TERM}", _loss(log_dim=0)),
    "raw_logits": (f"the loss uses the raw logit of the target, -z[target], without logsumexp (no log_softmax); "
                   f"{_ONE_TERM}", _loss(log_dim=None)),
    "label_smoothing": ("the loss uses label smoothing (0.1 of the target's weight spread over the vocabulary); "
                        "this exercise's loss puts all of it on the next token", _loss(smoothing=0.1)),
    "bits": ("the loss is in bits (log base 2); the training loss uses the natural log (nats): no division by "
             "ln 2", _loss(base=2.0)),
})


# Diagnosis: the first wrong intermediate, when neither a mistake nor a probe matches

def _loss_gradient(call: Callable[[torch.Tensor], Any], logits: torch.Tensor) -> torch.Tensor | None:
    """d loss / d logits (B, T, V) in float64, or None when the loss is not a differentiable scalar."""
    x = logits.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            out = call(x)
            if not (isinstance(out, torch.Tensor) and out.requires_grad and out.numel() == 1):
                return None
            (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    except CheckFailed:
        raise
    except Exception:
        return None
    return None if grad is None else grad.detach().cpu().double()


def _same_gradient(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6 * max(float(b.abs().max()), 1e-30)))


def _lm_loss_symptom(fn: Any, got_loss: Any, case: Case) -> str | None:
    """A probe the learner's loss is (its value and its gradient both equal the probe's: one number alone is
    too little to name a probe by nearness), else the loss read through its gradient with respect to the
    logits: each position's row says whether that prediction counts, against which token, normalized over
    which axis, and with what weight."""
    logits, ids = case.args[:2]
    with contextlib.redirect_stdout(io.StringIO()):  # the learner's prints were shown on the first call
        got = _loss_gradient(lambda x: call_learner(fn, "lm_loss", Case((x, ids), case.sizes, case.arg_names),
                                                    FORBIDDEN["ex1"]), logits)
    expected = _loss_gradient(lambda x: ref.lm_loss(x, ids), logits)
    if got is None or expected is None or not bool(torch.isfinite(got).all()):
        return None
    return _lm_loss_probe(got, got_loss, case) or _lm_gradient_symptom(got, expected, ids.cpu())


def _lm_loss_probe(got: torch.Tensor, got_loss: Any, case: Case) -> str | None:
    """The message of the probe whose loss and gradient (`got`, d loss / d logits) both equal the learner's."""
    logits, ids = case.args[:2]
    for probe in LM_LOSS_PROBES:
        value = probe.impl(*case.args)
        if compare(got_loss, value, ("loss",), case.sizes, "lm_loss") is None:
            wrong = _loss_gradient(lambda x, impl=probe.impl: impl(x, ids), logits)
            if wrong is not None and _same_gradient(got, wrong):
                return probe.message
    return None


def _lm_gradient_symptom(got: torch.Tensor, expected: torch.Tensor, ids: torch.Tensor) -> str:
    """The loss read through its gradient (B, T, V): the normalization of each row, then which predictions
    count and against which token, then the weight each scored target gets."""
    B, T, V = got.shape
    scored = got.abs().amax(-1) > 0  # (B, T): which predictions the loss depends on (masked ones get exactly 0)
    should = torch.zeros(B, T, dtype=torch.bool)
    should[:, :-1] = ids[:, 1:] != IGNORE
    row_sums = got.sum(-1).abs()  # (B, T): 0 for -log_softmax over V
    if bool((row_sums[scored] > 1e-3 * got.abs().amax(-1)[scored]).any()):
        return ("a position's loss is not -log softmax over the vocabulary: its gradient over that position's V "
                "logits does not sum to zero, as -log_softmax(z, dim=-1)[target]'s does; normalize each position "
                "over the last axis, V (logsumexp(z, dim=-1) - z[target])")
    return (_lm_target_symptom(got, ids, scored & should) or _lm_scored_symptom(scored, should)
            or _lm_weight_symptom(got, expected, should))


def _lm_target_symptom(got: torch.Tensor, ids: torch.Tensor, both: torch.Tensor) -> str | None:
    """The token each scored prediction is pulled towards (its gradient's argmin), against the next one."""
    B, T = got.shape[:2]
    pulled = got.argmin(-1)  # (B, T): the token each prediction is pushed towards
    nxt = torch.full((B, T), IGNORE, dtype=ids.dtype)
    nxt[:, :-1] = ids[:, 1:]
    wrong_target = both & (pulled != nxt)
    if bool(wrong_target.any()):
        # Another offset is named only when it explains every prediction it can; a few rows pulled elsewhere
        # (a term that is not -log p, label smoothing) are left to the checks below.
        for k, what in ((0, "ids[:, t], the token it just read"), (2, "ids[:, t + 2], two tokens ahead"),
                        (-1, "ids[:, t - 1], the previous token")):
            other = torch.full((B, T), IGNORE, dtype=ids.dtype)
            lo, hi = max(0, -k), min(T, T - k)
            other[:, lo:hi] = ids[:, lo + k:hi + k]
            rows = both & (other != IGNORE)
            if bool(rows.any()) and bool((pulled[rows] == other[rows]).all()):
                return (f"the prediction at position t is scored against {what}; it is scored against the next "
                        f"token, ids[:, t + 1]: pair logits[:, :-1] with ids[:, 1:]")
        if 2 * int(wrong_target.sum()) > int(both.sum()):
            return (f"the predictions at (b, t) = {_positions(wrong_target)} are scored against another token than "
                    f"ids[b, t + 1], the next one")
    return None


def _lm_scored_symptom(scored: torch.Tensor, should: torch.Tensor) -> str | None:
    """Predictions the loss depends on (`scored`, (B, T)) that it should not, or should and does not."""
    if bool(scored[:, -1].any()):
        return ("your loss depends on the logits at the last position (t = T - 1), which has no next token; the "
                "predictions are logits[:, :-1], the targets ids[:, 1:]")
    extra, missing = scored & ~should, should & ~scored
    if bool(extra.any()):
        return (f"the predictions at (b, t) = {_positions(extra)}, whose next token ids[b, t + 1] is ignore_index "
                f"(-100), still count; leave ignored targets out of both the sum and the count")
    if bool(missing.any()):
        return (f"the predictions at (b, t) = {_positions(missing)} do not count, though their next token "
                f"ids[b, t + 1] is a real target; only targets equal to ignore_index are left out")
    return None


def _lm_weight_symptom(got: torch.Tensor, expected: torch.Tensor, should: torch.Tensor) -> str:
    """Each scored row's gradient as a multiple of the reference's: its shape, then the weights' pattern."""
    ratio = (got * expected).sum(-1) / (expected * expected).sum(-1).clamp_min(1e-300)  # (B, T)
    resid = (got - ratio[..., None] * expected).norm(dim=-1) / got.norm(dim=-1).clamp_min(1e-300)
    if bool((resid[should] > 1e-3).any()):
        return ("each position's loss is not -log softmax(z[b, t])[ids[b, t + 1]]: its gradient over the "
                "vocabulary has another shape (is the target a single token, with all its weight?)")
    c = ratio[should]
    N = int(should.sum())
    if bool(((c - c.mean()).abs() <= 1e-3 * c.abs().mean()).all()):
        factor = float(c.mean())
        if abs(factor - 1) <= 1e-3:
            return ("the gradient is right but the value is off by a constant: part of your loss does not depend on "
                    "the logits")
        divisor = N / factor
        said = f" (you divide by about {divisor:.4g})" if abs(divisor - round(divisor)) < 1e-3 else ""
        return (f"every scored target counts, with the right term, but the result is {factor:.4g} times the mean: "
                f"divide the sum by N = {N}, the number of targets not equal to ignore_index{said}")
    per_sequence = torch.where(should, ratio, torch.nan)
    spread = torch.nanmean(per_sequence, dim=1, keepdim=True)
    if bool(((per_sequence - spread).abs()[should] <= 1e-3 * spread.abs().expand_as(should)[should]).all()):
        return ("the targets of different sequences weigh differently (a mean per sequence, then over sequences?); "
                "every scored target counts once: divide the sum over all of them by their number")
    return ("each prediction is pulled towards the right token, but with weights that differ from position to "
            "position: every scored target adds -log p(target) (the log of the probability, not the probability) "
            "and counts once, with weight 1 / N")


def check_lm_loss(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                  B: int = 3, T: int = 7, V: int = 11) -> None:
    """lm_loss(logits, ids, ignore_index=-100): logits (B, T, V), ids (B, T) -> a scalar tensor."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T, "V": V}
    names = ("logits", "ids")
    padded = _ids(gen, B, T, V)
    for b in range(1, B):  # right padding: sequence b has T - b real tokens
        padded[b, max(T - 2 * b, 2):] = IGNORE
    cases = [
        Case((_randn(gen, B, T, V, dtype=dtype, scale=2.0), _ids(gen, B, T, V)), sizes, names),
        Case((_randn(gen, B, T, V, dtype=dtype, scale=2.0), padded), sizes, names,
             "right-padded: ids holds -100 after each sequence's end"),
    ]
    check_function(fn, name="lm_loss", reference=ref.lm_loss, cases=cases, outputs=("loss",),
                   mistakes=LM_LOSS_MISTAKES, forbidden=FORBIDDEN["ex1"],
                   diagnose=lambda got, expected, case: _lm_loss_symptom(fn, got, case))


# ---------------------------------------------------------------------------------------------
# Exercise 2: masked-LM masking
# ---------------------------------------------------------------------------------------------


def _mlm(ids, mask_id, vocab_size, generator, *, style: str = "right"):
    """mlm_mask with a mistake built in; the same draws in the same order as the reference."""
    u = torch.rand(ids.shape, generator=generator)
    r = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    selected = u < 0.15
    if style == "all_mask":
        inputs = torch.where(selected, torch.full_like(ids, mask_id), ids)  # WRONG: no 10 % random, 10 % kept
    else:
        inputs = torch.where(selected & (r < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    if style == "labels_everywhere":
        labels = ids.clone()  # WRONG: every position is scored
    elif style == "labels_inverted":
        labels = torch.where(selected, torch.full_like(ids, IGNORE), ids)  # WRONG: scores the untouched ones
    elif style == "labels_of_inputs":
        labels = torch.where(selected, inputs, torch.full_like(ids, IGNORE))  # WRONG: the corrupted token
    else:
        labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    return inputs, labels


MLM_MISTAKES = (
    Mistake("all_mask_token",
            "every selected position became the mask token; BERT replaces 80 % of them with the mask token, "
            "10 % with a random token and leaves 10 % unchanged, so the model cannot rely on seeing [MASK]",
            lambda ids, m, V, g: _mlm(ids, m, V, g, style="all_mask")),
    Mistake("labels_everywhere",
            "labels are kept on the unselected positions too: the loss must be computed only where a token "
            "was selected, so every other label is ignore_index (-100)",
            lambda ids, m, V, g: _mlm(ids, m, V, g, style="labels_everywhere")),
    Mistake("labels_inverted",
            "the labels are inverted: the selected positions got -100 and the untouched ones their token; a "
            "label holds the original token exactly where a position was selected",
            lambda ids, m, V, g: _mlm(ids, m, V, g, style="labels_inverted")),
    Mistake("labels_of_inputs",
            "the labels hold the corrupted inputs (the mask or random token); the label is the original "
            "token, the one the model has to recover",
            lambda ids, m, V, g: _mlm(ids, m, V, g, style="labels_of_inputs")),
)


_mlm_probe = _probes.bert_masking
_DRAWS = ("u = torch.rand(ids.shape, generator=generator), then r = torch.rand(...), then random_ids = "
          "torch.randint(0, vocab_size, ids.shape, generator=generator), in that order")
MLM_PROBES = _probes.probes({
    "selected_at_the_top": ("the selected positions are those with u > 0.85 (the largest u); select where "
                            "u < 0.15", _mlm_probe(select="u > 1 - p")),
    "random_band_top": ("random tokens go where r >= 0.9 and the kept tokens where 0.8 <= r < 0.9; it is the "
                        "other way round: random where 0.8 <= r < 0.9, unchanged where r >= 0.9",
                        _mlm_probe(swap_random_keep=True)),
    "bands_from_the_top": ("the bands of r are counted from the top (the mask token where r > 0.2, a random token "
                           "where 0.1 < r <= 0.2); count from 0: mask where r < 0.8, random where 0.8 <= r < 0.9",
                           _mlm_probe(mirror=True)),
    "draws_swapped": (f"u and r are swapped: the first draw selects, the second chooses what a selected position "
                      f"becomes; draw {_DRAWS}", _mlm_probe(swap_draws=True)),
    "randint_short": ("random tokens are drawn from randint(0, vocab_size - 1), so the last id is never drawn; "
                      "draw from all vocab_size ids: torch.randint(0, vocab_size, ...)", _mlm_probe(high=-1)),
})


class _Reseeded:
    """A function of (ids, mask_id, vocab_size, generator) called with a fresh generator seeded like the
    given one (its initial seed), so the reference, the learner and each catalogued mistake draw the
    same numbers and none of them uses up the learner's generator."""

    def __init__(self, impl: Callable) -> None:
        self.impl = impl

    def __call__(self, ids, mask_id, vocab_size, generator):
        return self.impl(ids, mask_id, vocab_size, torch.Generator().manual_seed(generator.initial_seed()))


_SEEDED_MLM_MISTAKES = tuple(Mistake(m.key, m.message, _Reseeded(m.impl)) for m in MLM_MISTAKES)
_SEEDED_MLM_PROBES = _probes.probes({p.key: (p.message, _Reseeded(p.impl)) for p in MLM_PROBES})


def _unselected_label(got: Any, ids: torch.Tensor, expected_labels: torch.Tensor) -> str | None:
    """The sentence for labels whose unselected positions all hold one value other than -100."""
    _, labels = got
    unselected = expected_labels == IGNORE
    values = labels[unselected].unique()
    if bool(unselected.any()) and values.numel() == 1 and int(values) != IGNORE \
            and torch.equal(labels[~unselected], expected_labels[~unselected]):
        return (f"positions that were not selected are labelled {int(values)}; label them -100 (ignore_index), "
                f"so that the loss skips them")
    return None


_VALUES = "the rates are right but the values differ for this seed: "


def _mlm_symptom(got: Any, case: Case) -> str:
    """Which part of (inputs, labels) first differs: the selection, the mask-token positions, the random
    tokens, or the positions that keep their token (the rates were checked before, on a large batch)."""
    ids = case.args[0]
    inputs, labels = got
    want_inputs, want_labels = _Reseeded(ref.mlm_mask)(*case.args)
    unselected = _unselected_label(got, ids, want_labels)
    if unselected:
        return unselected
    if not torch.equal(labels != IGNORE, want_labels != IGNORE):
        return (_VALUES + "the selected positions (those with a label) differ from the seed's: select where "
                "u < 0.15, u the first draw, torch.rand(ids.shape, generator=generator)")
    if not torch.equal(labels, want_labels):
        return _VALUES + "the selected positions are right, but their labels are not the original tokens ids"
    selected = want_labels != IGNORE
    mask_id = case.args[1]
    masked = selected & (want_inputs == mask_id)
    if not bool((inputs[masked] == mask_id).all()):
        return (_VALUES + "the selection and labels are right, but the mask token goes to other selected "
                "positions: mask_id where r < 0.8, r the second draw, torch.rand(ids.shape, generator=generator)")
    random_band = selected & ~masked & (want_inputs != ids)  # surely a random token (it differs from its id)
    if bool(random_band.any()) and bool((inputs[random_band] == ids[random_band]).all()):
        return (_VALUES + "the selection, labels and mask tokens are right, but some random tokens are missing "
                "(the position kept its token): random where 0.8 <= r < 0.9, unchanged where r >= 0.9")
    return (_VALUES + "the selection, labels and mask tokens are right, but the random tokens differ: "
            "random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator), drawn third, for every "
            "position")


def _mlm_statistics(got: Any, ids: torch.Tensor, mask_id: int) -> str | None:
    inputs, labels = got
    selected = labels != IGNORE
    rate = selected.float().mean().item()
    if abs(rate - 0.15) > 0.03:
        return f"{100 * rate:.1f} % of the positions have a label; about 15 % should be selected"
    k = max(int(selected.sum()), 1)
    masked = ((inputs == mask_id) & selected).sum().item() / k
    if abs(masked - 0.8) > 0.06:
        return f"{100 * masked:.1f} % of the selected positions hold the mask token; expected about 80 %"
    if ((inputs != ids) & ~selected).any():
        return "a position without a label was changed; only selected positions may be corrupted"
    return None


def check_mlm_mask(fn: Any, *, seed: int = 0, B: int = 4, T: int = 50, V: int = 30) -> None:
    """mlm_mask(ids, mask_id, vocab_size, generator) -> (inputs, labels), both (B, T) int64.

    Exact values for a seed (draw order: u = rand, r = rand, random = randint, each the shape of ids),
    after the statistics on a large batch.
    """
    gen = torch.Generator().manual_seed(seed)
    mask_id = V - 1
    sizes = {"B": B, "T": T}
    ids = torch.randint(0, V - 1, (B, T), generator=gen)
    big = torch.randint(0, V - 1, (64, 500), generator=gen)
    verify_environment()
    stats_case = Case((big, mask_id, V, torch.Generator().manual_seed(seed + 1)), {"B": 64, "T": 500},
                      ("ids", "mask_id", "vocab_size", "generator"), "64 x 500 tokens")
    got = call_learner(fn, "mlm_mask", stats_case, FORBIDDEN["ex2"])
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
        raise CheckFailed(f"mlm_mask should return a tuple (inputs, labels) of tensors; it returned a "
                          f"{type(got).__name__}")
    if got[0].shape != big.shape or got[1].shape != big.shape:
        raise CheckFailed(f"mlm_mask: inputs and labels must have the shape of ids (B, T) = {tuple(big.shape)}; got "
                          f"{tuple(got[0].shape)} and {tuple(got[1].shape)}")
    problem = _mlm_statistics(got, big, mask_id)
    wrong_answers = [*MLM_MISTAKES, *MLM_PROBES]  # the catalogue first: a probe never hides a catalogued mistake
    for mistake in wrong_answers:
        wrong = mistake.impl(big, mask_id, V, torch.Generator().manual_seed(seed + 1))
        if torch.equal(got[0], wrong[0]) and torch.equal(got[1], wrong[1]):
            raise CheckFailed(f"mlm_mask: {mistake.message}")
    if problem:
        expected_labels = ref.mlm_mask(big, mask_id, V, torch.Generator().manual_seed(seed + 1))[1]
        problem = _unselected_label(got, big, expected_labels) or problem
        raise CheckFailed(f"mlm_mask ({stats_case.note}): {problem}")

    def diagnose(got_: Any, expected: Any, case: Case) -> str | None:
        return _mlm_symptom(got_, case)

    cases = [Case((ids, mask_id, V, torch.Generator().manual_seed(s)), sizes,
                  ("ids", "mask_id", "vocab_size", "generator"), f"generator seeded with {s}")
             for s in (seed + 2, seed + 3)]
    check_function(fn, name="mlm_mask", reference=_Reseeded(ref.mlm_mask), cases=cases,
                   outputs=("inputs", "labels"), mistakes=_SEEDED_MLM_MISTAKES, forbidden=FORBIDDEN["ex2"],
                   diagnose=diagnose, probes=_SEEDED_MLM_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 3: teacher forcing
# ---------------------------------------------------------------------------------------------


def _tf(targets, bos_id, style):
    bos = torch.full_like(targets[:, :1], bos_id)
    if style == "no_bos":
        return targets.clone()  # WRONG: each position reads the token it must predict
    if style == "wrong_way":
        return torch.cat([targets[:, 1:], bos], dim=1)  # WRONG: shifted left, BOS at the end
    if style == "bos_over_first":
        return torch.cat([bos, targets[:, 1:]], dim=1)  # WRONG: BOS overwrites y_0, no shift
    raise ValueError(style)


TEACHER_FORCING_MISTAKES = (
    Mistake("no_shift",
            "the inputs are the targets themselves: position t would read the token it has to predict; "
            "prepend BOS and drop the last target, cat([BOS, targets[:, :-1]])",
            lambda targets, bos_id: _tf(targets, bos_id, "no_bos")),
    Mistake("shift_wrong_way",
            "the targets are shifted left with BOS at the end; the decoder reads BOS first, then y_0 .. y_{T-2}",
            lambda targets, bos_id: _tf(targets, bos_id, "wrong_way")),
    Mistake("bos_overwrites",
            "BOS replaces the first target instead of shifting the others right: position t still reads "
            "y_t for t >= 1; use cat([BOS, targets[:, :-1]])",
            lambda targets, bos_id: _tf(targets, bos_id, "bos_over_first")),
)


TEACHER_FORCING_PROBES = _probes.probes({
    "along_batch": ("the targets are shifted along the batch axis (dim=0): sequence b reads sequence b - 1; "
                    "shift along the positions, dim=1",
                    lambda y, bos: torch.cat([torch.full_like(y[:1], bos), y[:-1]], dim=0)),
    "bos_appended": ("BOS is appended after the targets' first T - 1 tokens; it comes first: "
                     "cat([BOS, targets[:, :-1]], dim=1)",
                     lambda y, bos: torch.cat([y[:, :-1], torch.full_like(y[:, :1], bos)], dim=1)),
})


def check_teacher_forcing_inputs(fn: Any, *, seed: int = 0, B: int = 3, T: int = 6, V: int = 20) -> None:
    """teacher_forcing_inputs(targets, bos_id): targets (B, T) -> inputs (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T}
    cases = [Case((_ids(gen, B, T, V - 1), V - 1), sizes, ("targets", "bos_id")),
             Case((_ids(gen, B + 1, 1, V - 1), V - 1), {"B": B + 1, "T": 1}, ("targets", "bos_id"),
                  "T = 1: the only input is BOS")]
    check_function(fn, name="teacher_forcing_inputs", reference=ref.teacher_forcing_inputs, cases=cases,
                   outputs=("inputs",), mistakes=TEACHER_FORCING_MISTAKES, forbidden=FORBIDDEN["ex3"],
                   probes=TEACHER_FORCING_PROBES, diagnose=_teacher_forcing_symptom)


def _teacher_forcing_symptom(got: Any, expected: Any, case: Case) -> str | None:
    """Column 0 (BOS) and columns 1.. (the targets shifted right) are two intermediates: name the wrong one."""
    if got.dim() != 2:
        return None
    first_right = torch.equal(got[:, 0], expected[:, 0])
    rest_right = torch.equal(got[:, 1:], expected[:, 1:])
    if rest_right and not first_right:
        shown = got[:, 0].unique()[:3].tolist()
        return (f"columns 1 .. T-1 are right (the targets shifted right), but column 0 holds {shown} instead of "
                f"bos_id = {case.args[1]}: every sequence's first input is BOS, torch.full_like(targets[:, :1], bos_id)")
    if first_right and not rest_right:
        return ("column 0 is BOS, but columns 1 .. T-1 are not targets[:, :-1]: input t reads the previous target, "
                "y_{t-1}")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 4: weight tying
# ---------------------------------------------------------------------------------------------


def _tie_copy(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())  # WRONG: a copy


def _tie_copy_values(model):
    with torch.no_grad():
        model.lm_head.weight.copy_(model.tok_emb.weight)  # WRONG: equal values, separate storage


def _tie_new_parameter(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.data)  # WRONG: same storage, a second Parameter


def _tie_backwards(model):
    model.tok_emb.weight = model.lm_head.weight  # WRONG: tied the other way round, the embedding is thrown away


TIE_MISTAKES = (
    Mistake("copy",
            "the head got a copy of the embedding (clone): equal values today, separate storage, so the two "
            "drift apart at the first optimizer step and nothing is saved; assign the Parameter itself, "
            "model.lm_head.weight = model.tok_emb.weight",
            _tie_copy),
    Mistake("copy_values",
            "the embedding's values were copied into the head's own tensor (copy_): separate storage, so the "
            "two drift apart at the first optimizer step; assign the Parameter itself",
            _tie_copy_values),
    Mistake("second_parameter",
            "the head is a new nn.Parameter over the embedding's storage: the optimizer sees two parameters "
            "(V x d_model counted twice, two gradients, two AdamW states); assign the same Parameter object",
            _tie_new_parameter),
    Mistake("tied_backwards",
            "the weights are tied the other way round (model.tok_emb.weight = model.lm_head.weight): the shared "
            "matrix is the head's, and the embedding's own weight (in a trained model, the trained embedding) is "
            "thrown away; the head takes the embedding's Parameter: model.lm_head.weight = model.tok_emb.weight",
            _tie_backwards),
)


def _untied_model(seed: int, V: int, d_model: int) -> TinyDecoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyDecoder(ModelConfig(vocab_size=V, d_model=d_model, n_heads=2, n_layers=1, max_seq_len=16,
                                       tie_weights=False))


def check_tie_weights(fn: Any, *, seed: int = 0, V: int = 37, d_model: int = 16) -> None:
    """tie_weights(model): make model.lm_head use model.tok_emb's weight, in place."""
    model = _untied_model(seed, V, d_model)
    before, original_head, original_emb = ref.param_count(model), model.lm_head.weight, model.tok_emb.weight
    modules = (model.tok_emb, model.lm_head)
    untouched = model.lm_head.weight.detach().clone()
    returned = call_learner(fn, "tie_weights", Case((model,), {}, ("model",)), FORBIDDEN["ex4"])
    if (model.tok_emb, model.lm_head) != modules:
        replaced = "model.lm_head" if model.lm_head is not modules[1] else "model.tok_emb"
        raise CheckFailed(f"tie_weights: {replaced} was replaced by another module; keep both modules (the head stays "
                          f"an nn.Linear, the embedding an nn.Embedding) and share only the weight: "
                          f"model.lm_head.weight = model.tok_emb.weight")
    if model.lm_head.weight is model.tok_emb.weight:
        _check_shared_weight(model, before, original_emb, seed=seed, V=V, d_model=d_model)
        print(f"✓ tie_weights: one Parameter, shared storage, {V * d_model} parameters saved")
        return
    _refuse_untied(model, original_head, untouched, returned, seed=seed, V=V, d_model=d_model)


def _check_shared_weight(model: TinyDecoder, before: int, original_emb: torch.Tensor, *, seed: int, V: int,
                         d_model: int) -> None:
    """Head and embedding share one Parameter: it must be the embedding's, save V x d_model parameters and
    get a gradient."""
    head, emb = model.lm_head.weight, model.tok_emb.weight
    if emb is not original_emb:
        raise CheckFailed(f"tie_weights: {next(m for m in TIE_MISTAKES if m.key == 'tied_backwards').message}")
    saved = before - ref.param_count(model)
    if saved != V * d_model:
        raise CheckFailed(f"tie_weights: the parameter count dropped by {saved}; tying saves exactly "
                          f"V x d_model = {V * d_model}")
    ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(seed))
    ref.lm_loss(model(ids), ids).backward()
    if head.grad is None:
        raise CheckFailed("tie_weights: the shared weight gets no gradient; keep it an nn.Parameter")


def _tie_kind(m: TinyDecoder, original: torch.Tensor) -> tuple[bool, bool, bool]:
    """(head and embedding share storage, the head is still its original Parameter, the head is a Parameter)."""
    h, e = m.lm_head.weight, m.tok_emb.weight
    return h.data_ptr() == e.data_ptr(), h is original, isinstance(h, nn.Parameter)


def _refuse_untied(model: TinyDecoder, original_head: torch.Tensor, untouched: torch.Tensor, returned: Any, *,
                   seed: int, V: int, d_model: int) -> None:
    """The head's weight is not the embedding's: name the catalogued mistake it matches, else what it is."""
    head, emb = model.lm_head.weight, model.tok_emb.weight
    for mistake in TIE_MISTAKES:
        twin = _untied_model(seed, V, d_model)
        twin_original = twin.lm_head.weight
        mistake.impl(twin)
        if _tie_kind(twin, twin_original) == _tie_kind(model, original_head) and head.shape == emb.shape \
                and torch.equal(head.detach(), twin.lm_head.weight.detach()):
            raise CheckFailed(f"tie_weights: {mistake.message}")
    if head is original_head and head.data_ptr() == emb.data_ptr():
        raise CheckFailed("tie_weights: the head's weight now points at the embedding's storage (.data = ...), but "
                          "it is still a Parameter of its own: the optimizer sees two Parameters (two gradients, two "
                          "AdamW states) and the parameter count does not drop; assign the Parameter itself, "
                          "model.lm_head.weight = model.tok_emb.weight")
    if head is original_head and torch.equal(head.detach(), untouched):
        also = (" (it returned a model: the tying happened in a copy)" if isinstance(returned, nn.Module)
                and returned is not model else "")
        raise CheckFailed(f"tie_weights: the model passed in is unchanged{also}; tie its weights in place: "
                          f"model.lm_head.weight = model.tok_emb.weight, and return nothing")
    if head.shape != emb.shape:
        raise CheckFailed(f"tie_weights: the head's weight has shape {tuple(head.shape)}; it must be the embedding's "
                          f"(V, d_model) = {tuple(emb.shape)} itself")
    raise CheckFailed("tie_weights: model.lm_head.weight is not model.tok_emb.weight; assign the embedding's "
                      "Parameter to the head: model.lm_head.weight = model.tok_emb.weight")


# ---------------------------------------------------------------------------------------------
# Exercise 5: numbers
# ---------------------------------------------------------------------------------------------


# GPT-2 small: V = 50257, d_model = 768; a 512-token vocabulary; BERT's masking of a 32 x 128 batch.
NUMBERS = MappingProxyType({"V_gpt2": 50257, "d_gpt2": 768, "V_small": 512, "B_mlm": 32, "T_mlm": 128})


_TOKENS = NUMBERS["B_mlm"] * NUMBERS["T_mlm"]
_NUMBER_MISTAKES = {
    "saved_gpt2": [(2 * NUMBERS["V_gpt2"] * NUMBERS["d_gpt2"], "tying removes one (V, d_model) matrix, not two"),
                   (NUMBERS["V_gpt2"] * NUMBERS["d_gpt2"] * 4, "that is bytes in float32; the question asks for "
                                                               "parameters")],
    "initial_loss": [(math.log2(NUMBERS["V_small"]), "that is log base 2 (bits); the loss uses the natural log (nats)"),
                     (1 / NUMBERS["V_small"], "that is the probability of each token; the loss is -log of it")],
    "random_tokens": [(_TOKENS * 0.15, "that counts every selected position; only 10 % of them get a random token"),
                      (_TOKENS * 0.15 * 0.8, "that counts the mask tokens (80 %); random tokens are 10 %"),
                      (_TOKENS * 0.1, "10 % of the selected positions, not of all positions: multiply by 0.15 too")],
}


def check_training_numbers(**answers: Any) -> None:
    """saved_gpt2, initial_loss, random_tokens: see the exercise."""
    n = NUMBERS
    expected = {"saved_gpt2": n["V_gpt2"] * n["d_gpt2"], "initial_loss": math.log(n["V_small"]),
                "random_tokens": _TOKENS * 0.15 * 0.1}
    mistakes = _NUMBER_MISTAKES
    hints = {"saved_gpt2": "one matrix of V x d_model numbers is shared",
             "initial_loss": "a fresh model spreads probability evenly over the vocabulary",
             "random_tokens": "B x T positions, 15 % selected, 10 % of those random"}
    check_numbers(answers, expected, tolerance={"initial_loss": 1e-3, "random_tokens": 1e-6}, mistakes=mistakes,
                  hints=hints, name="check_training_numbers", integers=("saved_gpt2",))


# ---------------------------------------------------------------------------------------------
# Exercise 6: labels that agree with the attention mask
# ---------------------------------------------------------------------------------------------


PADDING_LABEL_MISTAKES = (
    Mistake("inverted",
            "the mask is read the wrong way round: real tokens got -100 and padding kept its ids; "
            "attention_mask is True where the token is real, and only padding is ignored",
            lambda ids, attention_mask: ids.masked_fill(attention_mask, IGNORE)),
    Mistake("zero_fill",
            "padding was labelled 0, which is a real token id, so the loss still scores it; use the ignore "
            "index -100",
            lambda ids, attention_mask: ids.masked_fill(~attention_mask, 0)),
    Mistake("padding_kept",
            "the padding ids are kept as labels, so the loss scores predictions of padding; put -100 where "
            "attention_mask is False",
            lambda ids, attention_mask: ids.clone()),
    Mistake("pre_shifted",
            "the labels are shifted by one here; lm_loss does the shift itself, so labels stay aligned with "
            "ids (same positions) and only padding becomes -100",
            lambda ids, attention_mask: torch.cat([ids.masked_fill(~attention_mask, IGNORE)[:, 1:],
                                                   torch.full_like(ids[:, :1], IGNORE)], dim=1)),
)


def _labels_by_lengths(side: str) -> Callable[..., torch.Tensor]:
    def padding_labels(ids, attention_mask):
        lengths = attention_mask.sum(1, keepdim=True)  # (B, 1)
        t = torch.arange(ids.shape[1], device=ids.device)
        real = t < lengths if side == "right" else t >= ids.shape[1] - lengths
        return ids.masked_fill(~real, IGNORE)
    return padding_labels


PADDING_LABEL_PROBES = _probes.probes({
    "lengths_right": ("the labels assume right padding (the first lengths[b] tokens real); the check also pads "
                      "on the left: put -100 wherever attention_mask itself is False",
                      _labels_by_lengths("right")),
    "lengths_left": ("the labels assume left padding (the last lengths[b] tokens real); the check also pads "
                     "on the right: put -100 wherever attention_mask itself is False",
                     _labels_by_lengths("left")),
})


def check_padding_labels(fn: Any, *, seed: int = 0, B: int = 3, T: int = 8, V: int = 20) -> None:
    """padding_labels(ids, attention_mask): ids (B, T), attention_mask (B, T) bool -> labels (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T}
    lengths = torch.randint(1, T, (B,), generator=gen)
    lengths[0] = T
    right = torch.arange(T) < lengths[:, None]  # (B, T): right padding
    left = torch.arange(T) >= (T - lengths)[:, None]  # (B, T): left padding
    names = ("ids", "attention_mask")
    cases = [Case((_ids(gen, B, T, V), right), sizes, names, "right padding"),
             Case((_ids(gen, B, T, V), left), sizes, names, "left padding")]
    check_function(fn, name="padding_labels", reference=ref.lm_labels, cases=cases, outputs=("labels",),
                   mistakes=PADDING_LABEL_MISTAKES, forbidden=FORBIDDEN["ex6"], probes=PADDING_LABEL_PROBES,
                   diagnose=_padding_symptom)


def _padding_symptom(got: Any, expected: Any, case: Case) -> str | None:
    """Real tokens and padding are two groups of positions: say which group is labelled wrongly, and how."""
    ids, mask = case.args
    real_wrong = mask & (got != ids)
    pad = ~mask
    pad_values = got[pad].unique()
    if not bool(real_wrong.any()) and pad_values.numel() == 1 and int(pad_values) != IGNORE:
        return f"padding is labelled {int(pad_values)}; the ignore index is -100 (what lm_loss leaves out)"
    if bool(real_wrong.any()):
        last_real = mask.clone()
        last_real[:, :-1] &= ~mask[:, 1:]  # a real token followed by padding (or at the end)
        last_real[:, -1] = False
        where = _positions(real_wrong)
        if bool((real_wrong <= last_real).all()) and bool((got[real_wrong] == IGNORE).all()):
            return (f"the last real token before padding got -100 at (b, t) = {where}; it is a real token and keeps "
                    f"its id: lm_loss's shift already stops the prediction of padding, only padding is -100")
        return (f"real tokens (attention_mask True) are not labelled with their id at (b, t) = {where}; the labels "
                f"are ids wherever attention_mask is True, -100 elsewhere")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 7: loss curves of planted faults
# ---------------------------------------------------------------------------------------------


# What each run's curve shows, said so that it names the feature to look at.
CURVE_SIGNS = MappingProxyType({
    "healthy": "it falls steadily towards the entropy rate (the floor) and stays above it",
    "lr_too_high": "it climbs far above ln V, the loss it started at: the updates throw the weights away",
    "no_warmup": "it reaches the letters' unigram entropy within its first steps and stays there for the rest "
                 "of the run: it learned how often each letter occurs, and then nothing more",
    "mask_leak": "it ends below the entropy rate, the lowest loss any model that predicts honestly can reach",
    "frozen_layers": "it learns at first, then flattens on a plateau well above the healthy level and below the "
                     "unigram entropy: only part of the model is learning",
})

# (the truth, the learner's name for it) -> what tells the two apart.
CURVE_CONFUSIONS = MappingProxyType({
    ("no_warmup", "lr_too_high"): "a learning rate too high makes the loss climb far above where it started, "
                                  "to several nats and more; this one never does: it broke in its first steps, while the peak "
                                  "learning rate hit an untrained deep Post-LN stack, and then sat on a plateau. "
                                  "That is a missing warm-up",
    ("lr_too_high", "no_warmup"): "a missing warm-up breaks a run in its first steps and leaves it on a plateau "
                                  "at the unigram entropy; this one climbs far above ln V, the loss it "
                                  "started at, as its learning rate grows: the rate itself is too high",
    ("mask_leak", "healthy"): "it ends below the entropy rate, and no honest model can beat the language's own "
                              "uncertainty: it is reading the token it predicts. A loss too good to be true is a "
                              "leak, not a good run",
    ("healthy", "mask_leak"): "a leak drives the loss below the entropy rate; this run approaches the floor but "
                              "stays above it, as a healthy run does",
    ("frozen_layers", "healthy"): "a healthy run keeps falling towards the entropy rate; this one stops on a "
                                  "plateau far above it that more steps do not lower: part of the model is not "
                                  "being trained",
    ("healthy", "frozen_layers"): "it keeps falling towards the entropy rate and ends lowest of the honest runs; "
                                  "a run with frozen layers stops higher, on a flat plateau",
    ("frozen_layers", "no_warmup"): "a missing warm-up breaks a run in its first steps and leaves it at the "
                                    "unigram entropy; this one learns past the unigram level and then flattens "
                                    "above the healthy run: frozen layers",
    ("no_warmup", "frozen_layers"): "frozen layers leave a run on a plateau below the unigram entropy, after it "
                                    "learned past that level; this one sits at the unigram entropy from its "
                                    "first steps on: it broke at once, as a deep Post-LN stack does when the peak "
                                    "learning rate hits it without a warm-up",
})


def _confused(truth: str, given: str, order_seed: int = _curves.ORDER_SEED) -> dict[str, str]:
    """A complete wrong answer whose only catalogued confusion is naming the `truth` curve `given`
    (the first such permutation of the right answer; the other names it gets wrong are uncatalogued)."""

    key = _curves.true_labels(order_seed)
    for names in itertools.permutations(_curves.FAULTS):
        answer = dict(zip(_curves.LABELS, names))
        pairs = {(key[label], answer[label]) for label in _curves.LABELS if answer[label] != key[label]}
        if (truth, given) in pairs and not (pairs - {(truth, given)}) & set(CURVE_CONFUSIONS):
            return answer
    raise ValueError(f"no answer confuses only {truth!r} with {given!r}")


class _WrongNames(dict):
    """A catalogued wrong answer of exercise 7: a dict like the learner's, hashed by identity (the tests keep
    a set of the catalogue's implementations)."""

    __hash__ = object.__hash__


# Each confusion as a complete wrong answer (a dict, the exercise's answer), for the catalogue tests.
LOSS_CURVE_MISTAKES = tuple(Mistake(f"{truth}_read_as_{given}", message, _WrongNames(_confused(truth, given)))
                            for (truth, given), message in CURVE_CONFUSIONS.items())


def _fault_list() -> str:
    return ", ".join(repr(f) for f in _curves.FAULTS)


def check_loss_curves(answers: Any, *, order_seed: int = _curves.ORDER_SEED) -> None:
    """answers: {label: fault name} for the curves A-E of `helpers.loss_curves.labelled_curves()`."""
    verify_environment()
    labels = _curves.LABELS
    if not isinstance(answers, Mapping):
        raise CheckFailed(f"answers must be a dict {{label: fault name}} with the labels {', '.join(labels)}; "
                          f"got {type(answers).__name__}")
    unknown_labels = sorted(str(k) for k in answers if k not in labels)
    if unknown_labels:
        raise CheckFailed(f"answers has labels {', '.join(unknown_labels)}; the curves are labelled "
                          f"{', '.join(labels)}")
    unanswered = [label for label in labels if answers.get(label) is None]
    if unanswered:
        raise CheckFailed(f"no answer yet for {', '.join(unanswered)}: give each curve a fault name and run its cell")
    for label in labels:
        name = answers[label]
        if name not in _curves.FAULTS:
            raise CheckFailed(f"answers[{label!r}] = {name!r} is not one of the fault names; use one of "
                              f"{_fault_list()}")
    names = [answers[label] for label in labels]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        twice = [label for label in labels if answers[label] == repeated[0]]
        raise CheckFailed(f"{repeated[0]!r} is given to {' and '.join(twice)}, but each fault is behind exactly one "
                          f"curve: compare those curves and keep the name for the one that fits it")
    truth = _curves.true_labels(order_seed)
    wrong = [label for label in labels if answers[label] != truth[label]]
    if wrong:  # name a catalogued confusion first: its message says what tells the two apart
        label = next((w for w in wrong if (truth[w], answers[w]) in CURVE_CONFUSIONS), wrong[0])
        fault, given = truth[label], answers[label]
        reason = CURVE_CONFUSIONS.get((fault, given), f"look again: {CURVE_SIGNS[fault]}")
        more = f" ({len(wrong)} curves are misnamed in all)" if len(wrong) > 1 else ""
        raise CheckFailed(f"curve {label} is not {given!r}: {reason}{more}")
    print(f"✓ all {len(labels)} curves are named right")


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

MISTAKES = {
    "lm_loss": LM_LOSS_MISTAKES,
    "padding_labels": PADDING_LABEL_MISTAKES,
    "mlm_mask": MLM_MISTAKES,
    "teacher_forcing_inputs": TEACHER_FORCING_MISTAKES,
    "tie_weights": TIE_MISTAKES,
    "loss_curves": LOSS_CURVE_MISTAKES,
}

PROBES = {"lm_loss": LM_LOSS_PROBES, "mlm_mask": MLM_PROBES, "teacher_forcing_inputs": TEACHER_FORCING_PROBES,
          "padding_labels": PADDING_LABEL_PROBES}

protect(ref, sys.modules[__name__])
