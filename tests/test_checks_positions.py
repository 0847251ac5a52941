"""Chapter 06's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, and refuse the reference."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import helpers.checks.positions as checks
import helpers.positions as reference
from helpers.attention import scaled_dot_product_attention
from helpers.checks import CheckFailed

from . import loops_positions as loops
from .hidden import hidden_inputs

CHECKS = {
    "sinusoidal_table": checks.check_sinusoidal_table,
    "add_positions": checks.check_add_positions,
    "apply_rope": checks.check_apply_rope,
    "rope_attention": checks.check_rope_attention,
    "relative_offset_holds": checks.check_relative_offset_test,
    "alibi_bias": checks.check_alibi_bias,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("positions", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "sinusoidal_table": {"sin_cos_swapped", "exponent_i_over_d", "offset_plus_one"},
    "add_positions": {"positions_after_attention"},
    "apply_rope": {"interleaved_layout", "offset_plus_one", "offset_minus_one"},
    "rope_attention": {"rope_on_v", "rope_after_scores", "q_offset_plus_one"},
    "alibi_bias": {"sign_flipped", "slopes_reversed"},
}


# ------------------------------------------------------------------------------------------------
# Answers written in other correct ways are accepted
# ------------------------------------------------------------------------------------------------


def table_float32(T, d_model, offset=0):
    """Everything in float32, the usual vectorised code (exp of a log): right near the start only."""
    position = torch.arange(offset, offset + T, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(T, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


def table_float64_angles(T, d_model, offset=0):
    """The usual vectorised code (exp of a log), in float64, converted at the end."""
    position = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(T, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe.float()


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_float32_angles_fail_the_tables_own_check(variant):
    """float32 angles are right near the start (the old cases reached offset 29) and off far out."""
    kwargs = HIDDEN["sinusoidal_table"] if variant == "hidden" else {}
    with pytest.raises(CheckFailed, match=r"offset = \d+, far into a long context\): the angles p \* w_i are "
                                          r"computed in float32.*compute the positions, the frequencies and the angles "
                                          r"in float64"):
        checks.check_sinusoidal_table(table_float32, **kwargs)


def rope_complex(x, offset=0):
    """Complex multiplication on the (k, k + d/2) pairs."""
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    angles = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64, device=x.device)[:, None] * theta
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def rope_attention_with_helpers(q, k, v):
    start = k.shape[-2] - q.shape[-2]
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril(start)
    return scaled_dot_product_attention(reference.apply_rope(q, start), reference.apply_rope(k), v, mask)


def relative_offset_holds_vectorised(rope, d_head):
    q, k = torch.randn(1, d_head, dtype=torch.float64), torch.randn(1, d_head, dtype=torch.float64)
    positions = range(0, 48, 3)  # far enough apart to see what happens past small positions
    m = torch.tensor([[(rope(q, a) * rope(k, b)).sum().item() for b in positions] for a in positions])
    return all(torch.allclose(m.diagonal(off), m.diagonal(off)[:1].expand(len(m.diagonal(off))))
               for off in range(-len(m) + 1, len(m)))


def alibi_with_slopes_helper(n_heads, T):
    slopes = reference.alibi_slopes(n_heads).float()  # the slopes are not the exercise: only the bias is
    d = (torch.arange(T)[None, :] - torch.arange(T)[:, None]).abs().float()
    return -slopes[:, None, None] * d


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_other_correct_answers_pass(variant, capsys):
    def kw(name):
        return HIDDEN[name] if variant == "hidden" else {}

    checks.check_sinusoidal_table(table_float64_angles, **kw("sinusoidal_table"))
    checks.check_apply_rope(rope_complex, **kw("apply_rope"))
    checks.check_rope_attention(rope_attention_with_helpers, **kw("rope_attention"))
    checks.check_relative_offset_test(relative_offset_holds_vectorised, **kw("relative_offset_holds"))
    checks.check_relative_offset_test(lambda rope, d: np.bool_(loops.relative_offset_holds(rope, d)))
    checks.check_add_positions(lambda x, attn, offset=0: attn(x + reference.sinusoidal_table(
        x.shape[1], x.shape[2], offset=offset, dtype=x.dtype)), **kw("add_positions"))
    assert capsys.readouterr().out.count("✓") == 6


def test_alibi_slopes_from_the_reference_are_refused_in_the_bias_exercise():
    """The exercise asks for the slopes too: calling helpers.positions is refused."""
    with pytest.raises(CheckFailed, match="calls helpers.positions.alibi_slopes"):
        checks.check_alibi_bias(alibi_with_slopes_helper)


# ------------------------------------------------------------------------------------------------
# Shapes, symptoms and messages
# ------------------------------------------------------------------------------------------------


def test_wrong_shape_is_reported_with_axis_names():
    with pytest.raises(CheckFailed, match=re.escape("table has shape (d_model, T) = (8, 6); expected (T, d_model) = (6, 8)")):
        checks.check_sinusoidal_table(lambda T, d, offset=0: loops.sinusoidal_table(T, d, offset).T)


def test_float64_table_is_told_to_keep_float32():
    with pytest.raises(CheckFailed, match="dtype torch.float64; expected torch.float32"):
        checks.check_sinusoidal_table(lambda T, d, offset=0: loops.sinusoidal_table(T, d, offset).double())


def test_relative_test_must_return_a_bool():
    with pytest.raises(CheckFailed, match="should return True or False; it returned str"):
        checks.check_relative_offset_test(lambda rope, d: "yes")


def _weak_test(*, positions=(0, 1, 2), offsets=(1,), same_vector=False):
    """A property test that compares scores at equal offsets, but only where it looks."""
    def test(rope, d_head):
        q = torch.randn(1, d_head, dtype=torch.float64)
        k = q if same_vector else torch.randn(1, d_head, dtype=torch.float64)
        for delta in offsets:
            scores = [(rope(q, n + delta) * rope(k, n)).sum() for n in positions if n + delta >= 0]
            if not all(torch.allclose(s, scores[0]) for s in scores):
                return False
        return True
    return test


@pytest.mark.parametrize("weak, decoy", [
    (_weak_test(), "positions stop at 8"),  # positions 0 .. 2, offset 1: the issue's test
    (_weak_test(positions=range(8), offsets=(1, 2, -1)), "positions stop at 8"),
    (_weak_test(positions=(3, 11, 40), offsets=(1, -1, 3)), "right at odd offsets"),
    (_weak_test(positions=(3, 11, 40), offsets=(0, 1, 5, -3), same_vector=True), "turns the other way"),
], ids=["small-one-offset", "below-8", "odd-offsets", "q-equals-k"])
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_a_test_that_looks_only_where_it_is_easy_fails(weak, decoy, variant):
    """Decoys right only at small positions, at one kind of offset, or to a test with q = k."""
    torch.manual_seed(0)
    kwargs = HIDDEN["relative_offset_holds"] if variant == "hidden" else {}
    with pytest.raises(CheckFailed, match=rf"returned True for .*{decoy}|looks only at small positions|"
                                          rf"uses one vector as both q and k"):
        checks.check_relative_offset_test(weak, **kwargs)


def test_an_unknown_wrong_verdict_names_the_candidate():
    def only_rotations(rope, d_head):  # refuses the function that ignores positions
        x = torch.randn(1, d_head, dtype=torch.float64)
        return loops.relative_offset_holds(rope, d_head) and not torch.allclose(rope(x, 5), x)

    with pytest.raises(CheckFailed, match="returned False for a function that ignores the position"):
        checks.check_relative_offset_test(only_rotations)


def test_rope_attention_note_names_the_case():
    wrong = next(m for m in checks.ROPE_ATTENTION_MISTAKES if m.key == "mask_not_shifted")
    with pytest.raises(CheckFailed, match=r"rope_attention \(T_q = 3: the last 3 tokens"):
        checks.check_rope_attention(wrong.impl)


# ------------------------------------------------------------------------------------------------
# Cheats
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check, answer", [
    ("sinusoidal_table", lambda T, d, offset=0: reference.sinusoidal_table(T, d, offset=offset)),
    ("apply_rope", lambda x, offset=0: reference.apply_rope(x, offset)),
    ("apply_rope", lambda x, offset=0: reference.RotaryEmbedding(x.shape[-1])(x, offset)),
    ("alibi_bias", lambda H, T: reference.alibi_bias(reference.alibi_slopes(H), torch.arange(T), torch.arange(T))),
    ("relative_offset_holds", lambda rope, d: checks._mistaken_test("always_true")(rope, d)),
], ids=["table", "rope", "rope-module", "alibi", "checks-internals"])
def test_answers_calling_the_reference_are_refused(check, answer):
    with pytest.raises(CheckFailed, match="calls"):
        CHECKS[check](answer)


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [("apply_rope", reference.apply_rope)]


def test_hard_coded_visible_answers_fail_hidden_inputs():
    memory = {}

    def record_then_replay(T, d, offset=0):
        return memory.setdefault((T, d), loops.sinusoidal_table(T, d, offset))

    with pytest.raises(CheckFailed):  # the visible offset case has the same shape, other rows
        checks.check_sinusoidal_table(record_then_replay)
    table = {(H, 5): loops.alibi_bias(H, 5) for H in (4, 6)}
    checks.check_alibi_bias(lambda H, T: table[H, T])
    with pytest.raises(CheckFailed, match="KeyError"):
        checks.check_alibi_bias(lambda H, T: table[H, T], **HIDDEN["alibi_bias"])


# ------------------------------------------------------------------------------------------------
# Numeric answers
# ------------------------------------------------------------------------------------------------


def right_numbers():
    wavelength = 2 * math.pi * 10000 ** (2 * 8 / 64)
    return {"wavelength_pair": wavelength, "turn_position": math.ceil(wavelength),
            "llama3_longest_wavelength": 2 * math.pi * 500000 ** (126 / 128)}


def test_numbers_right(capsys):
    answers = right_numbers()
    assert answers["turn_position"] == 63 and round(answers["wavelength_pair"], 2) == 62.83
    checks.check_rope_numbers(**answers)
    checks.check_rope_numbers(**{**answers, "wavelength_pair": 62.83, "llama3_longest_wavelength": 2.559e6})
    assert capsys.readouterr().out.count("✓") == 2


def test_numbers_name_each_known_wrong_value():
    answers = right_numbers()
    _, wrong = checks._numbers()
    for key, values in wrong.items():
        for value, message in values:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_rope_numbers(**{**answers, key: value})


def test_numbers_need_every_answer():
    answers = right_numbers()
    del answers["turn_position"]
    with pytest.raises(CheckFailed, match="needs an answer for turn_position"):
        checks.check_rope_numbers(**answers)


def _rope_for_4d_only(x, offset=0):
    B, H, T, d = x.shape  # WRONG: the exercise's x is (..., T, d_head)
    angles = torch.arange(offset, offset + T, dtype=torch.float64, device=x.device)[:, None] * 10000.0 ** (
        -torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_rope_for_4d_input_only_is_told_to_index_from_the_end(variant):
    """Issue 31: a raw unpacking (or IndexError) error; the message names the cause and the fix."""
    kwargs = HIDDEN["apply_rope"] if variant == "hidden" else {}
    with pytest.raises(CheckFailed, match=r"^apply_rope handles x \(B, H, T, d_head\) only: on x \(T, d_head\) it "
                                          r"raised ValueError: .*read the sizes from the end"):
        checks.check_apply_rope(_rope_for_4d_only, **kwargs)
