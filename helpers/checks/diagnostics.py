"""Checks for chapter 09 (diagnostics) and their mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

Answers write the diagnostics themselves: they may not call `helpers.diagnostics` (the reference)
or torch.special.entr. The bug hunt (`check_bug_hunt`) takes the learner's choices, not a function,
and tells which diagnostic finds each model the learner named wrongly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import torch

from .. import bugs
from .. import diagnostics as ref
from ..blocks import ModelConfig, cached_causal_mask
from ..blocks import TinyDecoder as _TinyDecoder
from .core import Case, CheckFailed, Mistake, check_function, check_numbers, protect, verify_environment
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "check_attention_entropy",
    "check_bug_hunt",
    "check_diagnostics_numbers",
    "check_future_leaks",
    "check_update_ratios",
]

_REFERENCE = (ref,)
_TORCH_ENTROPY = (torch.special.entr,)
# What each exercise forbids, for the instructor's pre-grading scan (helpers/grading/scan.py).
FORBIDDEN_BY_EXERCISE = {"ex2": _TORCH_ENTROPY}
# The bug hunt is solved by running the chapter's diagnostics on the models.
ALLOWED_REFERENCE_BY_EXERCISE = {"ex4": tuple(ref.__all__)}


# ---------------------------------------------------------------------------------------------
# Exercise 1: a leakage test by perturbation
# ---------------------------------------------------------------------------------------------


def _moved(out: torch.Tensor, base: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """(B, T, ...) twice -> (T,) bool: which positions changed, with a tolerance (or exactly)."""
    if exact:
        diff = out != base  # WRONG when exact: rounding noise counts as a change
    else:
        diff = ~torch.isclose(out, base, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
    return diff.flatten(2).any(-1).any(0)  # (T,)


def _leaks(f, ids, vocab_size, *, positions=None, exact=False, region="before"):
    T = ids.shape[1]
    base = f(ids)
    leaks = torch.zeros(T, T, dtype=torch.bool)
    for j in (range(T) if positions is None else positions(T)):
        changed = ids.clone()
        changed[:, j] = (ids[:, j] + 1) % vocab_size
        moved = _moved(f(changed), base, exact)  # (T,)
        i = torch.arange(T)
        where = {"before": i < j, "after": i > j, "up_to": i <= j}[region]
        leaks[:, j] = moved & where
    return leaks


def _leaks_last_only(f, ids, vocab_size):
    return _leaks(f, ids, vocab_size, positions=lambda T: [T - 1])  # WRONG: only the last token is changed


def _leaks_exact(f, ids, vocab_size):
    return _leaks(f, ids, vocab_size, exact=True)  # WRONG: exact equality


def _leaks_after(f, ids, vocab_size):
    return _leaks(f, ids, vocab_size, region="after")  # WRONG: looks at outputs after j, which may move


def _leaks_diagonal(f, ids, vocab_size):
    return _leaks(f, ids, vocab_size, region="up_to")  # WRONG: output j itself may depend on token j


LEAK_MISTAKES = (
    Mistake("last_token_only",
            "only the last token is perturbed: a leak from a middle position (output 1 seeing token 4) goes "
            "unseen; change every position j in turn",
            _leaks_last_only),
    Mistake("exact_equality",
            "the outputs are compared with exact equality: a recomputation that rounds differently (last bits) "
            "counts as a leak; compare with a tolerance (torch.isclose or helpers.numerics.close)",
            _leaks_exact),
    Mistake("after_not_before",
            "it reports outputs after the perturbed position (i > j), which a causal model may change; a leak "
            "is an output before it (i < j) that moves",
            _leaks_after),
    Mistake("diagonal",
            "the diagonal is reported: output j may depend on token j itself (it attends to itself); only "
            "i < j is a leak",
            _leaks_diagonal),
)


def _tiny_decoder(seed: int, V: int, causal: bool, dtype: torch.dtype) -> _TinyDecoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _TinyDecoder(ModelConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, max_seq_len=32,
                                         causal=causal)).to(dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _reference_leaks(f, ids, vocab_size):
    T = ids.shape[1]
    return ref.influence_by_perturbation(f, ids, vocab_size) & ~torch.ones(T, T, dtype=torch.bool).tril()


def check_future_leaks(fn: Any, *, seed: int = 0, B: int = 2, T: int = 7, V: int = 13,
                       dtype: torch.dtype = torch.float32) -> None:
    """future_leaks(f, ids, vocab_size) -> (T, T) bool, True at (i, j) when i < j and output i moves with token j."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T, "V": V}
    names = ("f", "ids", "vocab_size")

    def ids() -> torch.Tensor:
        return torch.randint(0, V, (B, T), generator=gen)

    cases = [
        Case((_tiny_decoder(seed, V, True, dtype), ids(), V), sizes, names, "a healthy causal decoder"),
        Case((_tiny_decoder(seed, V, False, dtype), ids(), V), sizes, names, "a decoder without its causal mask"),
        Case((bugs.PrefixSums(seed, V, ((1, 4),), wobble=True), ids(), V), sizes, names,
             "f where output 1 sees token 4, and outputs wobble in their last bits whenever any token changes"),
    ]
    check_function(fn, name="future_leaks", reference=_reference_leaks, cases=cases, outputs=("leaks",),
                   mistakes=LEAK_MISTAKES, forbidden=_REFERENCE)


# ---------------------------------------------------------------------------------------------
# Exercise 2: attention entropy
# ---------------------------------------------------------------------------------------------


def _plogp(w: torch.Tensor) -> torch.Tensor:
    return w * torch.where(w > 0, w.log(), torch.zeros((), dtype=w.dtype))


ENTROPY_MISTAKES = (
    Mistake("bits", "the entropy is in bits (log2); the exercise asks for nats, the natural log: divide "
            "by ln 2 less, use torch.log",
            lambda w: -(w * torch.where(w > 0, w.log2(), torch.zeros((), dtype=w.dtype))).sum(-1)),
    Mistake("query_axis", "the sum runs over the query axis (-2); each query's distribution is a row, so "
            "sum over the key axis (-1)",
            lambda w: -_plogp(w).sum(-2)),
    Mistake("zero_log_zero", "blocked keys give 0 * log 0 = NaN; by convention 0 ln 0 = 0 (use "
            "torch.where(p > 0, p.log(), 0) or torch.xlogy)",
            lambda w: -(w * w.log()).sum(-1)),
    Mistake("sign", "the sign is flipped: sum p ln p is negative; the entropy is -sum p ln p",
            lambda w: _plogp(w).sum(-1)),
)


def check_attention_entropy(fn: Any, *, seed: int = 0, B: int = 2, H: int = 3, T_q: int = 5, T_k: int = 8,
                            dtype: torch.dtype = torch.float32) -> None:
    """attention_entropy(weights): (..., T_q, T_k) -> (..., T_q), nats, 0 ln 0 = 0."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "H": H, "T_q": T_q, "T_k": T_k}
    mask = cached_causal_mask(T_q, T_k)  # (T_q, T_k): blocked keys get weight exactly 0
    scores = _randn(gen, B, H, T_q, T_k, dtype=dtype, scale=2.0)
    masked = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T_q, T_k)
    sharp = torch.softmax(_randn(gen, B, H, T_q, T_k, dtype=dtype, scale=6.0), dim=-1)
    cases = [Case((masked,), sizes, ("weights",), "causal weights: blocked keys have weight 0"),
             Case((sharp,), sizes, ("weights",), "unmasked, peaked weights")]
    check_function(fn, name="attention_entropy", reference=ref.attention_entropy, cases=cases,
                   outputs=("entropy",), mistakes=ENTROPY_MISTAKES, forbidden=_REFERENCE + _TORCH_ENTROPY)


# ---------------------------------------------------------------------------------------------
# Exercise 3: update-to-stream ratios
# ---------------------------------------------------------------------------------------------


def _ratio_wrong_axis(stream):
    update = (stream[1:] - stream[:-1]).norm(dim=-2)  # WRONG: a norm over the positions T
    return (update / stream[:-1].norm(dim=-2)).mean(dim=(1, 2))


def _ratio_whole_tensor(stream):
    update = (stream[1:] - stream[:-1]).flatten(1).norm(dim=-1)  # WRONG: one norm over B, T and d_model
    return update / stream[:-1].flatten(1).norm(dim=-1)


def _ratio_of_streams(stream):
    return (stream[1:].norm(dim=-1) / stream[:-1].norm(dim=-1)).mean(dim=(1, 2))  # WRONG: no difference


def _ratio_of_means(stream):
    update = (stream[1:] - stream[:-1]).norm(dim=-1).mean(dim=(1, 2))  # WRONG: ratio of averages
    return update / stream[:-1].norm(dim=-1).mean(dim=(1, 2))


RATIO_MISTAKES = (
    Mistake("norm_over_T", "the norms run over the position axis T (dim=-2); a token's vector lies along "
            "d_model, so take each norm over the last axis", _ratio_wrong_axis),
    Mistake("whole_tensor", "one norm over the whole (B, T, d_model) tensor per layer; the ratio is per token "
            "(norm over d_model), then averaged over the B x T tokens", _ratio_whole_tensor),
    Mistake("stream_ratio", "this is ||x_{l+1}|| / ||x_l||, how the stream's size grows; the update ratio "
            "measures the change, ||x_{l+1} - x_l|| / ||x_l||", _ratio_of_streams),
    Mistake("ratio_of_means", "the mean update norm divided by the mean stream norm; take the ratio per token "
            "first, then average the ratios", _ratio_of_means),
)


def check_update_ratios(fn: Any, *, seed: int = 0, L: int = 3, B: int = 2, T: int = 5, d_model: int = 7,
                        dtype: torch.dtype = torch.float32) -> None:
    """update_ratios(stream): (L + 1, B, T, d_model) -> (L,)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"L + 1": L + 1, "B": B, "T": T, "d_model": d_model}
    x = [_randn(gen, B, T, d_model, dtype=dtype)]
    for layer in range(L):
        x.append(x[-1] + _randn(gen, B, T, d_model, dtype=dtype, scale=0.3 * (layer + 1)))  # growing edits
    walk = torch.stack(x)  # (L + 1, B, T, d_model)
    scales = torch.linspace(0.5, 3.0, T, dtype=torch.float64).to(dtype)[None, None, :, None]  # tokens of different size
    uneven = _randn(gen, L + 1, B, T, d_model, dtype=dtype) * scales
    cases = [Case((walk,), sizes, ("stream",), "a stream that each block edits"),
             Case((uneven,), sizes, ("stream",), "tokens of different sizes")]
    check_function(fn, name="update_ratios", reference=ref.update_ratios, cases=cases, outputs=("ratios",),
                   mistakes=RATIO_MISTAKES, forbidden=_REFERENCE)


# ---------------------------------------------------------------------------------------------
# Exercise 4: the bug hunt
# ---------------------------------------------------------------------------------------------


def check_bug_hunt(answers: Any, *, seed: int = 0, grade: bool = True) -> None:
    """answers: {label: bug} for every model of bugs.hunt_models(seed), each bug a key of bugs.BUGS.

    grade=False (the visible test) checks only the form: every model answered with a bug from the
    list, each bug once. grade=True (the hidden test) also grades each choice and names, for each
    wrong one, the diagnostic that finds that model's bug.
    """
    verify_environment()
    truth = bugs._assignment(seed)
    if not isinstance(answers, Mapping):
        raise CheckFailed(f"answers should be a dict {{label: bug}}; got {type(answers).__name__}")
    missing = [label for label in truth if answers.get(label) in (None, "")]
    if missing:
        raise CheckFailed(f"no answer yet for model{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                          f"choose one of {', '.join(sorted(bugs.BUGS))}")
    unknown = {label: choice for label, choice in answers.items() if label in truth and choice not in bugs.BUGS}
    if unknown:
        label, choice = next(iter(unknown.items()))
        raise CheckFailed(f"model {label}: {choice!r} is not one of the bugs; choose one of {', '.join(sorted(bugs.BUGS))}")
    extra = sorted(set(answers) - set(truth))
    if extra:
        raise CheckFailed(f"there are no models {', '.join(map(str, extra))}; the models are {', '.join(truth)}")
    repeated = sorted({answers[label] for label in truth if [answers[x] for x in truth].count(answers[label]) > 1})
    if repeated:
        raise CheckFailed(f"each bug is in exactly one model, but {repeated[0]!r} is given to more than one")
    if not grade:
        verify_environment()
        print(f"✓ all {len(truth)} models have a bug from the list, each bug once; the hidden test grades the choices")
        return
    wrong = [label for label in truth if answers[label] != truth[label]]
    if wrong:
        lines = [f"model {label} is not {answers[label]!r}; the diagnostic that finds its bug: "
                 f"{bugs.BUGS[truth[label]][1]}" for label in wrong]
        raise CheckFailed(f"{len(truth) - len(wrong)} of {len(truth)} right. " + "; ".join(lines))
    verify_environment()
    print(f"✓ all {len(truth)} bugs found")


# ---------------------------------------------------------------------------------------------
# Exercise 5: numbers
# ---------------------------------------------------------------------------------------------


def check_diagnostics_numbers(**answers: Any) -> None:
    """max_entropy_1024, causal_max_query_9, leak_test_passes: see the exercise."""
    expected = {"max_entropy_1024": math.log(1024), "causal_max_query_9": math.log(10), "leak_test_passes": 129}
    mistakes = {
        "max_entropy_1024": [(10.0, "that is log2 1024, in bits; the exercise asks for nats (natural log)")],
        "causal_max_query_9": [(math.log(9), "query 9 is the tenth token: it sees keys 0..9, ten keys, not nine"),
                               (math.log2(10), "that is in bits; use the natural log"),
                               (math.log(1024), "that is the maximum without a causal mask")],
        "leak_test_passes": [(128, "one run per perturbed position, plus the unperturbed run to compare with"),
                             (128 * 128, "one run per perturbed position gives all T outputs at once; no run per "
                                         "(i, j) pair is needed")],
    }
    hints = {"max_entropy_1024": "uniform attention over T keys has entropy ln T",
             "causal_max_query_9": "count the keys query 9 may see",
             "leak_test_passes": "a baseline run, then one run with each position changed"}
    check_numbers(answers, expected, tolerance={"max_entropy_1024": 1e-3, "causal_max_query_9": 1e-3},
                  mistakes=mistakes, hints=hints, name="check_diagnostics_numbers",
                  integers=("leak_test_passes",))


MISTAKES = {
    "future_leaks": LEAK_MISTAKES,
    "attention_entropy": ENTROPY_MISTAKES,
    "update_ratios": RATIO_MISTAKES,
}


protect(ref, bugs, sys.modules[__name__])
