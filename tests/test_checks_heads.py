"""Chapter 02's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, translate shapes, and refuse the reference and torch's built-ins."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers.checks.heads as checks
import helpers.heads as reference
from helpers.attention import scaled_dot_product_attention as chapter01_attention
from helpers.checks import CheckFailed

from . import loops_heads as loops
from .hidden import hidden_inputs

CHECKS = {
    "split_heads": checks.check_split_heads,
    "merge_heads": checks.check_merge_heads,
    "multi_head_attention": checks.check_multi_head_attention,
    "grouped_query_attention": checks.check_grouped_query_attention,
    "attention_param_count": checks.check_attention_param_count,
    "kv_cache_elements_per_token": checks.check_kv_cache_elements_per_token,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("heads", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "split_heads": {"no_transpose", "wrong_axis"},
    "multi_head_attention": {"split_no_transpose", "wrong_axis", "no_output_projection", "head_averaged_weights"},
    "grouped_query_attention": {"kv_head_modulo", "no_output_projection", "head_averaged_weights"},
    "attention_param_count": {"bias_ignored", "bias_full_width", "bias_once", "bias_qkv_only"},
}


# ------------------------------------------------------------------------------------------------
# Answers written in other correct ways are accepted
# ------------------------------------------------------------------------------------------------


def mha_with_chapter01(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    """Uses helpers.attention (allowed) and einsum; the merge uses .contiguous().view."""
    B, T, d_model = x.shape
    d = d_model // n_heads
    q, k, v = (torch.einsum("btc,oc->bto", x, w).view(B, T, n_heads, d).permute(0, 2, 1, 3) for w in (w_q, w_k, w_v))
    out, weights = chapter01_attention(q, k, v, mask)
    return out.permute(0, 2, 1, 3).contiguous().view(B, T, d_model) @ w_o.T, weights


def gqa_with_expand(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    """Llama's repeat_kv: expand a new axis, then reshape; attention written out."""
    B, T, d_model = x.shape
    d = d_model // n_heads
    g = n_heads // n_kv_heads
    q = (x @ w_q.T).reshape(B, T, n_heads, d).transpose(1, 2)
    k = (x @ w_k.T).reshape(B, T, n_kv_heads, d).transpose(1, 2)[:, :, None].expand(B, n_kv_heads, g, T, d).reshape(B, n_heads, T, d)
    v = (x @ w_v.T).reshape(B, T, n_kv_heads, d).transpose(1, 2)[:, :, None].expand(B, n_kv_heads, g, T, d).reshape(B, n_heads, T, d)
    scores = q @ k.transpose(-2, -1) / d ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    return (weights @ v).transpose(1, 2).reshape(B, T, d_model) @ w_o.T, weights


@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_other_correct_answers_pass(variant, capsys):
    hidden = variant == "hidden"
    checks.check_multi_head_attention(mha_with_chapter01, **(HIDDEN["multi_head_attention"] if hidden else {}))
    checks.check_grouped_query_attention(gqa_with_expand, **(HIDDEN["grouped_query_attention"] if hidden else {}))
    checks.check_split_heads(lambda x, h: x.unflatten(-1, (h, -1)).permute(0, 2, 1, 3),
                             **(HIDDEN["split_heads"] if hidden else {}))
    checks.check_merge_heads(lambda x: torch.cat(x.unbind(dim=1), dim=-1), **(HIDDEN["merge_heads"] if hidden else {}))
    assert capsys.readouterr().out.count("✓") == 4


def test_counts_accept_python_and_numpy_integers(capsys):
    checks.check_attention_param_count(lambda *a: np.int64(loops.attention_param_count(*a)))
    checks.check_kv_cache_elements_per_token(lambda *a: int(loops.kv_cache_elements_per_token(*a)))
    assert capsys.readouterr().out.count("✓") == 2


@pytest.mark.parametrize("wrap, message", [
    (float, r"returned a float \(\d+\.0\); a count is an int: use //"),
    (np.float64, r"returned a float \(\d+\.0\); a count is an int"),
    (torch.tensor, r"returned a 0-d tensor \(\d+\); a count is a Python int: return int\(...\) or .item\(\)"),
], ids=["float", "numpy-float", "tensor"])
def test_counts_name_a_whole_float_or_a_tensor(wrap, message):
    """The exercise says int: 3.0 or tensor(3) is named, not silently accepted."""
    with pytest.raises(CheckFailed, match=r"^attention_param_count " + message):
        checks.check_attention_param_count(lambda *a: wrap(loops.attention_param_count(*a)))
    with pytest.raises(CheckFailed, match=r"^kv_cache_elements_per_token " + message):
        checks.check_kv_cache_elements_per_token(lambda *a: wrap(loops.kv_cache_elements_per_token(*a)))


def test_counts_refuse_fractions_and_non_numbers():
    with pytest.raises(CheckFailed, match="not a whole number"):
        checks.check_attention_param_count(lambda *a: loops.attention_param_count(*a) + 0.5)
    with pytest.raises(CheckFailed, match="should return a number"):
        checks.check_kv_cache_elements_per_token(lambda *a: str(loops.kv_cache_elements_per_token(*a)))
    with pytest.raises(CheckFailed, match=r"attention_param_count\(d_model=512, n_heads=8, n_kv_heads=None, bias=False\) = 1 is not right"):
        checks.check_attention_param_count(lambda *a: 1)


# ------------------------------------------------------------------------------------------------
# Shapes, symptoms and messages
# ------------------------------------------------------------------------------------------------


def test_wrong_shape_is_reported_with_axis_names():
    with pytest.raises(CheckFailed) as info:
        checks.check_split_heads(lambda x, h: x.reshape(x.shape[0], x.shape[1], h, -1).permute(0, 3, 2, 1))
    assert "heads has shape (B, d_head, H, T) = (2, 4, 3, 5); expected (B, H, T, d_head) = (2, 3, 5, 4)" in str(info.value)


def test_moved_values_are_described():
    def shuffled(x, h):  # right shape and numbers, heads in reverse order
        return loops.split_heads(x, h).flip(1)

    with pytest.raises(CheckFailed, match="right numbers in the wrong places"):
        checks.check_split_heads(shuffled)


def test_right_weights_wrong_output_is_explained():
    def no_merge_projection_bias(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        out, weights = loops.multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask)
        return out + 1.0, weights

    with pytest.raises(CheckFailed, match="attention weights are right but the output is not"):
        checks.check_multi_head_attention(no_merge_projection_bias)


def _mha_with(*, v_weight=None, heads_order=None, v_factor=1.0, q_factor=1.0):
    """loops.multi_head_attention's steps written out, with one step changed."""
    def mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
        B, T, d_model = x.shape
        d = d_model // n_heads
        q = (x @ w_q.T * q_factor).reshape(B, T, n_heads, d).transpose(1, 2)
        k = (x @ w_k.T).reshape(B, T, n_heads, d).transpose(1, 2)
        v = (x @ (w_v if v_weight is None else v_weight(w_q, w_k, w_v)).T * v_factor).reshape(B, T, n_heads, d).transpose(1, 2)
        out, weights = chapter01_attention(q, k, v, mask)
        if heads_order is not None:
            out = out[:, heads_order(n_heads)]
        return out.transpose(1, 2).reshape(B, T, d_model) @ w_o.T, weights
    return mha


def test_v_projected_with_the_wrong_weight_is_never_blamed_on_the_merge():
    """The known bug of issue 12: V projected with w_k gave 'check the merge and W_O'."""
    for pick, named in ((lambda w_q, w_k, w_v: w_k, "V is projected with w_k"),
                        (lambda w_q, w_k, w_v: w_q, "V is projected with w_q")):
        with pytest.raises(CheckFailed) as info:
            checks.check_multi_head_attention(_mha_with(v_weight=pick))
        assert named in str(info.value) and "merge" not in str(info.value)


def test_an_unprobed_step_after_the_weights_names_every_candidate_including_v():
    with pytest.raises(CheckFailed) as info:
        checks.check_multi_head_attention(_mha_with(v_weight=lambda w_q, w_k, w_v: w_v + 0.5 * w_k))
    assert "a step after the weights is wrong: V's projection" in str(info.value)


def test_heads_merged_into_the_wrong_places_are_pinned_from_the_output():
    with pytest.raises(CheckFailed, match="each head's output .* right, but the merge puts them in the wrong places"):
        checks.check_multi_head_attention(_mha_with(heads_order=lambda H: list(range(H))[::-1]))


def test_wrong_weights_point_at_the_steps_before_the_softmax():
    with pytest.raises(CheckFailed, match="scores times 1.7: the scale is off"):  # q scaled: a temperature
        checks.check_multi_head_attention(_mha_with(q_factor=1.7))
    with pytest.raises(CheckFailed, match="already wrong, so the mistake is at or before the softmax"):
        checks.check_multi_head_attention(_wrong_keys)


def _wrong_keys(x, w_q, w_k, w_v, w_o, n_heads, mask=None):  # K projected with a blend of two weights
    return _mha_with()(x, w_q, w_k + 0.3 * w_v, w_v, w_o, n_heads, mask)


def test_merge_with_view_after_transpose_reports_the_error():
    def with_view(x):
        B, H, T, d = x.shape
        return x.transpose(1, 2).view(B, T, H * d)

    with pytest.raises(CheckFailed, match="raised RuntimeError: view size is not compatible"):
        checks.check_merge_heads(with_view)


def test_gqa_mistake_needs_a_real_group_to_show():
    """h % H_kv and h // group agree for MQA and MHA: the check's first case has 1 < H_kv < H."""
    wrong = next(m for m in checks.GQA_MISTAKES if m.key == "kv_head_modulo")
    with pytest.raises(CheckFailed, match="GQA, 6 query heads sharing 2 K/V heads"):
        checks.check_grouped_query_attention(wrong.impl)


# ------------------------------------------------------------------------------------------------
# Cheats: the reference, torch's built-ins, wrappers
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [(name, getattr(reference, name)) for name in CHECKS]


def _torch_mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    module = torch.nn.MultiheadAttention(x.shape[-1], n_heads, bias=False, batch_first=True, dtype=x.dtype)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        module.out_proj.weight.copy_(w_o)
    return module(x, x, x, attn_mask=None if mask is None else ~mask.expand(x.shape[0], n_heads, x.shape[1], x.shape[1]).flatten(0, 1),
                  average_attn_weights=False)


def _functional_mha(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
    xt = x.transpose(0, 1)
    return F.multi_head_attention_forward(xt, xt, xt, x.shape[-1], n_heads, torch.cat([w_q, w_k, w_v]), None,
                                          None, None, False, 0.0, w_o, None, need_weights=True,
                                          average_attn_weights=False)


def _gqa_with_enable_gqa(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    B, T, d_model = x.shape
    d = d_model // n_heads
    q = (x @ w_q.T).view(B, T, n_heads, d).transpose(1, 2)
    k = (x @ w_k.T).view(B, T, n_kv_heads, d).transpose(1, 2)
    v = (x @ w_v.T).view(B, T, n_kv_heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2).reshape(B, T, d_model) @ w_o.T, None


@pytest.mark.parametrize(
    "check, answer",
    [
        ("multi_head_attention", lambda *a: reference.multi_head_attention(*a)),
        ("multi_head_attention", lambda x, *a: reference.grouped_query_attention(x, *a[:5], a[4], *a[5:])),
        ("multi_head_attention", _torch_mha),
        ("multi_head_attention", _functional_mha),
        ("multi_head_attention", functools.partial(reference.multi_head_attention)),
        ("multi_head_attention", lambda *a: checks._mha()(*a)),
        ("grouped_query_attention", _gqa_with_enable_gqa),
        ("grouped_query_attention", lambda *a: reference.grouped_query_attention(*a)),
        ("split_heads", lambda x, h: reference.split_heads(x, h)),
        ("merge_heads", lambda x: reference.merge_heads(x)),
        ("attention_param_count", lambda *a: reference.attention_param_count(*a)),
        ("kv_cache_elements_per_token", lambda *a: reference.kv_cache_elements_per_token(*a)),
    ],
    ids=["wrapper-of-reference", "reference-gqa", "nn-MultiheadAttention", "F-multi_head_attention_forward",
         "partial", "checks-internals", "F-sdpa-enable_gqa", "gqa-wrapper", "split-wrapper", "merge-wrapper",
         "count-wrapper", "kv-wrapper"],
)
def test_answers_calling_the_reference_or_builtin_are_refused(check, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[check](answer)


def test_builtins_passed_directly_are_refused():
    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_multi_head_attention(F.multi_head_attention_forward)
    with pytest.raises(CheckFailed, match="not your own function"):
        checks.check_grouped_query_attention(F.scaled_dot_product_attention)


def test_hard_coded_visible_answers_fail_hidden_inputs():
    table = {config[:4]: loops.attention_param_count(*config) for config in checks.PARAM_CONFIGS}
    checks.check_attention_param_count(lambda *a: table[a])
    with pytest.raises(CheckFailed, match="KeyError"):
        checks.check_attention_param_count(lambda *a: table[a], **HIDDEN["attention_param_count"])

    memory = {}

    def record_then_replay(x, h):
        return memory.setdefault(tuple(x.shape), loops.split_heads(x, h))

    with pytest.raises(CheckFailed):  # the visible non-contiguous case has the same shape, other numbers
        checks.check_split_heads(record_then_replay)


# ------------------------------------------------------------------------------------------------
# Numeric answers for real model sizes
# ------------------------------------------------------------------------------------------------


def right_numbers():
    s = checks.REAL_SIZES
    d_head = s["d_model"] // s["n_heads"]
    count = loops.attention_param_count
    kv_bytes = {name: loops.kv_cache_elements_per_token(s["n_layers"], h, d_head) * s["context"] * s["bytes_per_element"]
                for name, h in (("mha", s["n_heads"]), ("gqa", s["n_kv_heads_gqa"]), ("mqa", s["n_kv_heads_mqa"]))}
    return {"params_mha": count(s["d_model"], s["n_heads"]),
                "params_gqa": count(s["d_model"], s["n_heads"], s["n_kv_heads_gqa"]),
                "params_mqa": count(s["d_model"], s["n_heads"], s["n_kv_heads_mqa"]),
                "params_gpt2": count(s["gpt2_d_model"], s["gpt2_n_heads"], None, True),
                "kv_bytes_mha": kv_bytes["mha"], "kv_bytes_gqa": kv_bytes["gqa"], "kv_bytes_mqa": kv_bytes["mqa"],
                "kv_saving_gqa": kv_bytes["mha"] / kv_bytes["gqa"]}


def test_real_numbers_are_the_published_sizes(capsys):
    answers = right_numbers()
    assert answers["params_mha"] == 67_108_864 and answers["params_gpt2"] == 2_362_368
    assert answers["kv_bytes_mha"] == 2 * 2**30 and answers["kv_bytes_gqa"] == 512 * 2**20
    checks.check_real_model_numbers(**answers)
    checks.check_real_model_numbers(**{**answers, "kv_saving_gqa": 4, "params_mha": np.int64(67108864)})
    assert capsys.readouterr().out.count("✓") == 2
    with pytest.raises(CheckFailed, match=r"^params_mha is a float \(67108864.0\); a count is an int"):
        checks.check_real_model_numbers(**{**answers, "params_mha": 67108864.0})


def test_real_numbers_name_each_known_wrong_value():
    answers = right_numbers()
    _, wrong = checks._real_numbers()
    for key, values in wrong.items():
        for value, message in values:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_real_model_numbers(**{**answers, key: value})


@pytest.mark.parametrize("key, value, message", [
    ("params_gqa", 67_108_864, "K and V are counted as d_model x d_model"),
    ("params_gpt2", 2_359_296, "bias=True gives each of the four projections a bias"),
    ("kv_bytes_gqa", 2 * 2**30, "only the n_kv_heads key/value heads"),
    ("kv_bytes_mha", 2**30, "multiply by 2 bytes"),
    ("kv_saving_gqa", 0.25, "MHA's bytes / GQA's bytes"),
    ("params_mha", 123, "is not right; W_Q, W_K, W_V and W_O"),
    ("kv_bytes_mqa", "64 MiB", "should be a number"),
])
def test_real_numbers_typical_errors(key, value, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.check_real_model_numbers(**{**right_numbers(), key: value})


def test_real_numbers_need_every_answer():
    answers = right_numbers()
    del answers["kv_saving_gqa"]
    with pytest.raises(CheckFailed, match="needs an answer for kv_saving_gqa"):
        checks.check_real_model_numbers(**answers)


# Which step each probe and catalogued mistake of exercises 3 and 4 changes: after the weights (V's
# projection or heads, the merge, W_O), only the weights returned, or at or before the softmax.
_AFTER = {"v_with_w_q", "v_with_w_k", "merge_interleaved", "v_kv_modulo", "merge_no_transpose", "no_output_projection",
          "output_projection_untransposed"}
_WEIGHTS_ONLY = {"weights_unmasked"}
_SAYS = {"after": r"a step after the weights is wrong|the merge puts them in the wrong places",
         "weights_only": r"the output is right but the weights returned are not",
         "before": r"at or before the softmax|the scale is off|do not sum to 1"}


def _gqa_cases():
    """The cases check_grouped_query_attention builds (captured from its call of check_function)."""
    captured = {}

    def capture(fn, **kwargs):
        captured.update(kwargs)

    original = checks.check_function
    object.__setattr__(checks, "check_function", capture)
    try:
        checks.check_grouped_query_attention(loops.grouped_query_attention)
    finally:
        object.__setattr__(checks, "check_function", original)
    return captured["cases"]


@pytest.mark.parametrize("wrong", [*checks.GQA_PROBES, *[m for m in checks.MHA_MISTAKES if m.key in _AFTER]],
                         ids=lambda m: m.key)
def test_the_diagnose_names_the_step_that_is_wrong_and_no_other(wrong):
    """Diagnose on its own (as if no probe and no catalogued mistake had matched): every wrong answer whose
    change lies after the weights is told so, every one whose weights are wrong is pointed before the softmax."""
    stage = "after" if wrong.key in _AFTER else "weights_only" if wrong.key in _WEIGHTS_ONLY else "before"
    impl = wrong.impl
    if wrong in checks.MHA_MISTAKES:
        impl = lambda x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None: wrong.impl(  # noqa: E731
            x, w_q, w_k, w_v, w_o, n_heads, mask) if n_kv_heads == n_heads else reference.grouped_query_attention(
            x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask)
    said = []
    for case in _gqa_cases():
        try:
            got = impl(*case.args)
        except RuntimeError:
            continue
        expected = reference.grouped_query_attention(*case.args)
        if got[1].shape != expected[1].shape or all(torch.allclose(g, e, rtol=1e-4, atol=1e-6)
                                                    for g, e in zip(got, expected)):
            continue  # another layout, or this case cannot show the mistake
        message = checks._attention_diagnose(got, expected, case) or ""
        said.append(message)
        assert re.search(_SAYS[stage], message), (case.note, message)
        for other, pattern in _SAYS.items():
            if other != stage:
                assert not re.search(pattern, message), (case.note, message)
    assert said, "no case shows this mistake"


def test_two_mistakes_at_once_name_no_probe_but_the_first_wrong_step():
    """No scale and V projected with w_k: neither probe alone is what happened, so neither is named; the
    weights already show the missing scale (a temperature of sqrt(d_head) = 2)."""
    with pytest.raises(CheckFailed) as info:
        checks.check_multi_head_attention(_mha_with(q_factor=2.0, v_weight=lambda w_q, w_k, w_v: w_k))
    message = str(info.value)
    assert "scores times 2: the scale is off" in message
    assert not [p.key for p in checks.MHA_PROBES if p.message in message]
