"""Chapter 01's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, translate shapes, and refuse the known cheats."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers.attention as reference
import helpers.checks.attention as checks
from helpers.checks import CheckFailed
from helpers.checks.core import verify_environment
from tools.build import ROOT

from . import loops_attention as loops
from .hidden import hidden_inputs

CHECKS = {
    "attention_scores": checks.check_attention_scores,
    "causal_mask": checks.check_causal_mask,
    "apply_mask": checks.check_apply_mask,
    "padding_mask": checks.check_padding_mask,
    "masked_softmax": checks.check_masked_softmax,
    "scaled_dot_product_attention": checks.check_scaled_dot_product_attention,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("attention", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "attention_scores": {"no_scale", "divide_by_dk"},
    "causal_mask": {"diagonal_blocked", "transposed"},
    "masked_softmax": {"softmax_query_axis", "mask_after_softmax", "fill_zero", "inverted_mask", "nan_rows"},
}


def test_mistake_hidden_behind_nan_rows_is_named_first():
    """Inverted mask without zero-row handling gives NaN rows; the feedback names the inversion."""
    def inverted_and_nan(scores, mask):
        return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)

    with pytest.raises(CheckFailed, match=re.escape(checks._M["inverted_mask"])):
        checks.check_masked_softmax(inverted_and_nan)


def test_realistic_query_axis_softmax_with_nan_columns_is_named():
    def query_axis(scores, mask):
        return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-2)

    with pytest.raises(CheckFailed, match=re.escape(checks._M["softmax_query_axis"])):
        checks.check_masked_softmax(query_axis)


def test_unlisted_shape_error_is_translated_into_axis_names():
    def transposed_weights(q, k, v, mask=None):
        out, w = loops.scaled_dot_product_attention(q, k, v, mask)
        return out, w.transpose(-2, -1)

    with pytest.raises(CheckFailed) as info:
        checks.check_scaled_dot_product_attention(transposed_weights)
    assert "weights has shape (B, T_k, T_q) = (2, 7, 5); expected (B, T_q, T_k) = (2, 5, 7)" in str(info.value)


def test_exception_inside_answer_names_the_inputs():
    def broken(q, k, v, mask=None):
        return q @ k  # forgot the transpose

    with pytest.raises(CheckFailed) as info:
        checks.check_scaled_dot_product_attention(broken)
    message = str(info.value)
    assert "raised RuntimeError" in message and "q (B, T_q, d_k) = (2, 5, 11)" in message


def test_symptom_is_reported_for_an_uncatalogued_combination():
    def two_mistakes(scores, mask):  # no zero-row handling and softmax without masking the keys
        return torch.softmax(scores.masked_fill(~mask, 0.0) * 2, dim=-1)

    with pytest.raises(CheckFailed, match="nonzero at blocked positions"):
        checks.check_masked_softmax(two_mistakes)


def test_wrong_dtype_and_wrong_type_are_explained():
    with pytest.raises(CheckFailed, match=r"dtype torch.float32; expected torch.float64 \(keep the input's dtype\)"):
        checks.check_attention_scores(lambda q, k: loops.attention_scores(q, k).float(), **HIDDEN["attention_scores"])
    with pytest.raises(CheckFailed, match="should be a torch.Tensor; causal_mask returned a list"):
        checks.check_causal_mask(lambda T: loops.causal_mask(T).tolist())
    with pytest.raises(CheckFailed, match=r"should return a tuple \(output, weights\); it returned a Tensor"):
        checks.check_scaled_dot_product_attention(lambda q, k, v, mask=None: loops.scaled_dot_product_attention(q, k, v, mask)[0])


def test_not_implemented_yet():
    def blank(q, k):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented yet"):
        checks.check_attention_scores(blank)


def test_in_place_modification_is_caught():
    def in_place(scores, mask):
        return scores.masked_fill_(~mask, float("-inf"))

    with pytest.raises(CheckFailed, match="modified its input scores in place"):
        checks.check_apply_mask(in_place)


def test_warnings_inside_a_correct_answer_do_not_reach_stderr(capsys):
    import warnings

    def noisy(q, k):
        warnings.warn("a harmless warning", stacklevel=2)
        return loops.attention_scores(q, k)

    checks.check_attention_scores(noisy)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------------
# Cheats (TOOLCHAIN.md): the reference, the built-in, patched checks and patched allclose
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [(name, getattr(reference, name)) for name in CHECKS]


@pytest.mark.parametrize(
    "answer",
    [
        lambda q, k, v, mask=None: reference.scaled_dot_product_attention(q, k, v, mask),
        lambda q, k, v, mask=None: (F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None),
        lambda q, k, v, mask=None: (None, reference.masked_softmax(reference.attention_scores(q, k), mask)),
        functools.partial(reference.scaled_dot_product_attention),
        lambda q, k, v, mask=None: checks._sdpa()(q, k, v, mask),
    ],
    ids=["wrapper-of-reference", "torch-builtin", "reference-pieces", "partial", "checks-internals"],
)
def test_answers_calling_the_reference_or_builtin_are_refused(answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        checks.check_scaled_dot_product_attention(answer)


def test_builtin_passed_directly_is_refused():
    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_scaled_dot_product_attention(F.scaled_dot_product_attention)


@pytest.mark.parametrize("owner, name", [(torch, "allclose"), (np, "allclose"), (torch.Tensor, "sum"),
                                         (torch, "softmax"), (F, "softmax")])
def test_patched_library_functions_make_checks_refuse(owner, name):
    had_own = name in vars(owner)  # torch.Tensor.sum lives on a base class: shadowing it counts too
    original = vars(owner).get(name)
    try:
        setattr(owner, name, lambda *a, **k: True)
        with pytest.raises(CheckFailed, match=f"{name} was replaced"):
            checks.check_scaled_dot_product_attention(loops.scaled_dot_product_attention)
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
    verify_environment()


def test_patching_during_the_answer_is_caught():
    def sneaky(q, k):
        torch.allclose = lambda *a, **k: True
        return q @ k.transpose(-2, -1)

    original = torch.allclose
    try:
        with pytest.raises(CheckFailed, match="allclose was replaced"):
            checks.check_attention_scores(sneaky)
    finally:
        torch.allclose = original


def test_hard_coded_visible_output_fails_hidden_inputs():
    gen_case = {}

    def record_then_replay(q, k):
        key = tuple(q.shape)
        gen_case[key] = loops.attention_scores(q, k)  # recomputed on each call (the checks also run a backward)
        return gen_case[key]

    checks.check_attention_scores(record_then_replay)  # memorizes the visible outputs
    frozen = dict(gen_case)
    with pytest.raises(CheckFailed):
        checks.check_attention_scores(lambda q, k: frozen[tuple(q.shape)], **HIDDEN["attention_scores"])


# ------------------------------------------------------------------------------------------------
# Numeric answers
# ------------------------------------------------------------------------------------------------

RIGHT_BY_HAND = dict(
    scores=[[1, 0, 1], [0, 1, 0]],
    weights=[[0.4223, 0.1554, 0.4223], [0.2119, 0.5761, 0.2119]],
    output=[[0.8446, 0.5777], [0.4239, 0.7881]],
)


def test_by_hand_accepts_three_decimals(capsys):
    checks.check_sdpa_by_hand(**RIGHT_BY_HAND)
    checks.check_sdpa_by_hand(torch.tensor(RIGHT_BY_HAND["scores"]), np.array(RIGHT_BY_HAND["weights"]),
                              [[0.845, 0.578], [0.424, 0.788]])
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("variant, message", [
    ("no_scale", "not divided by sqrt(d_k)"),
    ("divide_by_dk", "divided by d_k"),
    ("softmax_query_axis", "query axis"),
])
def test_by_hand_names_mistakes(variant, message):
    scores, weights, output = (x.tolist() for x in checks._by_hand_variants()[variant])
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.check_sdpa_by_hand(scores, weights, output)


def test_by_hand_other_failures():
    with pytest.raises(CheckFailed, match="exponentiates"):
        checks.check_sdpa_by_hand(RIGHT_BY_HAND["scores"], [[0.5, 0, 0.5], [0, 1, 0]], RIGHT_BY_HAND["output"])
    with pytest.raises(CheckFailed, match="weights are right"):
        checks.check_sdpa_by_hand(RIGHT_BY_HAND["scores"], RIGHT_BY_HAND["weights"], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(CheckFailed, match="no answer yet"):
        checks.check_sdpa_by_hand(None, None, None)
    with pytest.raises(CheckFailed, match=r"shape \(3, 2\); expected \(2, 3\)"):
        checks.check_sdpa_by_hand([[1, 0], [0, 1], [1, 0]], RIGHT_BY_HAND["weights"], RIGHT_BY_HAND["output"])


RIGHT_COUNTS = dict(n_causal_allowed=21, n_padding_allowed=40, var_unscaled=64, var_scaled=1.0,
                    n_score_entries=25_165_824, score_bytes=100_663_296)


def test_counts_right_and_each_known_wrong_value(capsys):
    checks.check_counts(**RIGHT_COUNTS)
    assert "✓" in capsys.readouterr().out
    for key, wrongs in checks._COUNT_MISTAKES.items():
        for value, message in wrongs:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_counts(**{**RIGHT_COUNTS, key: value})
    with pytest.raises(CheckFailed, match="not right; count the True entries"):
        checks.check_counts(**{**RIGHT_COUNTS, "n_causal_allowed": 20})
    with pytest.raises(CheckFailed, match="should be a number"):
        checks.check_counts(**{**RIGHT_COUNTS, "var_scaled": "1"})
    with pytest.raises(CheckFailed, match="needs an answer for score_bytes"):
        checks.check_counts(**{k: v for k, v in RIGHT_COUNTS.items() if k != "score_bytes"})


def test_torch_wrapping_its_own_functions_is_not_a_patch():
    """Importing torch._dynamo (torch.compile, `with torch.device(...)`) wraps torch.manual_seed;
    the checks must still run afterwards, and still refuse a learner's own replacement."""
    script = (
        "import helpers.checks.attention as c, torch, torch._dynamo\n"
        "from tests import loops_attention as loops\n"
        "assert torch.manual_seed.__wrapped__ is not None\n"
        "c.check_attention_scores(loops.attention_scores)\n"
        "import functools\n"
        "torch.manual_seed = functools.wraps(torch.manual_seed)(lambda *a: None)\n"
        "try:\n"
        "    c.check_attention_scores(loops.attention_scores)\n"
        "except c.CheckFailed as error:\n"
        "    print('refused:', error)\n"
    )
    # `from tests import loops_attention` needs the repository root on sys.path; nbgrader_config.py, once loaded
    # in this process by a grading test, sets PYTHONSAFEPATH=1, which would keep it off.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "✓ attention_scores" in run.stdout and "refused: this check will not run because torch.manual_seed" in run.stdout
