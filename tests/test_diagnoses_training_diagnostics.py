"""Chapters 08 and 09: the diagnoses that name the first wrong intermediate when neither a catalogued
mistake nor a probe matches, and the probing rule for a scalar loss (a probe is named only when the
learner's loss equals it in value and in gradient, never by nearness of one number)."""

from __future__ import annotations

import pytest
import torch

from helpers.checks import CheckFailed
from helpers.checks import diagnostics as diag_checks
from helpers.checks import training as train_checks


def _message(check, fn, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(fn, **kwargs)
    return str(info.value)


def _loss(logits, ids, ignore_index=-100, *, preds=slice(None, -1), targets=slice(1, None), weight=None, extra=0.0,
          term=lambda z, y: -torch.log_softmax(z, -1).gather(-1, y[..., None])[..., 0], divisor_shift=0):
    z, y = logits[:, preds], ids[:, targets]
    keep = y != ignore_index
    nll = term(z, torch.where(keep, y, torch.zeros_like(y))) * keep
    if weight is not None:
        nll = nll * weight(nll)
    return nll.sum() / (keep.sum() + divisor_shift) + extra


def _no_probe_named(message: str, name: str) -> bool:
    return not [p.key for p in train_checks.PROBES[name] if p.message in message]


@pytest.mark.parametrize("hidden", [False, True])
def test_a_loss_near_a_probe_in_value_is_not_named_as_that_probe(hidden):
    """Dividing by N - 1 lands, on the visible case, within a few per cent of the shift-by-two probe's
    value: one number is too little to tell, so the gradient decides, and it names the divisor."""
    kwargs = train_checks_hidden() if hidden else {}
    message = _message(train_checks.check_lm_loss, lambda z, i, ig=-100: _loss(z, i, divisor_shift=-1), **kwargs)
    assert "divide the sum by N" in message and "you divide by about" in message
    assert _no_probe_named(message, "lm_loss")


def train_checks_hidden():
    from tests.test_checks_training import HIDDEN

    return HIDDEN["lm_loss"]


@pytest.mark.parametrize("wrong, says", [
    (lambda z, i, ig=-100: _loss(z, i, extra=0.1), "off by a constant"),
    (lambda z, i, ig=-100: _loss(z, i, weight=lambda n: torch.linspace(0.5, 1.5, n.shape[1], dtype=n.dtype)),
     "weights that differ from position to position"),
    (lambda z, i, ig=-100: _loss(z, i, term=lambda z_, y: -torch.nn.functional.logsigmoid(
        z_.gather(-1, y[..., None])[..., 0])), "not -log softmax over the vocabulary"),
    (lambda z, i, ig=-100: _loss(z, i, preds=slice(1, None), divisor_shift=-1), "ids[:, t], the token it just read"),
], ids=["constant", "position_weights", "sigmoid", "no_shift_and_divisor"])
def test_lm_loss_gradient_names_the_first_wrong_part(wrong, says):
    message = _message(train_checks.check_lm_loss, wrong)
    assert says in message
    assert _no_probe_named(message, "lm_loss")


def test_lm_loss_names_ignored_targets_that_still_count():
    def mask_from_inputs_token_1(z, i, ig=-100):  # the probes score ignored targets as token 0; this as 1
        keep = i[:, :-1] != ig
        y = torch.where(i[:, 1:] == ig, torch.ones_like(i[:, 1:]), i[:, 1:])
        nll = -torch.log_softmax(z[:, :-1], -1).gather(-1, y[..., None])[..., 0] * keep
        return nll.sum() / keep.sum()

    message = _message(train_checks.check_lm_loss, mask_from_inputs_token_1)
    assert "is ignore_index (-100), still count" in message


def test_mlm_names_the_mask_tokens_when_the_selection_is_right():
    def mask_from_an_extra_draw(ids, mask_id, vocab_size, generator):
        u = torch.rand(ids.shape, generator=generator)
        r = torch.rand(ids.shape, generator=generator)
        r_mask = torch.rand(ids.shape, generator=generator)  # an extra draw for the mask token
        random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
        sel = u < 0.15
        inputs = torch.where(sel & (r_mask < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(sel & (r_mask >= 0.8) & (r < 0.9) & (r >= 0.8), random_ids, inputs)
        return inputs, torch.where(sel, ids, torch.full_like(ids, -100))

    message = _message(train_checks.check_mlm_mask, mask_from_an_extra_draw)
    assert "the mask token goes to other selected positions" in message


def test_mlm_names_the_random_tokens_when_everything_else_is_right():
    def random_ids_transposed(ids, mask_id, vocab_size, generator):
        u = torch.rand(ids.shape, generator=generator)
        r = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(0, vocab_size, ids.shape[::-1], generator=generator).T
        sel = u < 0.15
        inputs = torch.where(sel & (r < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(sel & (r >= 0.8) & (r < 0.9), random_ids, inputs)
        return inputs, torch.where(sel, ids, torch.full_like(ids, -100))

    message = _message(train_checks.check_mlm_mask, random_ids_transposed)
    assert "the random tokens differ" in message and "in that order" not in message


def test_mlm_names_missing_random_tokens():
    def no_random_tokens(ids, mask_id, vocab_size, generator):
        u = torch.rand(ids.shape, generator=generator)
        r = torch.rand(ids.shape, generator=generator)
        torch.randint(0, vocab_size, ids.shape, generator=generator)
        sel = u < 0.15
        inputs = torch.where(sel & (r < 0.8), torch.full_like(ids, mask_id), ids)  # the 10 % random never done
        return inputs, torch.where(sel, ids, torch.full_like(ids, -100))

    message = _message(train_checks.check_mlm_mask, no_random_tokens)
    assert "some random tokens are missing" in message


def test_future_leaks_names_false_leaks_above_the_diagonal():
    def every_future_pair(f, ids, vocab_size):
        T = ids.shape[1]
        return torch.ones(T, T, dtype=torch.bool).triu(1)

    message = _message(diag_checks.check_future_leaks, every_future_pair)
    assert "does not move when token j alone changes" in message


@pytest.mark.parametrize("wrong, says", [
    (lambda w: -(w * torch.where(w > 0, w.log(), torch.zeros((), dtype=w.dtype))).sum(-1) + 0.01,
     "all its weight on one key has entropy 0"),
    (lambda w: -(w * w * torch.where(w > 0, w.log(), torch.zeros((), dtype=w.dtype))).sum(-1),
     "a uniform row over T_k"),
], ids=["plus_constant", "p_squared"])
def test_entropy_names_rows_whose_entropy_is_known(wrong, says):
    message = _message(diag_checks.check_attention_entropy, wrong)
    assert says in message
    assert not [p.key for p in diag_checks.PROBES["attention_entropy"] if p.message in message]
