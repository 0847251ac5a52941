"""Chapter 09's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, refuse the reference and torch.special.entr, and grade the bug hunt."""

from __future__ import annotations

import math

import pytest
import torch

import helpers.checks.diagnostics as checks
from helpers import bugs
from helpers.checks import CheckFailed

from . import loops_diagnostics as loops

# Tiny models: one torch thread is several times faster on a busy 2-core CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")

CHECKS = {
    "future_leaks": checks.check_future_leaks,
    "attention_entropy": checks.check_attention_entropy,
    "update_ratios": checks.check_update_ratios,
}

# The variants the hidden tests of the exercise notebook use: other seeds, sizes and dtypes.
HIDDEN = {
    "future_leaks": {"seed": 5, "B": 3, "T": 9, "V": 11, "dtype": torch.float64},
    "attention_entropy": {"seed": 5, "B": 3, "H": 2, "T_q": 4, "T_k": 9, "dtype": torch.float64},
    "update_ratios": {"seed": 5, "L": 4, "B": 3, "T": 6, "d_model": 9, "dtype": torch.float64},
}


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_check_accepts_an_independent_correct_answer(name, variant, capsys):
    CHECKS[name](getattr(loops, name), **(HIDDEN[name] if variant == "hidden" else {}))
    assert "✓" in capsys.readouterr().out


def test_chapter_catalogue_covers_the_issue_list():
    keys = {name: {m.key for m in catalogue} for name, catalogue in checks.MISTAKES.items()}
    assert {"last_token_only", "exact_equality", "after_not_before"} <= keys["future_leaks"]
    assert {"bits", "query_axis"} <= keys["attention_entropy"]
    assert {"norm_over_T"} <= keys["update_ratios"]


def entropy_with_xlogy(weights):
    return -torch.special.xlogy(weights, weights).sum(-1)


def ratios_with_linalg(stream):
    delta = torch.linalg.vector_norm(stream.diff(dim=0), dim=-1)
    return (delta / torch.linalg.vector_norm(stream[:-1], dim=-1)).flatten(1).mean(-1)


def leaks_with_isclose(f, ids, vocab_size):
    T = ids.shape[1]
    base = f(ids)
    out = torch.zeros(T, T, dtype=torch.bool)
    for j in range(T):
        x = ids.clone()
        x[:, j] = (x[:, j] + 1) % vocab_size
        moved = ~torch.isclose(f(x), base, rtol=1e-5, atol=1e-6 * float(base.abs().max()))
        out[:, j] = moved.reshape(*moved.shape[:2], -1).any(-1).any(0) & (torch.arange(T) < j)
    return out


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_other_correct_answers_pass(variant, capsys):
    kw = (lambda n: HIDDEN[n]) if variant == "hidden" else (lambda n: {})
    checks.check_attention_entropy(entropy_with_xlogy, **kw("attention_entropy"))
    checks.check_update_ratios(ratios_with_linalg, **kw("update_ratios"))
    checks.check_future_leaks(leaks_with_isclose, **kw("future_leaks"))
    assert capsys.readouterr().out.count("✓") == 3


def test_reference_and_torch_entr_are_refused():
    from helpers.diagnostics import attention_entropy, update_ratios

    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_attention_entropy(attention_entropy)
    with pytest.raises(CheckFailed, match="calls helpers.diagnostics.update_ratios"):
        checks.check_update_ratios(lambda stream: update_ratios(stream))
    with pytest.raises(CheckFailed, match="special_entr"):
        checks.check_attention_entropy(lambda w: torch.special.entr(w).sum(-1))


def test_a_leak_test_that_misses_every_leak_is_told_where():
    with pytest.raises(CheckFailed, match="without its causal mask"):
        checks.check_future_leaks(lambda f, ids, V: torch.zeros(ids.shape[1], ids.shape[1], dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# The bug hunt
# ------------------------------------------------------------------------------------------------


def test_bug_hunt_accepts_the_right_choices(capsys):
    checks.check_bug_hunt(dict(bugs._assignment(0)))
    assert "✓ all 8 bugs found" in capsys.readouterr().out


def test_the_visible_bug_hunt_test_checks_the_form_only(capsys):
    truth = bugs._assignment(0)
    rotated = dict(zip(truth, list(truth.values())[1:] + list(truth.values())[:1]))  # every choice wrong
    checks.check_bug_hunt(rotated, grade=False)
    assert "the hidden test grades the choices" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="more than one"):
        checks.check_bug_hunt({**truth, "A": truth["B"]}, grade=False)
    with pytest.raises(CheckFailed, match="0 of 8 right"):
        checks.check_bug_hunt(rotated)


def test_numbers_accept_the_right_values_and_name_the_known_wrong_ones(capsys):
    right = {"max_entropy_1024": math.log(1024), "causal_max_query_9": math.log(10), "leak_test_passes": 129}
    checks.check_diagnostics_numbers(**right)
    assert "✓" in capsys.readouterr().out
    for key, wrong, message in (("max_entropy_1024", 10, "in bits"), ("causal_max_query_9", math.log(9), "ten keys"),
                                ("leak_test_passes", 128, "plus the unperturbed run")):
        with pytest.raises(CheckFailed, match=message):
            checks.check_diagnostics_numbers(**{**right, key: wrong})


def test_bug_hunt_names_the_diagnostic_for_each_wrong_choice():
    truth = bugs._assignment(0)
    swapped = dict(truth)
    a, b = list(truth)[:2]
    swapped[a], swapped[b] = truth[b], truth[a]
    with pytest.raises(CheckFailed) as info:
        checks.check_bug_hunt(swapped)
    message = str(info.value)
    assert message.startswith("6 of 8 right")
    assert f"model {a} is not {truth[b]!r}" in message and f"model {b} is not {truth[a]!r}" in message
    for label in (a, b):
        assert bugs.BUGS[truth[label]][1] in message  # the diagnostic that finds the real bug


def test_bug_hunt_refuses_missing_and_unknown_choices():
    truth = dict(bugs._assignment(0))
    with pytest.raises(CheckFailed, match="no answer yet for model A"):
        checks.check_bug_hunt({**truth, "A": None})
    with pytest.raises(CheckFailed, match="is not one of the bugs"):
        checks.check_bug_hunt({**truth, "C": "cosmic rays"})
    with pytest.raises(CheckFailed, match="should be a dict"):
        checks.check_bug_hunt(list(truth.values()))
