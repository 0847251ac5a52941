"""Chapter 08's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, and refuse the reference and torch's loss built-ins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import helpers.checks.training as checks
from helpers.checks import CheckFailed

from . import loops_training as loops
from .hidden import hidden_inputs

CHECKS = {
    "lm_loss": checks.check_lm_loss,
    "mlm_mask": checks.check_mlm_mask,
    "teacher_forcing_inputs": checks.check_teacher_forcing_inputs,
    "tie_weights": checks.check_tie_weights,
    "padding_labels": checks.check_padding_labels,
    "loss_curves": checks.check_loss_curves,
}
# Exercise 7's answer, written from the plotted curves (not from helpers.loss_curves.true_labels).
CURVE_NAMES = {"A": "mask_leak", "B": "healthy", "C": "frozen_layers", "D": "no_warmup", "E": "lr_too_high"}
ANSWERS = {"loss_curves": CURVE_NAMES}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("training", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "lm_loss": {"no_shift", "shift_wrong_way", "padded_average", "softmax_twice"},
    "mlm_mask": {"all_mask_token", "labels_everywhere"},
    "tie_weights": {"copy"},
    "loss_curves": {"no_warmup_read_as_lr_too_high", "lr_too_high_read_as_no_warmup", "mask_leak_read_as_healthy",
                    "frozen_layers_read_as_healthy"},
}


# ------------------------------------------------------------------------------------------------
# Other correct answers
# ------------------------------------------------------------------------------------------------


def lm_loss_with_masked_select(logits, ids, ignore_index=-100):
    targets = ids[:, 1:]
    keep = targets != ignore_index
    log_p = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = log_p[keep].gather(-1, targets[keep][:, None])
    return -picked.mean()


def mlm_with_masked_fill(ids, mask_id, vocab_size, generator):
    u = torch.rand(ids.shape, generator=generator)
    r = torch.rand(ids.shape, generator=generator)
    rnd = torch.randint(0, vocab_size, ids.shape, generator=generator)
    sel = u < 0.15
    inputs = ids.masked_fill(sel & (r < 0.8), mask_id)
    inputs = torch.where(sel & (r >= 0.8) & (r < 0.9), rnd, inputs)
    return inputs, ids.masked_fill(~sel, -100)


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_other_correct_answers_pass(variant, capsys):
    kw = (lambda n: HIDDEN[n]) if variant == "hidden" else (lambda n: {})
    checks.check_lm_loss(lm_loss_with_masked_select, **kw("lm_loss"))
    checks.check_mlm_mask(mlm_with_masked_fill, **kw("mlm_mask"))
    checks.check_teacher_forcing_inputs(lambda y, bos: F.pad(y, (1, 0), value=bos)[:, :-1],
                                        **kw("teacher_forcing_inputs"))
    checks.check_tie_weights(lambda model: setattr(model.lm_head, "weight", model.tok_emb.weight), **kw("tie_weights"))
    checks.check_padding_labels(lambda ids, mask: torch.where(mask, ids, -100), **kw("padding_labels"))
    assert capsys.readouterr().out.count("✓") == 5


def test_numbers_accept_the_right_values_and_name_the_known_wrong_ones(capsys):
    checks.check_training_numbers(**loops.NUMBERS)
    assert "✓" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="log base 2"):
        checks.check_training_numbers(**{**loops.NUMBERS, "initial_loss": 9.0})
    with pytest.raises(CheckFailed, match="only 10 % of them"):
        checks.check_training_numbers(**{**loops.NUMBERS, "random_tokens": 32 * 128 * 0.15})
    with pytest.raises(CheckFailed, match="not two"):
        checks.check_training_numbers(**{**loops.NUMBERS, "saved_gpt2": 2 * 50257 * 768})


# ------------------------------------------------------------------------------------------------
# Symptoms, cheats
# ------------------------------------------------------------------------------------------------


def test_mlm_with_other_rates_is_told_the_rate():
    def twenty_percent(ids, mask_id, vocab_size, generator):
        sel = torch.rand(ids.shape, generator=generator) < 0.2
        return ids.masked_fill(sel, mask_id), ids.masked_fill(~sel, -100)

    with pytest.raises(CheckFailed, match="about 15 % should be selected"):
        checks.check_mlm_mask(twenty_percent)


def test_mlm_with_another_draw_order_is_told_the_order():
    def other_order(ids, mask_id, vocab_size, generator):
        r = torch.rand(ids.shape, generator=generator)  # r before u
        u = torch.rand(ids.shape, generator=generator)
        rnd = torch.randint(0, vocab_size, ids.shape, generator=generator)
        sel = u < 0.15
        inputs = torch.where(sel & (r < 0.8), torch.full_like(ids, mask_id), ids)
        inputs = torch.where(sel & (r >= 0.8) & (r < 0.9), rnd, inputs)
        return inputs, ids.masked_fill(~sel, -100)

    with pytest.raises(CheckFailed, match="in that order"):
        checks.check_mlm_mask(other_order)


def test_reference_and_torch_losses_are_refused():
    from helpers.training import lm_loss as reference_lm_loss

    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_lm_loss(reference_lm_loss)

    def with_cross_entropy(logits, ids, ignore_index=-100):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    with pytest.raises(CheckFailed, match="calls torch.nn.functional.cross_entropy"):
        checks.check_lm_loss(with_cross_entropy)


def test_tying_that_replaces_the_head_with_something_else_is_told_to_assign_the_embedding():
    def new_random_head(model):
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.tok_emb.weight))

    with pytest.raises(CheckFailed, match="is not model.tok_emb.weight"):
        checks.check_tie_weights(new_random_head)


# ------------------------------------------------------------------------------------------------
# Exercise 7: naming the loss curves
# ------------------------------------------------------------------------------------------------


def test_curve_names_need_every_label_answered_once_from_the_vocabulary(capsys):
    checks.check_loss_curves(CURVE_NAMES)
    assert "✓ all 5 curves" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="no answer yet for A, C"):
        checks.check_loss_curves({**CURVE_NAMES, "A": None, "C": None})
    with pytest.raises(CheckFailed, match="not one of the fault names"):
        checks.check_loss_curves({**CURVE_NAMES, "E": "lr too high"})
    with pytest.raises(CheckFailed, match="'healthy' is given to A and B"):
        checks.check_loss_curves({**CURVE_NAMES, "A": "healthy"})
    with pytest.raises(CheckFailed, match="labelled A, B, C, D, E"):
        checks.check_loss_curves({**CURVE_NAMES, "F": "healthy"})
    with pytest.raises(CheckFailed, match="must be a dict"):
        checks.check_loss_curves(list(CURVE_NAMES.values()))


def test_an_uncatalogued_curve_confusion_is_told_what_the_curve_shows():
    swapped = {**CURVE_NAMES, "A": "lr_too_high", "E": "mask_leak"}  # leak <-> lr too high: not catalogued
    with pytest.raises(CheckFailed, match=r"curve A is not 'lr_too_high': look again: it ends below the entropy rate"):
        checks.check_loss_curves(swapped)
