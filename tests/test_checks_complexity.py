"""Chapter 07's checks: they accept correct answers written independently, name every catalogued
mistake with its own message, and refuse the reference, the shared model's cache and torch's attention."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers.checks.complexity as checks
import helpers.complexity as reference
from helpers import blocks
from helpers.attention import scaled_dot_product_attention as chapter01_attention
from helpers.checks import CheckFailed

from . import loops_complexity as loops
from .hidden import hidden_inputs

CHECKS = {
    "attention_flops": checks.check_attention_flops,
    "mlp_flops": checks.check_mlp_flops,
    "kv_cache_bytes": checks.check_kv_cache_bytes,
    "embed_new_tokens": checks.check_embed_new_tokens,
    "attend_with_cache": checks.check_attend_with_cache,
    "online_softmax_attention": checks.check_online_softmax_attention,
    "decode_roofline": checks.check_decode_roofline,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("complexity", CHECKS)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "attention_flops": {"multiply_add_as_one", "n_heads_for_kv"},
    "mlp_flops": {"multiply_add_as_one"},
    "kv_cache_bytes": {"k_or_v_only", "one_layer", "bytes_fixed_two", "bytes_fixed_four"},
    "embed_new_tokens": {"offset_minus_one", "offset_plus_one"},
    "attend_with_cache": {"top_left_mask", "mask_off_by_one"},
    "online_softmax_attention": {"sum_not_rescaled", "no_running_max"},
    "decode_roofline": {"multiply_add_as_one", "weights_per_sequence", "times_added", "flops_over_peak"},
}


# ------------------------------------------------------------------------------------------------
# Other correct answers
# ------------------------------------------------------------------------------------------------


def attend_with_sdpa_core(q, k_new, v_new, k_cache, v_cache):
    """Chapter 01's attention (allowed), expand-then-reshape for the groups, mask from arange."""
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    B, H_kv, T_k, d = k_all.shape
    g = q.shape[1] // H_kv
    k = k_all[:, :, None].expand(B, H_kv, g, T_k, d).reshape(B, H_kv * g, T_k, d)
    v = v_all[:, :, None].expand(B, H_kv, g, T_k, d).reshape(B, H_kv * g, T_k, d)
    T_q = q.shape[2]
    mask = torch.arange(T_k, device=q.device)[None, :] <= torch.arange(T_k - T_q, T_k, device=q.device)[:, None]
    out, _ = chapter01_attention(q, k, v, mask)
    return out, k_all, v_all


def online_with_logsumexp_by_hand(q, k, v, block_size):
    """Keeps the running log-sum-exp instead of (m, l): also an online softmax."""
    lse = torch.full((*q.shape[:-1], 1), -math.inf, dtype=q.dtype, device=q.device)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for s0 in range(0, k.shape[-2], block_size):
        s = q @ k[..., s0:s0 + block_size, :].transpose(-2, -1) / math.sqrt(q.shape[-1])
        top = torch.maximum(lse, s.amax(-1, keepdim=True))
        new = top + torch.log(torch.exp(lse - top) + torch.exp(s - top).sum(-1, keepdim=True))
        acc = acc * torch.exp(lse - new) + torch.exp(s - new) @ v[..., s0:s0 + block_size, :]
        lse = new
    return acc


def test_other_correct_answers_pass(capsys):
    checks.check_attend_with_cache(attend_with_sdpa_core)
    checks.check_attend_with_cache(attend_with_sdpa_core, **HIDDEN["attend_with_cache"])
    checks.check_online_softmax_attention(online_with_logsumexp_by_hand)
    checks.check_online_softmax_attention(online_with_logsumexp_by_hand, **HIDDEN["online_softmax_attention"])
    checks.check_embed_new_tokens(lambda ids, wte, wpe, n: F.embedding(ids, wte) + wpe[n:n + ids.shape[1]])
    checks.check_mlp_flops(lambda d, f, T, kind="gelu": (6 if kind == "swiglu" else 4) * T * d * f)
    assert capsys.readouterr().out.count("✓") == 6


def test_counts_accept_python_and_numpy_integers(capsys):
    checks.check_mlp_flops(lambda *a: np.int64(loops.mlp_flops(*a)))
    checks.check_kv_cache_bytes(lambda *a: int(loops.kv_cache_bytes(*a)))
    checks.check_attention_flops(lambda *a: {k: np.int64(v) for k, v in loops.attention_flops(*a).items()})
    assert capsys.readouterr().out.count("✓") == 3


@pytest.mark.parametrize("wrap, message", [
    (float, r"is a float \(\d+\.0\); a count is an int: use //"),
    (torch.tensor, r"is a 0-d tensor \(\d+\); a count is a Python int: return int\(...\) or .item\(\)"),
], ids=["float", "tensor"])
def test_counts_name_a_whole_float_or_a_tensor(wrap, message):
    with pytest.raises(CheckFailed, match=r"^mlp_flops " + message):
        checks.check_mlp_flops(lambda *a: wrap(loops.mlp_flops(*a)))
    with pytest.raises(CheckFailed, match=r"^attention_flops\['projections'\] " + message):
        checks.check_attention_flops(lambda *a: {k: wrap(v) for k, v in loops.attention_flops(*a).items()})


def test_counts_refuse_fractions_wrong_keys_and_unknown_errors():
    with pytest.raises(CheckFailed, match="not a whole number"):
        checks.check_mlp_flops(lambda *a: loops.mlp_flops(*a) + 0.5)
    with pytest.raises(CheckFailed, match="should return a dict with the keys projections, scores, values, output"):
        checks.check_attention_flops(lambda *a: sum(loops.attention_flops(*a).values()))
    with pytest.raises(CheckFailed, match=r"scores not right \(got 1 for scores\)"):
        checks.check_attention_flops(lambda *a: {**loops.attention_flops(*a), "scores": 1})
    with pytest.raises(CheckFailed, match=r"kv_cache_bytes\(n_layers=32.*\) = 7 is not right; 2 \(K and V\)"):
        checks.check_kv_cache_bytes(lambda *a: 7)


def test_the_flop_counter_agrees_with_the_checked_counts():
    """The check's expected numbers are what torch's FlopCounterMode measures on the shared model's attention."""
    from torch.utils.flop_counter import FlopCounterMode

    for d, h, T, kv in checks.ATTENTION_CONFIGS[:2] + checks.ATTENTION_CONFIGS[4:]:
        attn = blocks.Attention(blocks.ModelConfig(vocab_size=3, d_model=d, n_heads=h, n_kv_heads=kv))
        with FlopCounterMode(display=False) as counter:
            attn(torch.randn(1, T, d))
        assert counter.get_total_flops() == sum(loops.attention_flops(d, h, T, kv).values())


def test_dtype_kept_by_the_online_softmax():
    def float32_inside(q, k, v, b):
        return loops.online_softmax_attention(q.float(), k.float(), v.float(), b)

    with pytest.raises(CheckFailed, match="dtype torch.float32; expected torch.float64"):
        checks.check_online_softmax_attention(float32_inside)


def _whole_matrix_online(q, k, v, block_size):
    """Right numbers, but every key's score at once: exp(S - max) with no blocks and no running statistics."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p @ v) / p.sum(-1, keepdim=True)


def _whole_matrix_broadcast(q, k, v, block_size):
    s = (q[..., :, None, :] * k[..., None, :, :]).sum(-1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    p = torch.exp(s - s.amax(-1, keepdim=True))
    return (p @ v) / p.sum(-1, keepdim=True)


def _two_blocks_at_once(q, k, v, block_size):
    """A real online softmax, but over blocks twice as wide as block_size."""
    return online_with_logsumexp_by_hand(q, k, v, 2 * block_size)


@pytest.mark.parametrize("answer, width", [(_whole_matrix_online, "the whole score matrix"),
                                           (_whole_matrix_broadcast, "the whole score matrix"),
                                           (_two_blocks_at_once, "scores for 8 keys at once")],
                         ids=["matmul", "broadcast", "double-blocks"])
@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_scores_wider_than_a_block_are_refused(answer, width, hidden):
    """The values are right, so only the shapes of the scores the answer forms can tell."""
    kwargs = HIDDEN["online_softmax_attention"] if hidden else {}
    if hidden:
        width = width.replace("8 keys", "10 keys")
    with pytest.raises(CheckFailed, match=rf"forms {width} \(a tensor of shape .*\) with block_size = \d+ "
                                          r".*loop over blocks of at most block_size keys"):
        checks.check_online_softmax_attention(answer, **kwargs)


def test_a_mistake_only_visible_with_a_real_group_is_caught_by_the_gqa_case():
    wrong = next(m for m in checks.STEP_MISTAKES if m.key == "kv_head_modulo")
    with pytest.raises(CheckFailed, match="6 query heads sharing 2 K/V heads"):
        checks.check_attend_with_cache(wrong.impl)


# ------------------------------------------------------------------------------------------------
# Cheats
# ------------------------------------------------------------------------------------------------


def _sdpa_step(q, k_new, v_new, k_cache, v_cache):
    k_all, v_all = torch.cat([k_cache, k_new], 2), torch.cat([v_cache, v_new], 2)
    mask = blocks.cached_causal_mask(q.shape[2], k_all.shape[2])
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True), k_all, v_all


def _layer_cache_step(q, k_new, v_new, k_cache, v_cache):
    cache = blocks.LayerCache()
    if k_cache.shape[2]:
        cache.update(k_cache, v_cache)
    k_all, v_all = cache.update(k_new, v_new)
    return attend_with_sdpa_core(q, k_new, v_new, k_cache, v_cache)[0], k_all, v_all


def _softmax_online(q, k, v, block_size):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("check, answer", [
    ("attention_flops", lambda d, h, T, kv=None: reference.attention_flops(d, h, T, n_kv_heads=kv)),
    ("mlp_flops", lambda d, f, T, kind="gelu": reference.mlp_flops(d, f, T, kind=kind)),
    ("kv_cache_bytes", lambda L, h, d, t, b, dt: reference.kv_cache_bytes(L, h, d, t, b, dt)),
    ("embed_new_tokens", lambda *a: reference.embed_new_tokens(*a)),
    ("attend_with_cache", lambda *a: reference.attend_with_cache(*a)),
    ("attend_with_cache", _sdpa_step),
    ("attend_with_cache", _layer_cache_step),
    ("online_softmax_attention", lambda q, k, v, b: reference.tiled_attention(q, k, v, block_size=b)),
    ("online_softmax_attention", lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v)),
    ("online_softmax_attention", _softmax_online),
], ids=["attention-flops-ref", "mlp-ref", "kv-ref", "embed-ref", "step-ref", "step-F-sdpa", "step-LayerCache",
        "tiled-ref", "F-sdpa", "torch-softmax"])
def test_answers_calling_the_reference_or_builtin_are_refused(check, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[check](answer)


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [(name, getattr(reference, name)) for name in ("embed_new_tokens", "attend_with_cache")]


def test_hard_coded_visible_answers_fail_hidden_inputs():
    table = {c: loops.mlp_flops(*c) for c in checks.MLP_CONFIGS}
    checks.check_mlp_flops(lambda *a: table[a])
    with pytest.raises(CheckFailed, match="KeyError"):
        checks.check_mlp_flops(lambda *a: table[a], **HIDDEN["mlp_flops"])


# ------------------------------------------------------------------------------------------------
# Numeric answers for real decoders
# ------------------------------------------------------------------------------------------------


def right_numbers():
    s = checks.REAL_CONFIGS
    kv = {name: loops.kv_cache_bytes(c["n_layers"], c["n_kv_heads"], c["d_head"], c["context"], 1, torch.float16)
          for name, c in ((n, s[n]) for n in ("llama2_7b", "llama3_8b", "falcon_7b"))}
    return {"kv_llama2_7b": kv["llama2_7b"], "kv_llama3_8b": kv["llama3_8b"], "kv_falcon_7b": kv["falcon_7b"],
            "kv_batch_llama3": kv["llama3_8b"] * s["batch"],
            "max_batch_llama3": (s["gpu_bytes"] - s["weight_bytes_llama3"]) // kv["llama3_8b"],
            "gqa_saving_llama3": s["llama3_8b"]["n_heads"] / s["llama3_8b"]["n_kv_heads"]}


def test_real_numbers_are_the_published_sizes(capsys):
    answers = right_numbers()
    assert answers["kv_llama2_7b"] == 2 * 2**30  # the seeds' example: 2 GiB per 4096-token sequence
    assert answers["kv_llama3_8b"] == 2**30 and answers["kv_falcon_7b"] == 16 * 2**20
    assert answers["max_batch_llama3"] == 65
    checks.check_kv_cache_numbers(**answers)
    assert "✓" in capsys.readouterr().out


def test_real_numbers_name_each_known_wrong_value():
    answers = right_numbers()
    _, wrong = checks._real_numbers()
    for key, values in wrong.items():
        for value, message in values:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_kv_cache_numbers(**{**answers, key: value})


@pytest.mark.parametrize("key, value, message", [
    ("kv_llama3_8b", 4 * 2**30, "n_heads was used where n_kv_heads belongs"),
    ("kv_llama2_7b", 2**30, "only one of K and V is counted"),
    ("kv_falcon_7b", 2**19, "this is one layer's cache"),
    ("max_batch_llama3", 80, "the weights take memory too"),
    ("kv_llama2_7b", 123, "is not right; 2 (K and V)"),
])
def test_real_numbers_typical_errors(key, value, message):
    with pytest.raises(CheckFailed, match=re.escape(message)):
        checks.check_kv_cache_numbers(**{**right_numbers(), key: value})


# ------------------------------------------------------------------------------------------------
# Exercise 8: a decode step on the roofline
# ------------------------------------------------------------------------------------------------


def test_roofline_configs_cover_both_sides_of_the_ridge():
    """Every catalogued mistake is told apart only if the configurations hold memory- and compute-bound
    steps, widths other than 2 bytes and ridges that are not whole batches."""
    for configs in (checks.ROOFLINE_CONFIGS, HIDDEN["decode_roofline"]["configs"]):
        right = [loops.decode_roofline(*c) for c in configs]
        assert any(c[1] < r["crossover_batch"] for c, r in zip(configs, right))
        assert any(c[1] >= r["crossover_batch"] for c, r in zip(configs, right))
        assert any(c[2] != 2 for c in configs)


def test_roofline_partial_mistakes_are_named_by_their_first_wrong_value():
    def times_added_only(*args):
        out = loops.decode_roofline(*args)
        n, batch, size, peak, bandwidth = args
        out["seconds"] = 2 * n * batch / peak + n * size / bandwidth
        return out

    def crossover_float(*args):
        return {**loops.decode_roofline(*args), "crossover_batch": float(loops.decode_roofline(*args)["crossover_batch"])}

    with pytest.raises(CheckFailed, match="adds the compute time and the memory time"):
        checks.check_decode_roofline(times_added_only)
    with pytest.raises(CheckFailed, match=re.escape("is a float (296.0); a count is an int")):
        checks.check_decode_roofline(crossover_float)
    with pytest.raises(CheckFailed, match="should return a dict with the keys intensity, seconds, crossover_batch"):
        checks.check_decode_roofline(lambda *a: 4.8e-3)
