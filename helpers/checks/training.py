"""Checks for chapter 08 (training signals) and their mistakes.

Each `check_*` takes the learner's function, calls it on generated inputs and raises `CheckFailed`
with one sentence when something is wrong. Keyword arguments choose other seeds, dtypes and axis
sizes: the visible tests use the defaults, the hidden tests use others.

Answers write the losses themselves from log_softmax / logsumexp and indexing: they may not call
`helpers.training` (the reference), `F.cross_entropy`, `F.nll_loss` or torch's loss modules.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import training as ref
from ..blocks import ModelConfig, TinyDecoder
from .core import Case, CheckFailed, Mistake, call_learner, check_function, check_numbers, protect, verify_environment
from .core import randn as _randn

__all__ = [
    "MISTAKES",
    "check_lm_loss",
    "check_mlm_mask",
    "check_padding_labels",
    "check_teacher_forcing_inputs",
    "check_tie_weights",
    "check_training_numbers",
    "NUMBERS",
]

_REFERENCE = (ref,)
_TORCH_LOSSES = (F.cross_entropy, F.nll_loss, nn.CrossEntropyLoss.forward, nn.NLLLoss.forward)
# What each exercise forbids, for the instructor's pre-grading scan (helpers/grading/scan.py).
FORBIDDEN_BY_EXERCISE = {"ex1": _TORCH_LOSSES}

IGNORE = -100


# ---------------------------------------------------------------------------------------------
# The catalogue: each mistake is a complete, runnable wrong answer
# ---------------------------------------------------------------------------------------------


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


def _tie_copy(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.detach().clone())  # WRONG: a copy


def _tie_copy_values(model):
    with torch.no_grad():
        model.lm_head.weight.copy_(model.tok_emb.weight)  # WRONG: equal values, separate storage


def _tie_new_parameter(model):
    model.lm_head.weight = nn.Parameter(model.tok_emb.weight.data)  # WRONG: same storage, a second Parameter


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
)

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

MISTAKES = {
    "lm_loss": LM_LOSS_MISTAKES,
    "padding_labels": PADDING_LABEL_MISTAKES,
    "mlm_mask": MLM_MISTAKES,
    "teacher_forcing_inputs": TEACHER_FORCING_MISTAKES,
    "tie_weights": TIE_MISTAKES,
}


# ---------------------------------------------------------------------------------------------
# Exercise 1: the next-token loss
# ---------------------------------------------------------------------------------------------


def _ids(gen: torch.Generator, B: int, T: int, V: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=gen)


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
                   mistakes=LM_LOSS_MISTAKES, forbidden=_REFERENCE + _TORCH_LOSSES)


# ---------------------------------------------------------------------------------------------
# Exercise 2: masked-LM masking
# ---------------------------------------------------------------------------------------------


class _Reseeded:
    """A function of (ids, mask_id, vocab_size, generator) called with a fresh generator seeded like the
    given one (its initial seed), so the reference, the learner and each catalogued mistake draw the
    same numbers and none of them uses up the learner's generator."""

    def __init__(self, impl: Callable) -> None:
        self.impl = impl

    def __call__(self, ids, mask_id, vocab_size, generator):
        return self.impl(ids, mask_id, vocab_size, torch.Generator().manual_seed(generator.initial_seed()))


_SEEDED_MLM_MISTAKES = tuple(Mistake(m.key, m.message, _Reseeded(m.impl)) for m in MLM_MISTAKES)


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
    got = call_learner(fn, "mlm_mask", stats_case, _REFERENCE)
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(isinstance(t, torch.Tensor) for t in got):
        raise CheckFailed(f"mlm_mask should return a tuple (inputs, labels) of tensors; it returned a "
                          f"{type(got).__name__}")
    if got[0].shape != big.shape or got[1].shape != big.shape:
        raise CheckFailed(f"mlm_mask: inputs and labels must have the shape of ids (B, T) = {tuple(big.shape)}; got "
                          f"{tuple(got[0].shape)} and {tuple(got[1].shape)}")
    problem = _mlm_statistics(got, big, mask_id)
    mistake_outputs = [(m, m.impl(big, mask_id, V, torch.Generator().manual_seed(seed + 1))) for m in MLM_MISTAKES]
    for mistake, wrong in mistake_outputs:
        if torch.equal(got[0], wrong[0]) and torch.equal(got[1], wrong[1]):
            raise CheckFailed(f"mlm_mask: {mistake.message}")
    if problem:
        raise CheckFailed(f"mlm_mask ({stats_case.note}): {problem}")

    def diagnose(got_: Any, expected: Any, case: Case) -> str | None:
        return ("the statistics are right but the values differ for this seed: draw u = torch.rand(ids.shape, "
                "generator=generator), then r = torch.rand(...), then torch.randint(0, vocab_size, ids.shape, "
                "generator=generator), in that order, and select where u < 0.15, mask where r < 0.8, random "
                "where 0.8 <= r < 0.9")

    cases = [Case((ids, mask_id, V, torch.Generator().manual_seed(s)), sizes,
                  ("ids", "mask_id", "vocab_size", "generator"), f"generator seeded with {s}")
             for s in (seed + 2, seed + 3)]
    check_function(fn, name="mlm_mask", reference=_Reseeded(ref.mlm_mask), cases=cases,
                   outputs=("inputs", "labels"), mistakes=_SEEDED_MLM_MISTAKES, forbidden=_REFERENCE,
                   diagnose=diagnose)


# ---------------------------------------------------------------------------------------------
# Exercise 3: teacher forcing
# ---------------------------------------------------------------------------------------------


def check_teacher_forcing_inputs(fn: Any, *, seed: int = 0, B: int = 3, T: int = 6, V: int = 20) -> None:
    """teacher_forcing_inputs(targets, bos_id): targets (B, T) -> inputs (B, T)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {"B": B, "T": T}
    cases = [Case((_ids(gen, B, T, V - 1), V - 1), sizes, ("targets", "bos_id")),
             Case((_ids(gen, B + 1, 1, V - 1), V - 1), {"B": B + 1, "T": 1}, ("targets", "bos_id"),
                  "T = 1: the only input is BOS")]
    check_function(fn, name="teacher_forcing_inputs", reference=ref.teacher_forcing_inputs, cases=cases,
                   outputs=("inputs",), mistakes=TEACHER_FORCING_MISTAKES, forbidden=_REFERENCE)


# ---------------------------------------------------------------------------------------------
# Exercise 4: weight tying
# ---------------------------------------------------------------------------------------------


def _untied_model(seed: int, V: int, d_model: int) -> TinyDecoder:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyDecoder(ModelConfig(vocab_size=V, d_model=d_model, n_heads=2, n_layers=1, max_seq_len=16,
                                       tie_weights=False))


def check_tie_weights(fn: Any, *, seed: int = 0, V: int = 37, d_model: int = 16) -> None:
    """tie_weights(model): make model.lm_head use model.tok_emb's weight, in place."""
    model = _untied_model(seed, V, d_model)
    before, original_head = ref.param_count(model), model.lm_head.weight
    call_learner(fn, "tie_weights", Case((model,), {}, ("model",)), _REFERENCE)
    head, emb = model.lm_head.weight, model.tok_emb.weight
    if head is emb:
        saved = before - ref.param_count(model)
        if saved != V * d_model:
            raise CheckFailed(f"tie_weights: the parameter count dropped by {saved}; tying saves exactly "
                              f"V x d_model = {V * d_model}")
        ids = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(seed))
        ref.lm_loss(model(ids), ids).backward()
        if head.grad is None:
            raise CheckFailed("tie_weights: the shared weight gets no gradient; keep it an nn.Parameter")
        print(f"✓ tie_weights: one Parameter, shared storage, {V * d_model} parameters saved")
        return

    def kind(m: TinyDecoder, original: torch.Tensor) -> tuple[bool, bool, bool]:
        h, e = m.lm_head.weight, m.tok_emb.weight
        return h.data_ptr() == e.data_ptr(), h is original, isinstance(h, nn.Parameter)

    for mistake in TIE_MISTAKES:
        twin = _untied_model(seed, V, d_model)
        twin_original = twin.lm_head.weight
        mistake.impl(twin)
        if kind(twin, twin_original) == kind(model, original_head) and head.shape == emb.shape \
                and torch.equal(head.detach(), twin.lm_head.weight.detach()):
            raise CheckFailed(f"tie_weights: {mistake.message}")
    if head.shape != emb.shape:
        raise CheckFailed(f"tie_weights: the head's weight has shape {tuple(head.shape)}; it must be the embedding's "
                          f"(V, d_model) = {tuple(emb.shape)} itself")
    raise CheckFailed("tie_weights: model.lm_head.weight is not model.tok_emb.weight; assign the embedding's "
                      "Parameter to the head: model.lm_head.weight = model.tok_emb.weight")


# ---------------------------------------------------------------------------------------------
# Exercise 6: labels that agree with the attention mask
# ---------------------------------------------------------------------------------------------


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
                   mistakes=PADDING_LABEL_MISTAKES, forbidden=_REFERENCE)


# ---------------------------------------------------------------------------------------------
# Exercise 5: numbers
# ---------------------------------------------------------------------------------------------

# GPT-2 small: V = 50257, d_model = 768; a 512-token vocabulary; BERT's masking of a 32 x 128 batch.
NUMBERS = MappingProxyType({"V_gpt2": 50257, "d_gpt2": 768, "V_small": 512, "B_mlm": 32, "T_mlm": 128})


def check_training_numbers(**answers: Any) -> None:
    """saved_gpt2, initial_loss, random_tokens: see the exercise."""
    n = NUMBERS
    tokens = n["B_mlm"] * n["T_mlm"]
    expected = {"saved_gpt2": n["V_gpt2"] * n["d_gpt2"], "initial_loss": math.log(n["V_small"]),
                "random_tokens": tokens * 0.15 * 0.1}
    mistakes = {
        "saved_gpt2": [(2 * n["V_gpt2"] * n["d_gpt2"], "tying removes one (V, d_model) matrix, not two"),
                       (n["V_gpt2"] * n["d_gpt2"] * 4, "that is bytes in float32; the question asks for parameters")],
        "initial_loss": [(math.log2(n["V_small"]), "that is log base 2 (bits); the loss uses the natural log (nats)"),
                         (1 / n["V_small"], "that is the probability of each token; the loss is -log of it")],
        "random_tokens": [(tokens * 0.15, "that counts every selected position; only 10 % of them get a random token"),
                          (tokens * 0.15 * 0.8, "that counts the mask tokens (80 %); random tokens are 10 %"),
                          (tokens * 0.1, "10 % of the selected positions, not of all positions: multiply by 0.15 too")],
    }
    hints = {"saved_gpt2": "one matrix of V x d_model numbers is shared",
             "initial_loss": "a fresh model spreads probability evenly over the vocabulary",
             "random_tokens": "B x T positions, 15 % selected, 10 % of those random"}
    check_numbers(answers, expected, tolerance={"initial_loss": 1e-3, "random_tokens": 1e-6}, mistakes=mistakes,
                  hints=hints, name="check_training_numbers", integers=("saved_gpt2",))


protect(ref, sys.modules[__name__])
