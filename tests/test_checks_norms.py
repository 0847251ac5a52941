"""Chapter 04's checks: they accept correct answers written independently (and in other correct
styles), name every catalogued mistake with its own message, translate shapes, and refuse the
reference and torch's norm built-ins."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import helpers.checks.norms as checks
import helpers.norms as reference
from helpers.checks import CheckFailed

from . import loops_norms as loops
from .hidden import hidden_inputs

CHECKS = {
    "layer_norm": checks.check_layer_norm,
    "rms_norm": checks.check_rms_norm,
    "pre_ln_block": checks.check_pre_ln_block,
    "post_ln_block": checks.check_post_ln_block,
    "residual_norms": checks.check_residual_norms,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("norms", CHECKS)


# The second hidden call of some checks: edge sizes.
HIDDEN_EDGE = hidden_inputs("norms", CHECKS, which=1)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "layer_norm": {"over_batch", "over_sequence", "unbiased", "eps_outside"},
    "rms_norm": {"subtracts_mean", "eps_outside", "over_batch"},
    "post_ln_block": {"norm_before_add"},
    "pre_ln_block": {"missing_final_residual"},
}


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm", "pre_ln_block", "post_ln_block"])
def test_edge_variant_still_names_the_issue_mistakes(name):
    """With a batch of one, the batch-axis mistake is still caught (its statistics collapse)."""
    for mistake in checks.MISTAKES[name]:
        with pytest.raises(CheckFailed):
            CHECKS[name](mistake.impl, **HIDDEN_EDGE[name])


def _other_correct_styles():
    def ln_var_mean(x, gamma, beta, eps=1e-5):
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + eps) * gamma + beta

    def ln_moments(x, gamma, beta, eps=1e-5):  # E[x^2] - E[x]^2: fine for these inputs
        mean = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mean * mean
        return gamma * (x - mean) / (var + eps).sqrt() + beta

    def ln_unbiased_corrected(x, gamma, beta, eps=1e-5):
        d = x.shape[-1]
        var = x.var(-1, keepdim=True) * (d - 1) / d  # torch.var is allowed; the correction is undone
        return torch.addcmul(beta, (x - x.mean(-1, keepdim=True)) / torch.sqrt(var + eps), gamma)

    def rms_vector_norm(x, gamma, eps=1e-6):
        d = x.shape[-1]
        ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) ** 2 / d
        return gamma * x * (ms + eps).rsqrt()

    def pre_ln_in_place_style(x, attn, ffn, norm1, norm2):
        h = x.clone()
        h += attn(norm1(x))  # in place on a copy nothing else saved for backward
        out = h.clone()
        out += ffn(norm2(h))
        return out

    def post_ln_one_line(x, attn, ffn, norm1, norm2):
        return norm2(norm1(x + attn(x)) + ffn(norm1(x + attn(x))))

    def residual_norms_vectorized(x, blocks):
        out = [torch.linalg.vector_norm(x, dim=-1).mean()]
        for block in blocks:
            x = block(x)
            out.append(torch.linalg.vector_norm(x, dim=-1).flatten().mean())
        return torch.stack(out)

    yield "layer_norm", ln_var_mean
    yield "layer_norm", ln_moments
    yield "layer_norm", ln_unbiased_corrected
    yield "rms_norm", rms_vector_norm
    yield "pre_ln_block", pre_ln_in_place_style
    yield "post_ln_block", post_ln_one_line
    yield "residual_norms", residual_norms_vectorized


def pre_ln_in_place_breaking_backward(x, attn, ffn, norm1, norm2):
    h = x.clone()
    h += attn(norm1(h))  # norm1 saved h for its backward pass; += then changes it
    h += ffn(norm2(h))
    return h


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_an_in_place_edit_that_breaks_backward_is_named(variant):
    with pytest.raises(CheckFailed, match="backward pass through your output fails .*in-place operation"):
        CHECKS["pre_ln_block"](pre_ln_in_place_breaking_backward, **(HIDDEN["pre_ln_block"] if variant == "hidden" else {}))


@pytest.mark.parametrize("name, answer", list(_other_correct_styles()), ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_check_accepts_other_correct_styles(name, answer, variant, capsys):
    CHECKS[name](answer, **(HIDDEN[name] if variant == "hidden" else {}))
    assert "✓" in capsys.readouterr().out


def test_a_batch_axis_mistake_on_2d_input_is_called_a_sequence_mistake():
    """On (T, d_model) input, dim=0 is the sequence axis: the feedback must not say 'batch'."""
    def over_dim0(x, gamma, beta, eps=1e-5):
        mean = x.mean(0, keepdim=True)
        return (x - mean) / torch.sqrt(x.var(0, keepdim=True, correction=0) + eps) * gamma + beta

    def over_dim0_3d_right(x, g, b, eps=1e-5):
        return loops.layer_norm(x, g, b, eps) if x.dim() == 3 else over_dim0(x, g, b, eps)

    with pytest.raises(CheckFailed, match=re.escape("(T, d_model) input): the statistics are taken over the sequence axis")):
        checks.check_layer_norm(over_dim0_3d_right)


def test_uncatalogued_layer_norm_gets_a_symptom():
    def two_mistakes(x, gamma, beta, eps=1e-5):  # not centered and unbiased
        return x / torch.sqrt(x.var(-1, keepdim=True) + eps) * gamma + beta

    with pytest.raises(CheckFailed, match="do not have mean 0: either"):
        checks.check_layer_norm(two_mistakes)


def test_wrong_shape_is_reported_with_axis_names():
    with pytest.raises(CheckFailed) as info:
        checks.check_layer_norm(lambda x, g, b, eps=1e-5: x.mean(-1))
    assert "output has shape (B, T) = (2, 5); expected (B, T, d_model) = (2, 5, 7)" in str(info.value)
    with pytest.raises(CheckFailed) as info:
        checks.check_residual_norms(lambda x, blocks: x.norm(dim=-1).mean(0))
    assert "norms has shape (T,) = (5,); expected (L + 1,) = (6,)" in str(info.value)


def test_wrong_dtype_is_explained():
    with pytest.raises(CheckFailed, match=r"dtype torch.float32; expected torch.float64 \(keep the input's dtype\)"):
        checks.check_rms_norm(lambda x, g, eps=1e-6: loops.rms_norm(x, g, eps).float(), **HIDDEN["rms_norm"])


def test_exception_inside_answer_names_the_inputs():
    def broken(x, attn, ffn, norm1, norm2):
        return x + attn(norm1(x)) @ ffn  # a typo

    with pytest.raises(CheckFailed) as info:
        checks.check_pre_ln_block(broken)
    message = str(info.value)
    assert "raised TypeError" in message and "x (B, T, d_model) = (2, 5, 7) float32" in message
    assert "attn=attn (a fixed causal attention pattern" in message


def test_not_implemented_yet():
    def blank(x, gamma, eps=1e-6):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented yet"):
        checks.check_rms_norm(blank)


def test_in_place_modification_is_caught():
    def in_place(x, gamma, beta, eps=1e-5):
        x -= x.mean(-1, keepdim=True)
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gamma + beta

    with pytest.raises(CheckFailed, match="modified its input x in place"):
        checks.check_layer_norm(in_place)


def test_block_check_tells_all_orders_apart():
    """Every pair of catalogued block equations gives different outputs on the check's inputs."""
    for catalogue, right in [(checks.PRE_LN_MISTAKES, reference.pre_ln_block),
                             (checks.POST_LN_MISTAKES, reference.post_ln_block)]:
        for case in checks._block_cases(0, torch.float64, 2, 5, 7, 11):
            outputs = [right(*case.args)] + [m.impl(*case.args) for m in catalogue]
            for i in range(len(outputs)):
                for j in range(i + 1, len(outputs)):
                    assert not torch.allclose(outputs[i], outputs[j], atol=1e-3), (i, j)


# ------------------------------------------------------------------------------------------------
# Cheats: the reference, torch's built-ins, wrappers of either
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [(name, getattr(reference, name)) for name in CHECKS]


@pytest.mark.parametrize(
    "name, answer",
    [
        ("layer_norm", lambda x, g, b, eps=1e-5: reference.layer_norm(x, g, b, eps)),
        ("layer_norm", lambda x, g, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], g, b, eps)),
        ("layer_norm", lambda x, g, b, eps=1e-5: torch.layer_norm(x, x.shape[-1:], g, b, eps)),
        ("layer_norm", lambda x, g, b, eps=1e-5: nn.LayerNorm(x.shape[-1], eps=eps, dtype=x.dtype)(x) * g + b),
        ("layer_norm", lambda x, g, b, eps=1e-5: F.instance_norm(x.reshape(1, -1, x.shape[-1]), eps=eps).reshape(x.shape) * g + b),
        ("layer_norm", lambda x, g, b, eps=1e-5: F.group_norm(x.reshape(-1, x.shape[-1], 1), 1, eps=eps).reshape(x.shape) * g + b),
        ("rms_norm", lambda x, g, eps=1e-6: F.rms_norm(x, x.shape[-1:], g, eps)),
        ("rms_norm", lambda x, g, eps=1e-6: torch.rms_norm(x, x.shape[-1:], g, eps)),
        ("rms_norm", lambda x, g, eps=1e-6: nn.RMSNorm(x.shape[-1], eps=eps, dtype=x.dtype)(x) * g),
        ("rms_norm", lambda x, g, eps=1e-6: reference.RMSNorm(x.shape[-1], eps).to(x.dtype)(x) * g),
        ("pre_ln_block", lambda *args: reference.pre_ln_block(*args)),
        ("post_ln_block", lambda *args: reference.post_ln_block(*args)),
        ("post_ln_block", functools.partial(reference.post_ln_block)),
        ("residual_norms", lambda x, blocks: reference.residual_norms(x, blocks)),
        ("layer_norm", lambda x, g, b, eps=1e-5: checks._layer_norm()(x, g, b, eps)),
    ],
    ids=["ref-wrapper", "F.layer_norm", "torch.layer_norm", "nn.LayerNorm", "instance_norm", "group_norm",
         "F.rms_norm", "torch.rms_norm", "nn.RMSNorm", "ref-module", "pre-ref", "post-ref", "partial",
         "residual-ref", "checks-internals"],
)
def test_answers_calling_the_reference_or_builtin_are_refused(name, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[name](answer)


@pytest.mark.parametrize("name, builtin", [("layer_norm", F.layer_norm), ("rms_norm", torch.rms_norm)])
def test_builtin_passed_directly_is_refused(name, builtin):
    with pytest.raises(CheckFailed, match="not your own function"):
        CHECKS[name](builtin)


def test_block_answers_may_call_the_given_norms_and_torch_but_not_the_reference_blocks(capsys):
    """The block exercises hand over norms built from torch: calling them is the exercise, not a cheat."""
    checks.check_pre_ln_block(lambda x, attn, ffn, norm1, norm2: loops.pre_ln_block(x, attn, ffn, norm1, norm2))
    assert "✓" in capsys.readouterr().out


def test_patched_library_function_makes_checks_refuse():
    original = torch.allclose
    try:
        torch.allclose = lambda *a, **k: True
        with pytest.raises(CheckFailed, match="allclose was replaced"):
            checks.check_rms_norm(loops.rms_norm)
    finally:
        torch.allclose = original


def test_hard_coded_visible_output_fails_hidden_inputs():
    memory = {}

    def record(x, gamma, eps=1e-6):
        memory[(tuple(x.shape), eps)] = loops.rms_norm(x, gamma, eps)  # the latest call's output
        return memory[(tuple(x.shape), eps)]

    checks.check_rms_norm(record)
    frozen = dict(memory)
    with pytest.raises(CheckFailed):
        checks.check_rms_norm(lambda x, gamma, eps=1e-6: frozen[(tuple(x.shape), eps)], **HIDDEN["rms_norm"])


# ------------------------------------------------------------------------------------------------
# Numeric answers
# ------------------------------------------------------------------------------------------------

RIGHT_BY_HAND = {"mean_x": 3, "var_x": 9.0, "ln_by_hand": [-1.0, -0.125, -0.25, 1.5], "rms_x": 5,
                 "rms_by_hand": [0.0, 0.2, 0.4, 3.2]}


def test_by_hand_accepts_right_answers_in_any_number_type(capsys):
    checks.check_norms_by_hand(**RIGHT_BY_HAND)
    checks.check_norms_by_hand(np.float64(3.0), torch.tensor(9.0), np.array(RIGHT_BY_HAND["ln_by_hand"]), 5.0004,
                               torch.tensor(RIGHT_BY_HAND["rms_by_hand"]))
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("key, variant", [("ln_by_hand", k) for k in checks._HAND_WHY]
                         + [("rms_by_hand", k) for k in checks._RMS_WHY])
def test_by_hand_names_vector_mistakes(key, variant):
    variants = checks._hand_variants()["ln" if key == "ln_by_hand" else "rms_vec"]
    why = (checks._HAND_WHY if key == "ln_by_hand" else checks._RMS_WHY)[variant]
    with pytest.raises(CheckFailed, match=re.escape(f"{key}: {why}")):
        checks.check_norms_by_hand(**{**RIGHT_BY_HAND, key: variants[variant].tolist()})


@pytest.mark.parametrize("key, value, words", [
    ("var_x", 12, "d_model - 1 = 3"),
    ("var_x", 3, "standard deviation"),
    ("var_x", 16, "includes eps"),
    ("var_x", 18, "mean of x^2"),
    ("mean_x", 12, "that is the sum"),
    ("mean_x", 4, "not by 3"),
    ("rms_x", 18 ** 0.5, "eps is missing"),
    ("rms_x", 18 ** 0.5 + 7, "outside the square root"),
    ("rms_x", 4, "does not subtract the mean"),
    ("rms_x", 79 ** 0.5, "summed, not averaged"),
    ("rms_x", 25, "square root is missing"),
    ("rms_x", 4.7, "is not right; square each entry"),
])
def test_by_hand_names_scalar_mistakes(key, value, words):
    with pytest.raises(CheckFailed, match=re.escape(words)):
        checks.check_norms_by_hand(**{**RIGHT_BY_HAND, key: value})


def test_by_hand_other_failures():
    with pytest.raises(CheckFailed, match="no answer yet"):
        checks.check_norms_by_hand(None, None, None, None, None)
    with pytest.raises(CheckFailed, match="should be a number"):
        checks.check_norms_by_hand(**{**RIGHT_BY_HAND, "var_x": "9"})
    with pytest.raises(CheckFailed, match=r"shape \(2, 2\); expected \(4,\)"):
        checks.check_norms_by_hand(**{**RIGHT_BY_HAND, "ln_by_hand": [[-1, -0.125], [-0.25, 1.5]]})
    with pytest.raises(CheckFailed, match="off at feature 3"):
        checks.check_norms_by_hand(**{**RIGHT_BY_HAND, "rms_by_hand": [0, 0.2, 0.4, 3.0]})


RIGHT_COUNTS = {"n_means": 4096, "ln_params_gpt2": 38_400, "rms_params_llama": 266_240}


def test_counts_right_and_each_known_wrong_value(capsys):
    checks.check_norm_counts(**RIGHT_COUNTS)
    checks.check_norm_counts(**{k: np.int64(v) for k, v in RIGHT_COUNTS.items()})
    assert capsys.readouterr().out.count("✓") == 2
    with pytest.raises(CheckFailed, match=r"^n_means is a float \(4096.0\); a count is an int"):
        checks.check_norm_counts(**{**RIGHT_COUNTS, "n_means": 4096.0})
    for key, wrongs in checks._COUNT_MISTAKES.items():
        for value, message in wrongs:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_norm_counts(**{**RIGHT_COUNTS, key: value})
    with pytest.raises(CheckFailed, match="not right; LayerNorm computes one mean"):
        checks.check_norm_counts(**{**RIGHT_COUNTS, "n_means": 4095})
    with pytest.raises(CheckFailed, match="needs an answer for rms_params_llama"):
        checks.check_norm_counts(n_means=4096, ln_params_gpt2=38_400)
