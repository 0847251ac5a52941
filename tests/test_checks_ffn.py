"""Chapter 03's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, translate shapes, and refuse the known cheats."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers.checks.ffn as checks
import helpers.ffn as reference
from helpers.checks import CheckFailed

from . import loops_ffn as loops
from .hidden import hidden_inputs

CHECKS = {
    "gelu": checks.check_gelu,
    "feed_forward": checks.check_feed_forward,
    "swiglu_ffn": checks.check_swiglu_ffn,
    "token_independence": checks.check_token_independence_test,
    "top_k_route": checks.check_top_k_route,
    "moe_forward": checks.check_moe_forward,
}
ANSWERS = {name: getattr(loops, name) for name in CHECKS if name != "token_independence"}
ANSWERS["token_independence"] = loops.is_token_independent

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("ffn", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "feed_forward": {"activation_after_second"},
    "swiglu_ffn": {"gate_up_swapped"},
    "top_k_route": {"softmax_all_experts", "not_renormalized"},
    "moe_forward": {"not_renormalized"},
}


def test_the_gpt2_count_catalogue_names_forgotten_biases():
    assert any("biases forgotten" in message for _, message in checks._COUNT_MISTAKES["gpt2_mlp"])


def test_the_softmax_then_renormalise_convention_is_accepted(capsys):
    """Some models take a softmax over all experts, then top-k, then renormalise: the same numbers."""
    def renormalised(router_logits, k):
        probs = torch.softmax(router_logits, dim=-1)
        top, idx = probs.topk(k, dim=-1)
        return top / top.sum(dim=-1, keepdim=True), idx

    checks.check_top_k_route(renormalised)  # raises CheckFailed if the convention were refused
    checks.check_top_k_route(renormalised, **HIDDEN["top_k_route"])
    assert capsys.readouterr().out.count("✓ top_k_route") == 2
    # ... and without the renormalisation the same answer is refused, naming the mistake
    def not_renormalised(router_logits, k):
        return torch.softmax(router_logits, dim=-1).topk(k, dim=-1)

    with pytest.raises(CheckFailed, match="sum to less than 1; take the softmax over the k chosen logits"):
        checks.check_top_k_route(not_renormalised)


def test_moe_answer_may_use_the_reference_router_and_a_dense_loop(capsys):
    def dense(x, router_weight, experts, k):
        weights, idx = reference.top_k_route(x @ router_weight.T, k)  # allowed: exercise 6's reference
        outs = torch.stack([expert(x) for expert in experts], dim=-2)  # (..., n_experts, d_model)
        chosen = outs.gather(-2, idx[..., None].expand(*idx.shape, x.shape[-1]))  # (..., k, d_model)
        return (weights[..., None] * chosen).sum(-2)

    checks.check_moe_forward(dense)
    checks.check_moe_forward(dense, **HIDDEN["moe_forward"])
    assert capsys.readouterr().out.count("✓") == 2


def test_unlisted_shape_error_is_translated_into_axis_names():
    with pytest.raises(CheckFailed) as info:
        checks.check_feed_forward(lambda x, w1, b1, w2, b2: F.gelu(x @ w1.T + b1))
    assert "output has shape (B, T, d_ff) = (2, 5, 11); expected (B, T, d_model) = (2, 5, 6)" in str(info.value)
    with pytest.raises(CheckFailed) as info:
        checks.check_top_k_route(lambda logits, k: tuple(t.transpose(-2, -1) for t in loops.top_k_route(logits, k)))
    assert "weights has shape (k, T) = (3, 5); expected (T, k) = (5, 3)" in str(info.value)


def test_exception_inside_answer_names_the_inputs():
    with pytest.raises(CheckFailed) as info:
        checks.check_feed_forward(lambda x, w1, b1, w2, b2: F.gelu(x @ w1 + b1) @ w2 + b2)  # forgot .T
    message = str(info.value)
    assert "raised RuntimeError" in message and "w1 (d_ff, d_model) = (11, 6)" in message


def test_uncatalogued_error_reports_the_first_difference():
    with pytest.raises(CheckFailed, match=r"output differs from the reference in 60 of 60 entries"):
        checks.check_feed_forward(lambda x, w1, b1, w2, b2: loops.feed_forward(x, w1, b1, w2, b2)
                                  + 0.05 * torch.cos(7 * x[..., :1]))


def test_an_output_off_by_a_constant_factor_is_named_as_such():
    with pytest.raises(CheckFailed, match=r"output is the right answer times 1.01 everywhere"):
        checks.check_feed_forward(lambda x, w1, b1, w2, b2: loops.feed_forward(x, w1, b1, w2, b2) * 1.01)


def test_wrong_dtypes_and_types_are_explained():
    with pytest.raises(CheckFailed, match=r"dtype torch.float32; expected torch.float64 \(keep the input's dtype\)"):
        checks.check_gelu(lambda x, approximate="none": loops.gelu(x, approximate).float(), **HIDDEN["gelu"])
    with pytest.raises(CheckFailed, match=r"expert_indices has dtype torch.int32; expected torch.int64"):
        checks.check_top_k_route(lambda logits, k: (loops.top_k_route(logits, k)[0], loops.top_k_route(logits, k)[1].int()))
    with pytest.raises(CheckFailed, match="should return True or False; it returned str 'yes'"):
        checks.check_token_independence_test(lambda fn, x: "yes")


def test_token_independence_accepts_numpy_and_tensor_booleans(capsys):
    checks.check_token_independence_test(lambda fn, x: np.bool_(loops.is_token_independent(fn, x)))
    checks.check_token_independence_test(lambda fn, x: torch.tensor(loops.is_token_independent(fn, x)))
    checks.check_token_independence_test(  # exact comparison works too: an FFN changes no other output at all
        lambda fn, x: all(torch.equal(fn(x.index_add(1, torch.tensor([j]), torch.ones_like(x[:, :1])))[:, [i for i in range(x.shape[1]) if i != j]],
                                      fn(x)[:, [i for i in range(x.shape[1]) if i != j]]) for j in range(x.shape[1])))
    assert capsys.readouterr().out.count("✓") == 3


def test_token_independence_uncatalogued_wrong_answer_names_the_layer():
    def checks_middle_token_only(fn, x):
        moved = x.clone()
        moved[:, 2] += 1.0
        return torch.allclose(fn(moved)[:, 0], fn(x)[:, 0])  # only output 0, after perturbing token 2

    with pytest.raises(CheckFailed, match="returned True for causal self-attention; expected False"):
        checks.check_token_independence_test(checks_middle_token_only)


def test_in_place_perturbation_is_caught():
    def in_place(fn, x):
        base = fn(x.clone())
        x[:, 0] += 1.0
        return torch.allclose(fn(x)[:, 1:], base[:, 1:])

    with pytest.raises(CheckFailed, match="modified its input x in place"):
        checks.check_token_independence_test(in_place)


def test_not_implemented_yet():
    def blank(x, approximate="none"):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented yet"):
        checks.check_gelu(blank)


# ------------------------------------------------------------------------------------------------
# Cheats: the reference, the built-in, patched checks
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [(name, getattr(reference, name)) for name in ("gelu", "feed_forward", "swiglu_ffn", "top_k_route",
                                                               "moe_forward")]


@pytest.mark.parametrize("check, answer", [
    ("gelu", F.gelu),
    ("gelu", lambda x, approximate="none": F.gelu(x, approximate=approximate)),
    ("gelu", lambda x, approximate="none": torch.nn.GELU(approximate)(x)),
    ("gelu", lambda x, approximate="none": reference.ACTIVATIONS["gelu"](x) if approximate == "none" else x),
    ("feed_forward", lambda x, w1, b1, w2, b2: reference.feed_forward(x, w1, b1, w2, b2)),
    ("feed_forward", functools.partial(reference.feed_forward, activation="gelu")),
    ("swiglu_ffn", lambda x, g, u, d: reference.SwiGLUFFN.forward(
        type("M", (), {"gate": type("L", (), {"weight": g}), "up": type("L", (), {"weight": u}),
                       "down": type("L", (), {"weight": d})})(), x)),
    ("swiglu_ffn", lambda x, g, u, d: (reference.silu(x @ g.T) * (x @ u.T)) @ d.T),
    ("top_k_route", lambda logits, k: reference.top_k_route(logits, k)),
    ("moe_forward", lambda x, r, experts, k: reference.moe_forward(x, r, experts, k)),
    ("token_independence", lambda fn, x: bool((reference.token_influence(fn, x).fill_diagonal_(0) == 0).all())),
    ("gelu", lambda x, approximate="none": checks._gelu_erf(x) if approximate == "none" else checks._gelu_tanh(x)),
], ids=["builtin", "builtin-wrapper", "module", "reference-dict", "ffn-wrapper", "ffn-partial", "swiglu-module",
        "reference-silu", "route-wrapper", "moe-wrapper", "token-influence", "checks-internals"])
def test_answers_calling_the_reference_or_builtin_are_refused(check, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[check](answer)


def test_feed_forward_may_use_torch_gelu_and_swiglu_may_use_torch_silu(capsys):
    checks.check_feed_forward(lambda x, w1, b1, w2, b2: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))
    checks.check_swiglu_ffn(lambda x, g, u, d: (F.silu(x @ g.T) * (x @ u.T)) @ d.T)
    assert capsys.readouterr().out.count("✓") == 2


def test_hard_coded_visible_output_fails_hidden_inputs():
    memory = {}

    def record(x, w1, b1, w2, b2):
        memory[(x.shape, x.is_contiguous())] = loops.feed_forward(x, w1, b1, w2, b2)  # the latest call's output
        return memory[(x.shape, x.is_contiguous())]

    checks.check_feed_forward(record)
    frozen = dict(memory)
    with pytest.raises(CheckFailed):
        checks.check_feed_forward(lambda x, w1, b1, w2, b2: frozen[(x.shape, x.is_contiguous())], **HIDDEN["feed_forward"])


# ------------------------------------------------------------------------------------------------
# Numeric answers
# ------------------------------------------------------------------------------------------------

RIGHT_COUNTS = {"gpt2_mlp": 4_722_432, "gpt2_attention": 2_362_368, "gpt2_mlp_share": 2 / 3, "llama_mlp": 135_266_304,
                    "llama_attention": 67_108_864, "llama_mlp_over_attention": 2.0156, "swiglu_d_ff": 2048}

RIGHT_MOE = {"mixtral_total_expert_params": 1_409_286_144, "mixtral_active_expert_params": 352_321_536,
                 "balance_loss": 1.25, "balanced_loss": 1, "capacity": 2, "dropped": 2, "dropped_at_1_5": 1}


@pytest.mark.parametrize("check, right, table", [
    (checks.check_param_counts, RIGHT_COUNTS, checks._COUNT_MISTAKES),
    (checks.check_moe_numbers, RIGHT_MOE, checks._MOE_MISTAKES),
])
def test_numbers_right_and_each_known_wrong_value(check, right, table, capsys):
    check(**right)
    check(**{key: np.float64(value) if isinstance(value, float) else np.int64(value) for key, value in right.items()})
    assert capsys.readouterr().out.count("✓") == 2
    count = next(key for key, value in right.items() if isinstance(value, int))
    with pytest.raises(CheckFailed, match=rf"^{count} is a 0-d tensor \(\d+\); a count is a Python int"):
        check(**{**right, count: torch.tensor(right[count])})
    for key, wrongs in table.items():
        for value, message in wrongs:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                check(**{**right, key: value})
    first = next(iter(right))
    with pytest.raises(CheckFailed, match="is not right; "):
        check(**{**right, first: right[first] + 1})
    with pytest.raises(CheckFailed, match="should be a number"):
        check(**{**right, first: str(right[first])})
    with pytest.raises(CheckFailed, match=f"needs an answer for {first}"):
        check(**{k: v for k, v in right.items() if k != first})


def test_known_wrong_values_are_not_right_answers():
    for questions, table in [(checks.COUNT_QUESTIONS, checks._COUNT_MISTAKES), (checks.MOE_QUESTIONS, checks._MOE_MISTAKES)]:
        for key, wrongs in table.items():
            assert all(abs(value - questions[key]) > 1e-3 for value, _ in wrongs), key
