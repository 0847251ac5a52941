"""Checks for chapter 09 (diagnostics) and their mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

Answers write the diagnostics themselves: they may not call `helpers.diagnostics` (the reference)
or torch.special.entr. The bug hunt (`check_bug_hunt`) takes the learner's `find_bug(model,
reference)`, runs it on hunt models (in the hidden test, a hunt whose seed only that test knows,
with weights no named model has), and tells which diagnostic finds each model it named wrongly;
`find_bug` runs on the learner's own diagnostics: `bugs.checkup`, the bug builders and the
reference's diagnostics are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import sys
from collections.abc import Mapping
from typing import Any

import torch

from .. import bugs
from .. import diagnostics as ref
from ..blocks import ModelConfig, cached_causal_mask
from ..blocks import TinyDecoder as _TinyDecoder
from . import probes as _probes
from .core import (
    Case,
    CheckFailed,
    Mistake,
    _blame_prerequisites,
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
    "check_ablation_verdicts",
    "check_attention_entropy",
    "check_bug_hunt",
    "check_diagnostics_numbers",
    "check_future_leaks",
    "check_update_ratios",
]

# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The bug hunt is solved with the learner's own diagnostics (exercises 1 to 3, and their own code):
# the reference's diagnostics, bugs.checkup (all of them in one call) and the bug builders (to match
# outputs against) are refused inside find_bug. The plumbing (residual_stream, shape_report) is allowed.
_HUNT_DIAGNOSTICS = (ref.leak_test, ref.influence_by_perturbation, ref.influence_by_gradient, ref.leaking_pairs,
                     ref.moved_positions, ref.attention_entropy, ref.head_entropy, ref.entropy_table,
                     ref.update_ratios, ref.stream_norms)
FORBIDDEN = {
    "ex1": (ref,),
    "ex2": (ref, torch.special.entr),
    "ex3": (ref,),
    "ex4": _HUNT_DIAGNOSTICS + (bugs.checkup, bugs.broken_model, bugs.healthy_model, bugs.hunt_models,
                                bugs._assignment, bugs._plant_bug, bugs._plant, bugs.Model.__init__),
    "ex5": (),
    "ex7": (ref,),
}
ALLOWED_REFERENCE_BY_EXERCISE = {"ex4": tuple(name for name in ref.__all__
                                              if getattr(ref, name) not in _HUNT_DIAGNOSTICS)}


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


def _one_sequence_leaks(seed: int, V: int, ids: torch.Tensor, T: int) -> bugs.PrefixSums:
    """A causal toy f with two leaks that show in one sequence each: output 2 reads token T - 1, which
    moves it in the last sequence only, and output 0 reads token 3, which moves it in the first only.
    A test must catch a leak in any sequence, not only in the first or in all of them. Sets ids[:, 3]
    and ids[:, T - 1] (token 0, whose perturbation to 1 changes no vector, except where the leak shows)."""
    f = bugs.PrefixSums(seed, V, ((2, T - 1), (0, 3)), wobble=False)
    table = f.table.clone()
    table[1] = table[0]  # token 0 -> 1 (the perturbation) changes no vector; 2 -> 3 does
    f.table = table
    ids[:, 3] = 0
    ids[0, 3] = 2
    ids[:, T - 1] = 0
    ids[-1, T - 1] = 2
    return f


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
    if T >= 5 and V >= 4:
        cases.append(Case((_one_sequence_leaks(seed, V, some := ids(), T), some, V), sizes, names,
                          f"f where output 0 sees token 3 in the first sequence only, and output 2 sees token "
                          f"{T - 1} in the last sequence only"))
    try:
        check_function(fn, name="future_leaks", reference=_reference_leaks, cases=cases, outputs=("leaks",),
                       mistakes=LEAK_MISTAKES, forbidden=FORBIDDEN["ex1"], probes=LEAK_PROBES, diagnose=_leak_symptom)
    except CheckFailed as failure:
        if " raised " in str(failure):  # the model refused its input: were the perturbed ids still ids?
            problem = next((p for p in map(lambda case: _ids_out_of_range(fn, case), cases) if p), None)
            if problem:
                raise CheckFailed(f"future_leaks {problem}") from None
        raise


def _ids_out_of_range(fn: Any, case: Case) -> str | None:
    """What the learner's test fed the model, when some of it was not a token id 0 .. V - 1."""
    f, ids, V = case.args
    seen: list[tuple[int, int]] = []

    def recording(x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, torch.Tensor) and not x.is_floating_point() and x.numel():
            seen.append((int(x.min()), int(x.max())))
        return f(x, *args, **kwargs)

    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        fn(recording, ids.clone(), V)
    if not seen:
        return None
    low, high = min(lo for lo, _ in seen), max(hi for _, hi in seen)
    if low >= 0 and high < V:
        return None
    return (f"gave the model token ids from {low} to {high}, but its vocabulary has the ids 0 .. {V - 1} "
            f"(vocab_size = {V}): the perturbed token ids[:, j] + 1 runs past the last id; wrap it around, "
            f"changed[:, j] = (ids[:, j] + 1) % vocab_size")


_leak_probe = _probes.perturbation_leaks
LEAK_PROBES = _probes.probes({
    "token_before_j": ("column j records what changing token j - 1 does (a past token, off by one); change token j "
                       "itself: changed[:, j] = (ids[:, j] + 1) % vocab_size", _leak_probe(perturb="token_j_minus_1")),
    "from_j_on": ("every token from j on is changed at once, so a leak from a later token shows up in column j "
                  "too; change only token j per run", _leak_probe(perturb="from_j")),
    "every_sequence": ("an output counts as moved only if it moves in every sequence of the batch; a leak in any "
                       "one sequence is a leak: .any() over the batch", _leak_probe(sequences="all")),
    "first_sequence": ("only the first sequence of the batch is compared; a leak in any sequence is a leak: "
                       "compare all of them and take .any() over the batch", _leak_probe(sequences="first")),
})


def _leak_symptom(got: Any, expected: Any, case: Case) -> str | None:
    """Sort the wrong entries: pairs at or below the diagonal, leaks reported that are not there, leaks missed."""
    T = expected.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool).triu(1)
    got = got.cpu()
    if bool((got & ~upper).any()):
        where = ", ".join(str(tuple(int(i) for i in p)) for p in (got & ~upper).nonzero()[:3])
        return (f"pairs with i >= j are reported, e.g. (i, j) = {where}; output i may depend on tokens 0..i, so only "
                f"i < j can be a leak")
    false = got & ~expected
    missed = expected & ~got
    if bool(missed.any()):
        where = ", ".join(str(tuple(int(i) for i in p)) for p in missed.nonzero()[:3])
        return (f"leaks are missed at (i, j) = {where}: output i does move when token j alone changes; compare every "
                f"output value with a tolerance (torch.isclose), in every sequence, for every j")
    if bool(false.any()):
        where = ", ".join(str(tuple(int(i) for i in p)) for p in false.nonzero()[:3])
        return (f"leaks are reported at (i, j) = {where}, but output i does not move when token j alone changes "
                f"(beyond rounding); change one token per run and compare with a tolerance")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 2: attention entropy
# ---------------------------------------------------------------------------------------------


def _plogp(w: torch.Tensor) -> torch.Tensor:
    return w * torch.where(w > 0, w.log(), torch.zeros((), dtype=w.dtype))


ENTROPY_MISTAKES = (
    Mistake("bits", "the entropy is in bits (log2); the exercise asks for nats, the natural log: use "
            "torch.log (or .log()) instead of log2; an entropy in bits is the one in nats divided by ln 2",
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
                   outputs=("entropy",), mistakes=ENTROPY_MISTAKES, forbidden=FORBIDDEN["ex2"],
                   probes=ENTROPY_PROBES, diagnose=lambda got, expected, case: _entropy_symptom(fn, case))


_entropy = _probes.row_entropy
_H = "H = -sum over the keys of p ln p"
ENTROPY_PROBES = _probes.probes({
    "mean_over_keys": (f"the terms are averaged over the keys (mean) instead of summed; {_H}", _entropy(reduce="mean")),
    "log10": (f"the entropy uses log10; the exercise asks for nats, the natural log: {_H}", _entropy(log=torch.log10)),
    "normalised": (f"the entropy is divided by ln T_k (normalized to 0..1); the exercise asks for nats: {_H}",
                   _entropy(normalise=True)),
    "no_p_factor": (f"the weight p is missing in front of ln p: -sum ln p is not an average; {_H}",
                    _entropy(weight="one")),
    "log1p": (f"the log is log1p, ln(1 + p); it is ln p (taken where p > 0): {_H}", _entropy(log=torch.log1p)),
    "softmax_again": ("softmax is applied to the weights again; they already are probabilities (rows sum to 1): "
                      "use them as they are", _entropy(resoftmax=True)),
})


def _entropy_symptom(fn: Any, case: Case) -> str | None:
    """Two rows whose entropy is known without computing, fed to the learner's function: all the weight on
    one key (entropy 0) and uniform weights over the T_k keys (ln T_k)."""
    weights = case.args[0]
    T_k = weights.shape[-1]
    rows = torch.zeros(2, T_k, dtype=weights.dtype, device=weights.device)
    rows[0, 0] = 1.0
    rows[1] = 1.0 / T_k
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            got = call_learner(fn, "attention_entropy", Case((rows,), {"T_q": 2, "T_k": T_k}, ("weights",)),
                               FORBIDDEN["ex2"])
    except CheckFailed:
        return None
    if not (isinstance(got, torch.Tensor) and got.shape == (2,)):
        return None
    one_hot, uniform = (float(v) for v in got.detach().cpu().double())
    if not abs(one_hot) <= 1e-6:
        return (f"a row with all its weight on one key has entropy 0 (p ln p is 0 for p = 1, and 0 ln 0 = 0); yours "
                f"gives {one_hot:.4g}: check each term, -p ln p, summed over the keys")
    if not abs(uniform - math.log(T_k)) <= 1e-4 * math.log(T_k):
        return (f"a uniform row over T_k = {T_k} keys has entropy ln T_k = {math.log(T_k):.4g}; yours gives "
                f"{uniform:.4g} (a row with all its weight on one key gives 0, as it should): check the sum over "
                f"the keys and the log's base")
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 3: update-to-stream ratios
# ---------------------------------------------------------------------------------------------


def _ratio_wrong_axis(stream):
    update = (stream[1:] - stream[:-1]).norm(dim=-2)  # WRONG: a norm over the positions T
    return (update / stream[:-1].norm(dim=-2)).mean(dim=(1, 2))


def _ratio_whole_tensor(stream):
    update = (stream[1:] - stream[:-1]).flatten(1).norm(dim=-1)  # WRONG: one norm over B, T and d_model
    return update / stream[:-1].flatten(1).norm(dim=-1)


def _ratio_per_sequence(stream):
    update = (stream[1:] - stream[:-1]).flatten(-2).norm(dim=-1)  # WRONG: one norm per sequence over (T, d_model)
    return (update / stream[:-1].flatten(-2).norm(dim=-1)).mean(dim=1)


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
    Mistake("per_sequence", "one norm per sequence, over its whole (T, d_model) block; the ratio is per token: "
            "each norm over d_model alone (.norm(dim=-1)), then the ratios averaged over the B x T tokens",
            _ratio_per_sequence),
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
                   mistakes=RATIO_MISTAKES, forbidden=FORBIDDEN["ex3"], probes=RATIO_PROBES)


_ratio = _probes.stream_update_ratio
_R = "r = ||x_{l+1} - x_l|| / ||x_l||, L2 norms over d_model, per token"
RATIO_PROBES = _probes.probes({
    "divided_by_after": (f"the update is divided by the norm of the stream after the block, ||x_{{l+1}}||; divide "
                         f"by the stream it edits, x_l: {_R}", _ratio(size="after")),
    "squared": (f"the ratio is squared (squared norms, or no square root); {_R}", _ratio(power=2)),
    "change_from_input": (f"the change is measured from the input x_0 (cumulative), not from the previous layer: "
                          f"{_R}", _ratio(update="input")),
    "per_element": (f"the ratio is taken per element (|dx| / |x| entry by entry); take it per token, each norm "
                    f"over d_model: {_R}", _ratio(norm="element")),
    "l1_norm": (f"the norms are L1 (sum of |.|); use the L2 norm, .norm(dim=-1): {_R}", _ratio(norm="l1")),
    "std": (f"the norms are standard deviations (centred, divided by d_model - 1); use the L2 norm, "
            f".norm(dim=-1): {_R}", _ratio(norm="std")),
    "summed": (f"the ratios are summed over the tokens; average them over the B x T tokens: {_R}",
               _ratio(reduce="sum")),
})


# ---------------------------------------------------------------------------------------------
# Exercise 4: the bug hunt
# ---------------------------------------------------------------------------------------------


def hunt_seed(secret: int) -> int:
    """The seed of the hidden test's hunt: 48 bits hashed from a number only the hidden test holds
    (the package cannot give the assignment away: `bugs._assignment` of the visible seed is not it)."""
    return int.from_bytes(hashlib.sha256(f"graded bug hunt {secret}".encode()).digest()[:6], "big")


def _hunt_answers(find_bug: Any, seed: int) -> tuple[dict[str, str], dict[str, Any]]:
    """find_bug run on every model of hunt `seed`: (label -> its answer, label -> the truth)."""
    if isinstance(find_bug, Mapping):
        raise CheckFailed("the bug hunt asks for a function find_bug(model, reference) that returns the name of "
                          "the model's bug, found with your diagnostics; the hidden test runs it on other models, so "
                          "a dict of names cannot be graded")
    truth = bugs._assignment(seed)
    models, reference = bugs.hunt_models(seed), bugs.healthy_model(seed)
    answers = {}
    for label, model in models.items():
        case = Case((model, reference), {}, ("model", "reference"), f"model {label} of the hunt")
        answers[label] = call_learner(find_bug, "find_bug", case, FORBIDDEN["ex4"])
    return answers, truth


def check_bug_hunt(find_bug: Any, *, seed: int = 0, secret: int | None = None, grade: bool = True) -> None:
    """find_bug(model, reference) -> the name of the model's bug (a key of bugs.BUGS), for every model of
    bugs.hunt_models(seed), or, with `secret` (the hidden test), of a hunt whose seed only the test knows.

    grade=False (the visible test) checks only the form: every model answered with a bug from the
    list, each bug once. grade=True (the hidden test) also grades each choice and names, for each
    wrong one, the diagnostic that finds that model's bug. When find_bug fails and uses one of the
    learner's exercises 1 to 3 that fails its own check, the message says to fix that one first.
    """
    verify_environment()
    prerequisites = {"future_leaks": (check_future_leaks, "exercise 1"),
                     "attention_entropy": (check_attention_entropy, "exercise 2"),
                     "update_ratios": (check_update_ratios, "exercise 3")}
    with _blame_prerequisites(find_bug, "find_bug", prerequisites, ()):
        _grade_hunt(find_bug, seed if secret is None else hunt_seed(secret), grade)


def _grade_hunt(find_bug: Any, seed: int, grade: bool) -> None:
    answers, truth = _hunt_answers(find_bug, seed)
    missing = [label for label in truth if answers.get(label) in (None, "")]
    if missing:
        raise CheckFailed(f"find_bug returned no bug for model{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                          f"return one of {', '.join(sorted(bugs.BUGS))}")
    unknown = {label: choice for label, choice in answers.items() if choice not in bugs.BUGS}
    if unknown:
        label, choice = next(iter(unknown.items()))
        raise CheckFailed(f"find_bug returned {choice!r} for model {label}, which is not one of the bugs; return one "
                          f"of {', '.join(sorted(bugs.BUGS))}")
    repeated = sorted({answers[label] for label in truth if [answers[x] for x in truth].count(answers[label]) > 1})
    if repeated:
        raise CheckFailed(f"each bug is in exactly one model, but find_bug returned {repeated[0]!r} for more than "
                          f"one: " + ", ".join(label for label in truth if answers[label] == repeated[0]))
    if not grade:
        verify_environment()
        print(f"✓ find_bug gives all {len(truth)} models a bug from the list, each bug once; the hidden test grades "
              f"it on other models")
        return
    wrong = [label for label in truth if answers[label] != truth[label]]
    if wrong:
        lines = [f"the model with the bug {truth[label]!r} was named {answers[label]!r}; the diagnostic that finds "
                 f"{truth[label]!r}: {bugs.BUGS[truth[label]][1]}" for label in wrong]
        raise CheckFailed(f"{len(truth) - len(wrong)} of {len(truth)} right. " + "; ".join(lines))
    verify_environment()
    print(f"✓ all {len(truth)} bugs found")


# ---------------------------------------------------------------------------------------------
# Exercise 5: numbers
# ---------------------------------------------------------------------------------------------


_NUMBER_MISTAKES = {
    "max_entropy_1024": [(10.0, "that is log2 1024, in bits; the exercise asks for nats (natural log)")],
    "causal_max_query_9": [(math.log(9), "query 9 is the tenth token: it sees keys 0..9, ten keys, not nine"),
                           (math.log2(10), "that is in bits; use the natural log"),
                           (math.log(1024), "that is the maximum without a causal mask")],
    "leak_test_passes": [(128, "one run per perturbed position, plus the unperturbed run to compare with"),
                         (128 * 128, "one run per perturbed position gives all T outputs at once; no run per "
                                     "(i, j) pair is needed")],
}


def check_diagnostics_numbers(**answers: Any) -> None:
    """max_entropy_1024, causal_max_query_9, leak_test_passes: see the exercise."""
    expected = {"max_entropy_1024": math.log(1024), "causal_max_query_9": math.log(10), "leak_test_passes": 129}
    mistakes = _NUMBER_MISTAKES
    hints = {"max_entropy_1024": "uniform attention over T keys has entropy ln T",
             "causal_max_query_9": "count the keys query 9 may see",
             "leak_test_passes": "a baseline run, then one run with each position changed"}
    check_numbers(answers, expected, tolerance={"max_entropy_1024": 1e-3, "causal_max_query_9": 1e-3},
                  mistakes=mistakes, hints=hints, name="check_diagnostics_numbers",
                  integers=("leak_test_passes",))


# ---------------------------------------------------------------------------------------------
# Exercise 7: ablation verdicts
# ---------------------------------------------------------------------------------------------

_VERDICT_KEYS = ("delta", "se", "verdicts")
_VERDICTS = ("baseline", "worse", "better", "within noise")
_SE = ("se = sigma * sqrt(2 / S), where sigma^2 is the mean over the C configs of each config's sample "
       "variance across its S seeds")


def _verdicts_from(delta: torch.Tensor, se: torch.Tensor, z: float, *, floor: bool = True) -> list[str]:
    """The verdict of each row from its delta and the standard error (se may be one per row)."""
    noise = (z * se).expand_as(delta).tolist() if floor else [0.0] * len(delta)
    return ["baseline"] + ["worse" if d > f else "better" if d < -f else "within noise"
                           for d, f in zip(delta[1:].tolist(), noise[1:])]


def _verdicts_variant(*, delta_sign: int = 1, variance: str = "pooled", se_factor: str = "difference",
                      floor: str = "z_se"):
    """ablation_verdicts with one thing done differently; the defaults are the right computation."""
    def ablation_verdicts(losses, z=2.0):
        S = losses.shape[1]
        means = losses.mean(dim=1)  # (C,)
        delta = delta_sign * (means - means[0])  # (C,)
        if variance == "population":
            per_config = losses.var(dim=1, unbiased=False)  # WRONG: divides by S, not S - 1
        else:
            per_config = losses.var(dim=1, unbiased=True)  # (C,)
        if variance == "per_config":
            sigma = per_config.sqrt()  # WRONG: (C,), each config's own noise, not the pooled one
        elif variance == "without_baseline":
            sigma = per_config[1:].mean().sqrt()  # WRONG: the baseline's seeds left out of the pool
        else:
            sigma = per_config.mean().sqrt()  # ()
        factor = {"difference": math.sqrt(2 / S), "none": 1.0, "one_mean": math.sqrt(1 / S)}[se_factor]
        se = sigma * factor
        if floor == "zero":
            verdicts = _verdicts_from(delta, se, z, floor=False)  # WRONG: any change beyond 0 is called
        elif floor == "se":
            verdicts = _verdicts_from(delta, se, 1.0)  # WRONG: the floor is one se, z is ignored
        else:
            verdicts = _verdicts_from(delta, se, z)
        return {"delta": delta, "se": se, "verdicts": verdicts}
    return ablation_verdicts


VERDICT_MISTAKES = (
    Mistake("no_sqrt_2_over_S",
            "se is sigma itself, the noise of one run; the standard error of a difference of two S-seed means is "
            "sigma * sqrt(2 / S) (each mean has variance sigma^2 / S, and the difference adds two of them)",
            _verdicts_variant(se_factor="none")),
    Mistake("se_of_one_mean",
            "se is sigma / sqrt(S), the standard error of one mean; delta is a difference of two means, each with "
            "variance sigma^2 / S, so se = sigma * sqrt(2 / S)",
            _verdicts_variant(se_factor="one_mean")),
    Mistake("population_variance",
            "the variances divide by S (population variance, unbiased=False); with S seeds and their own mean "
            "estimated, the sample variance divides by S - 1 (torch's default, unbiased=True)",
            _verdicts_variant(variance="population")),
    Mistake("per_config_variance",
            "each config is judged against its own seed variance (se has one value per config); pool the noise: "
            "sigma^2 is the mean of the C configs' sample variances, one se for the whole table",
            _verdicts_variant(variance="per_config")),
    Mistake("pooled_without_baseline",
            "the baseline's seeds are left out of the pooled variance; the baseline was trained on the same seeds "
            "and its spread is noise too: average the sample variances of all C rows, the baseline's included",
            _verdicts_variant(variance="without_baseline")),
    Mistake("sign_flipped",
            "delta has the wrong sign (baseline minus config): delta_c = mean L(c) - mean L(baseline), so a config "
            "with a higher loss than the baseline has delta > 0 and is 'worse'",
            _verdicts_variant(delta_sign=-1)),
    Mistake("no_noise_floor",
            "delta is compared with 0, not with the noise floor: every change but an exact tie is called worse or "
            "better; a change counts only where |delta| > z * se, otherwise it is 'within noise'",
            _verdicts_variant(floor="zero")),
    Mistake("floor_without_z",
            "the noise floor is one se; it is z * se (z = 2 by default, the argument z when given): a change is "
            "'worse' only when delta > z * se",
            _verdicts_variant(floor="se")),
)


def _ablation_losses(gen: torch.Generator, C: int, S: int, z: float, multiples: list[float], dtype: torch.dtype,
                     *, control: bool) -> torch.Tensor:
    """(C, S) losses around 2.1 nats, every row with a spread of its own, whose row means lie at
    `multiples` times the table's own noise floor z * se from the baseline's (row 0). With `control`,
    row 1 repeats the baseline's losses exactly (a config that changes nothing: delta exactly 0)."""
    scale = torch.linspace(0.5, 1.5, C, dtype=torch.float64)[torch.randperm(C, generator=gen)]  # (C,)
    noise = torch.randn(C, S, generator=gen, dtype=torch.float64) * 0.04 * scale[:, None]  # (C, S)
    noise = noise - noise.mean(dim=1, keepdim=True)  # each row's deviations from its own mean
    if control:
        noise[1] = noise[0]
    floor = z * float(noise.var(dim=1).mean().sqrt()) * math.sqrt(2 / S)
    offsets = torch.tensor(multiples[:C], dtype=torch.float64) * floor  # (C,)
    return (2.1 + offsets[:, None] + noise).to(dtype)  # (C, S)


# Each row's delta as a multiple of the noise floor. Far: clearly worse or better, and rows within noise
# at 0.15 and -0.6 floors (called by a test against 0, and by a floor of one se when z > 1.7). Near: a
# control row equal to the baseline, rows 4 % either side of the floor, and one well inside it.
_FAR = [0.0, 3.0, 0.15, -0.6, -2.5, 1.8, 0.4, -1.3]
_NEAR = [0.0, 0.0, 0.96, -1.04, 0.45, 1.04, -0.96, 2.2]


def check_ablation_verdicts(fn: Any, *, seed: int = 0, C: int = 5, S: int = 3, z: float = 2.0,
                            dtype: torch.dtype = torch.float32) -> None:
    """ablation_verdicts(losses, z) -> {"delta": (C,), "se": a number, "verdicts": C strings}, losses (C, S)."""
    if not (4 <= C <= len(_FAR) and S >= 3 and z >= 1.7):
        raise ValueError(f"check_ablation_verdicts: needs 4 <= C <= {len(_FAR)}, S >= 3 (with S = 2, sqrt(2 / S) = 1 "
                         f"and a missing factor cannot show) and z >= 1.7; got C={C}, S={S}, z={z}")
    verify_environment()
    gen = torch.Generator().manual_seed(seed)
    sizes = {"C": C, "S": S}
    names = ("losses", "z")
    cases = [Case((_ablation_losses(gen, C, S, z, _FAR, dtype, control=False), z), sizes, names,
                  "changes far from the noise floor, and two within it"),
             Case((_ablation_losses(gen, C, S, z, _NEAR, dtype, control=True), z), sizes, names,
                  "a control row equal to the baseline, and rows just inside and just outside the noise floor")]
    for case in cases:
        expected = ref.ablation_verdicts(*case.args)
        got = call_learner(fn, "ablation_verdicts", case, FORBIDDEN["ex7"])
        problem = _verdicts_problem(got, expected, case)
        if problem is None:
            continue
        where = f"ablation_verdicts ({case.note})"
        for mistake in VERDICT_MISTAKES:
            try:
                wrong = mistake.impl(*case.args)
            except Exception:  # a mistake that cannot run on this case cannot match it
                continue
            if _verdicts_problem(got, wrong, case) is None:
                raise CheckFailed(f"{where}: {mistake.message}")
        symptom = _verdicts_symptom(got, expected, case)
        raise CheckFailed(f"{where}: {symptom or problem} [inputs: {case.describe_inputs()}]")
    verify_environment()
    print(f"✓ ablation_verdicts: matches the reference on all {len(cases)} tables")


def _as_se(value: Any, like: torch.Tensor) -> Any:
    """One number, however given, in the losses' dtype: a Python number, or a 0-d floating tensor of any
    dtype (the statement asks for a number, not for a dtype); anything else is left to compare."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=like.dtype)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
        return value.detach().cpu().to(like.dtype)
    return value


def _verdicts_problem(got: Any, expected: dict, case: Case) -> str | None:
    """None when got has expected's delta (within the course's tolerance), se and verdicts, else what differs."""
    if not isinstance(got, Mapping):
        return (f"ablation_verdicts should return a dict with the keys 'delta', 'se' and 'verdicts'; it returned "
                f"a {type(got).__name__}")
    if set(got) != set(_VERDICT_KEYS):
        return f"the dict should have the keys 'delta', 'se' and 'verdicts'; it has {sorted(map(str, got))}"
    losses = case.args[0]
    problem = compare(got["delta"], expected["delta"], ("delta",), case.sizes, "ablation_verdicts")
    if problem:
        return problem
    se = _as_se(got["se"], losses)
    if isinstance(se, torch.Tensor) and se.shape != expected["se"].shape:
        if isinstance(expected["se"], torch.Tensor) and expected["se"].dim() == 0:
            return (f"se has shape {tuple(se.shape)}; expected one number for the whole table (a float or a 0-d "
                    f"tensor): the noise is pooled over every config")
    problem = compare(se, expected["se"], ("se",), case.sizes, "ablation_verdicts")
    if problem:
        return problem
    verdicts = got["verdicts"]
    if not isinstance(verdicts, (list, tuple)) or len(verdicts) != len(expected["verdicts"]):
        kind = type(verdicts).__name__ + (f" of length {len(verdicts)}" if isinstance(verdicts, (list, tuple)) else "")
        return f"verdicts should be a list of C = {len(expected['verdicts'])} strings, one per config; it is a {kind}"
    for c, (g, e) in enumerate(zip(verdicts, expected["verdicts"])):
        if g != e:
            return f"verdicts[{c}] is {g!r} where {e!r} was expected"
    return None


def _verdicts_symptom(got: Any, expected: dict, case: Case) -> str | None:
    """The first wrong part of a well-formed answer, said in terms of the formula."""
    if not (isinstance(got, Mapping) and set(got) == set(_VERDICT_KEYS)):
        return None
    losses, z = case.args
    delta = got["delta"]
    if isinstance(delta, torch.Tensor) and delta.shape == expected["delta"].shape:
        d = delta.detach().cpu().double()
        if not torch.isfinite(d).all():
            return "delta contains NaN or infinity; the losses are finite, so every mean and difference is"
        if float(d[0].abs()) > 1e-6:
            return (f"delta[0] is {float(d[0]):.4g}; the baseline against itself is 0: delta_c = mean over seeds of "
                    f"L(c, s) minus the baseline's mean (row 0)")
        if compare(delta, expected["delta"], ("delta",), case.sizes, "ablation_verdicts"):
            return ("delta is not each config's mean loss minus the baseline's: delta_c = mean over the S seeds of "
                    "L(c, s) - mean over the S seeds of L(baseline, s), the seeds along dim 1")
    se = _as_se(got["se"], losses)
    if isinstance(se, torch.Tensor) and se.shape == expected["se"].shape and compare(
            se, expected["se"], ("se",), case.sizes, "ablation_verdicts"):
        g, e = float(se.detach().cpu()), float(expected["se"])
        return f"se is {g:.4g}, expected {e:.4g} ({g / e:.3g} times it); {_SE}"
    verdicts = got["verdicts"]
    if isinstance(verdicts, (list, tuple)) and len(verdicts) == len(expected["verdicts"]):
        unknown = [v for v in verdicts if v not in _VERDICTS]
        if unknown:
            return (f"{unknown[0]!r} is not a verdict; each is one of {', '.join(map(repr, _VERDICTS))} "
                    f"('baseline' for row 0 only)")
        if verdicts[0] != "baseline":
            return f"verdicts[0] is {verdicts[0]!r}; row 0 is the baseline itself: its verdict is 'baseline'"
        floor = z * float(expected["se"])
        for c, (g, e) in enumerate(zip(verdicts, expected["verdicts"])):
            if g != e:
                d = float(expected["delta"][c])
                return (f"config {c} has delta = {d:+.4g} against a noise floor z * se = {floor:.4g} (z = {z}): "
                        f"expected {e!r}, got {g!r}; 'worse' when delta > z * se, 'better' when delta < -z * se, "
                        f"else 'within noise'")
    return None


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

PROBES = {"future_leaks": LEAK_PROBES, "attention_entropy": ENTROPY_PROBES, "update_ratios": RATIO_PROBES}

MISTAKES = {
    "future_leaks": LEAK_MISTAKES,
    "attention_entropy": ENTROPY_MISTAKES,
    "update_ratios": RATIO_MISTAKES,
    "ablation_verdicts": VERDICT_MISTAKES,
}


protect(ref, bugs, sys.modules[__name__])
