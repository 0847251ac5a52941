"""helpers.heads against oracles nobody here wrote: torch.nn.MultiheadAttention, torch's fused attention
with enable_gqa, nn.Linear parameter counts, published model sizes, and properties that can fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.attention import causal_mask, padding_mask
from helpers.heads import (
    MultiHeadAttention,
    attention_param_count,
    grouped_query_attention,
    kv_cache_elements_per_token,
    kv_head_for_query_head,
    merge_heads,
    multi_head_attention,
    repeat_kv,
    split_heads,
)
from helpers.numerics import assert_close, close, tolerances
from helpers.shapes import ShapeError

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    # the course's one rule for float comparisons (torch's defaults for these short reductions)
    return tolerances(dtype)


def randn(*shape, gen, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def make(B=2, T=5, H=3, H_kv=None, d_head=4, dtype=torch.float32, seed=0):
    """x and nn.Linear-layout weights; d_model = H * d_head, K/V width H_kv * d_head."""
    gen = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    d_model, d_kv = H * d_head, H_kv * d_head
    s = d_model ** -0.5
    x = randn(B, T, d_model, gen=gen, dtype=dtype)
    w = (randn(d_model, d_model, gen=gen, dtype=dtype, scale=s), randn(d_kv, d_model, gen=gen, dtype=dtype, scale=s),
         randn(d_kv, d_model, gen=gen, dtype=dtype, scale=s), randn(d_model, d_model, gen=gen, dtype=dtype, scale=s))
    return x, w


def torch_mha(x, w, n_heads, **kwargs):
    """torch.nn.MultiheadAttention holding our weights: in_proj = [W_Q; W_K; W_V], out_proj = W_O."""
    d_model = x.shape[-1]
    module = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True, dtype=x.dtype)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat(w[:3]))
        module.out_proj.weight.copy_(w[3])
    with torch.no_grad():
        return module(x, x, x, need_weights=True, **kwargs)


# ------------------------------------------------------------------------------------------------
# Splitting and merging
# ------------------------------------------------------------------------------------------------


def test_split_gives_each_head_its_own_block_of_features():
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).reshape(2, 5, 12)  # (B, T, d_model)
    heads = split_heads(x, 3)  # (B, H, T, d_head)
    assert heads.shape == (2, 3, 5, 4)
    for h in range(3):
        assert torch.equal(heads[:, h], x[:, :, 4 * h:4 * (h + 1)])


def test_split_without_transpose_is_a_different_tensor():
    """The classic bug the chapter shows: same shape, wrong contents (so the test above can fail)."""
    x = torch.arange(2 * 5 * 12, dtype=torch.float32).reshape(2, 5, 12)
    wrong = x.reshape(2, 3, 5, 4)
    assert wrong.shape == split_heads(x, 3).shape and not torch.equal(wrong, split_heads(x, 3))
    assert not torch.equal(wrong[:, 0], x[:, :, 0:4])


@settings(max_examples=30, deadline=None, derandomize=True)
@given(B=st.integers(1, 3), T=st.integers(1, 6), H=st.integers(1, 5), d_head=st.integers(1, 5),
       contiguous=st.booleans(), double=st.booleans())
def test_merge_inverts_split(B, T, H, d_head, contiguous, double):
    dtype = torch.float64 if double else torch.float32
    x = torch.randn(B, T, H * d_head, dtype=dtype) if contiguous else torch.randn(B, H * d_head, T, dtype=dtype).transpose(1, 2)
    assert torch.equal(merge_heads(split_heads(x, H)), x)
    heads = torch.randn(B, H, T, d_head, dtype=dtype)
    assert torch.equal(split_heads(merge_heads(heads), H), heads)


def test_repeat_kv_and_the_head_mapping():
    kv = torch.arange(2.0).reshape(1, 2, 1, 1)  # (B, H_kv, T, d_head): heads k0, k1
    assert repeat_kv(kv, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    assert [kv_head_for_query_head(h, 6, 2) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [kv_head_for_query_head(h, 8, 1) for h in range(8)] == [0] * 8  # MQA
    assert [kv_head_for_query_head(h, 4, 4) for h in range(4)] == [0, 1, 2, 3]  # MHA


# ------------------------------------------------------------------------------------------------
# Multi-head attention against torch.nn.MultiheadAttention
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_mha_matches_torch_without_mask(dtype):
    x, w = make(dtype=dtype)
    out, weights = multi_head_attention(x, *w, 3)
    assert out.shape == (2, 5, 12) and weights.shape == (2, 3, 5, 5) and out.dtype == dtype
    t_out, t_weights = torch_mha(x, w, 3, average_attn_weights=False)
    torch.testing.assert_close(out, t_out, **tol(dtype))
    torch.testing.assert_close(weights, t_weights, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mha_matches_torch_with_causal_and_padding_masks(dtype):
    """nn.MultiheadAttention's bool masks mean True = blocked: pass ~mask."""
    x, w = make(B=3, T=6, H=2, d_head=5, dtype=dtype, seed=1)
    causal = causal_mask(6)  # (T, T)
    pad = padding_mask([6, 4, 2], 6)  # (B, 1, T)
    out, weights = multi_head_attention(x, *w, 2, causal & pad[:, None])  # mask (B, 1, T, T)
    t_out, t_weights = torch_mha(x, w, 2, attn_mask=~causal, key_padding_mask=~pad[:, 0],
                                 average_attn_weights=False)
    torch.testing.assert_close(out, t_out, **tol(dtype))
    torch.testing.assert_close(weights, t_weights, **tol(dtype))


def test_torch_default_weights_are_the_head_average():
    x, w = make(dtype=torch.float64)
    _, weights = multi_head_attention(x, *w, 3)
    _, averaged = torch_mha(x, w, 3)  # average_attn_weights=True is the default
    assert averaged.shape == (2, 5, 5)
    torch.testing.assert_close(averaged, weights.mean(dim=1))


def test_mha_is_the_sum_of_per_head_outputs_through_blocks_of_w_o():
    """Concat + W_O equals sum over heads of head_h @ W_O[:, block h].T (the block-matrix view)."""
    x, w = make(dtype=torch.float64)
    out, _weights = multi_head_attention(x, *w, 3)
    total = torch.zeros_like(out)
    for h in range(3):
        rows = slice(4 * h, 4 * (h + 1))
        q, k, v = (x @ w_[rows].T for w_ in w[:3])  # (B, T, d_head) each
        head = F.scaled_dot_product_attention(q, k, v)  # (B, T, d_head)
        total += head @ w[3][:, rows].T
    torch.testing.assert_close(out, total)


def test_one_head_is_chapter_01_attention_with_projections():
    x, w = make(H=1, d_head=6, dtype=torch.float64)
    out, weights = multi_head_attention(x, *w, 1)
    q, k, v = (x @ w_.T for w_ in w[:3])
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v) @ w[3].T)
    assert weights.shape == (2, 1, 5, 5)


@pytest.mark.parametrize("position", range(5))
def test_causal_mha_never_sees_the_future(position):
    x, w = make(T=5)
    out, _ = multi_head_attention(x, *w, 3, causal_mask(5))
    x2 = x.clone()
    x2[:, position] += 3.0
    out2, _ = multi_head_attention(x2, *w, 3, causal_mask(5))
    assert close(out[:, :position], out2[:, :position], n=12)
    assert not close(out[:, position:], out2[:, position:], n=12)


def test_fully_blocked_rows_give_zeros_not_nan():
    x, w = make(B=2, T=4)
    pad = padding_mask([4, 0], 4)[:, None]  # (B, 1, 1, T): sequence 1 has no real key
    out, weights = multi_head_attention(x, *w, 3, pad)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.equal(weights[1], torch.zeros_like(weights[1]))


# ------------------------------------------------------------------------------------------------
# Grouped-query attention
# ------------------------------------------------------------------------------------------------


def torch_gqa(x, w, n_heads, n_kv_heads, mask=None):
    """Projections by hand, attention by torch's fused kernel with enable_gqa=True: (out, weights)."""
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    q = (x @ w[0].T).view(B, T, n_heads, d_head).transpose(1, 2)
    k = (x @ w[1].T).view(B, T, n_kv_heads, d_head).transpose(1, 2)
    v = (x @ w[2].T).view(B, T, n_kv_heads, d_head).transpose(1, 2)
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, d_head)
    eye = torch.eye(T, dtype=x.dtype).expand(B, n_kv_heads, T, T)  # values = identity -> output = weights
    weights = F.scaled_dot_product_attention(q, k, eye, attn_mask=mask, enable_gqa=True)  # (B, H, T, T)
    return heads.transpose(1, 2).reshape(B, T, d_model) @ w[3].T, weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H, H_kv", [(6, 2), (6, 3), (4, 1), (4, 4)], ids=["GQA-6-2", "GQA-6-3", "MQA", "MHA"])
def test_gqa_matches_torch_enable_gqa(dtype, H, H_kv):
    x, w = make(B=2, T=5, H=H, H_kv=H_kv, d_head=3, dtype=dtype, seed=2)
    mask = causal_mask(5)
    out, weights = grouped_query_attention(x, *w, H, H_kv, mask)
    assert out.shape == (2, 5, 3 * H) and weights.shape == (2, H, 5, 5)
    t_out, t_weights = torch_gqa(x, w, H, H_kv, mask)
    torch.testing.assert_close(out, t_out, **tol(dtype))
    torch.testing.assert_close(weights, t_weights, **tol(dtype))


def test_enable_gqa_uses_the_h_floordiv_group_convention():
    """torch's grouping equals repeat_interleave (h // group), not repeat (h % H_kv)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 6, 4, 5, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    fused = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(fused, F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3)))
    modulo = F.scaled_dot_product_attention(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1))
    assert not torch.allclose(fused, modulo)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gqa_with_all_kv_heads_is_mha(dtype):
    x, w = make(H=4, d_head=3, dtype=dtype)
    for got, want in zip(grouped_query_attention(x, *w, 4, 4, causal_mask(5)), multi_head_attention(x, *w, 4, causal_mask(5))):
        assert torch.equal(got, want)


def repeat_kv_weight(w_kv, n_kv_heads, group):
    """(H_kv * d_head, d_model) -> (H * d_head, d_model): K/V head g's rows repeated for its query heads."""
    d_head = w_kv.shape[0] // n_kv_heads
    return w_kv.view(n_kv_heads, d_head, -1).repeat_interleave(group, dim=0).reshape(n_kv_heads * group * d_head, -1)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(B=st.integers(1, 3), T=st.integers(1, 6), H_kv=st.integers(1, 3), group=st.integers(1, 3),
       d_head=st.integers(1, 4), seed=st.integers(0, 2**16), double=st.booleans(), masked=st.booleans())
def test_gqa_is_mha_with_repeated_kv_weights(B, T, H_kv, group, d_head, seed, double, masked):
    dtype = torch.float64 if double else torch.float32
    H = H_kv * group
    x, w = make(B=B, T=T, H=H, H_kv=H_kv, d_head=d_head, dtype=dtype, seed=seed)
    mask = causal_mask(T) if masked else None
    w_full = (w[0], repeat_kv_weight(w[1], H_kv, group), repeat_kv_weight(w[2], H_kv, group), w[3])
    got = grouped_query_attention(x, *w, H, H_kv, mask)
    want = multi_head_attention(x, *w_full, H, mask)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, **tol(dtype))
    t_out, t_weights = torch_gqa(x, w, H, H_kv, mask)
    torch.testing.assert_close(got[0], t_out, **tol(dtype))
    torch.testing.assert_close(got[1], t_weights, **tol(dtype))


def test_the_repeated_weight_property_fails_for_the_modulo_mapping():
    """The property above can fail: with K/V weights repeated as h % H_kv it does not hold."""
    x, w = make(H=6, H_kv=2, d_head=3, dtype=torch.float64)
    d_head = 3
    modulo = lambda w_kv: w_kv.view(2, d_head, -1).repeat(3, 1, 1).reshape(6 * d_head, -1)
    wrong = multi_head_attention(x, w[0], modulo(w[1]), modulo(w[2]), w[3], 6)
    assert not torch.allclose(grouped_query_attention(x, *w, 6, 2)[0], wrong[0])


# ------------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d_model, n_heads", [(8, 2), (768, 12), (96, 6)])
@pytest.mark.parametrize("bias", [False, True])
def test_param_count_matches_nn_multiheadattention(d_model, n_heads, bias):
    module = torch.nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True)
    assert attention_param_count(d_model, n_heads, bias=bias) == sum(p.numel() for p in module.parameters())
    assert attention_param_count(d_model, n_heads, n_heads, bias) == attention_param_count(d_model, n_heads, bias=bias)


@pytest.mark.parametrize("d_model, n_heads, n_kv_heads", [(4096, 32, 8), (64, 8, 1), (96, 6, 3), (48, 4, 4)])
@pytest.mark.parametrize("bias", [False, True])
def test_param_count_matches_nn_linear_layers(d_model, n_heads, n_kv_heads, bias):
    d_kv = n_kv_heads * (d_model // n_heads)
    layers = [torch.nn.Linear(d_model, out, bias=bias, device="meta") for out in (d_model, d_kv, d_kv, d_model)]
    assert attention_param_count(d_model, n_heads, n_kv_heads, bias) == sum(p.numel() for l in layers for p in l.parameters())


def test_param_count_of_the_module():
    for n_kv in (8, 2, 1):
        module = MultiHeadAttention(64, 8, n_kv)
        assert sum(p.numel() for p in module.parameters()) == attention_param_count(64, 8, n_kv)


def test_param_counts_of_published_models():
    # GPT-2 small: c_attn (768 -> 2304) + c_proj (768 -> 768), both with biases, per layer
    assert attention_param_count(768, 12, bias=True) == 768 * 2304 + 2304 + 768 * 768 + 768 == 2_362_368
    # Llama-2-7B: q, k, v, o projections 4096 x 4096, no bias
    assert attention_param_count(4096, 32) == 4 * 4096 * 4096
    # Llama-3-8B / Mistral-7B: 8 K/V heads of width 128 -> k_proj and v_proj are 1024 x 4096
    assert attention_param_count(4096, 32, 8) == 2 * 4096 * 4096 + 2 * 1024 * 4096


def test_kv_cache_matches_a_real_cache_tensor_and_published_sizes():
    n_layers, n_kv_heads, d_head, T = 3, 2, 5, 7
    cache = torch.empty(n_layers, 2, n_kv_heads, T, d_head, device="meta")  # (layers, K/V, H_kv, T, d_head)
    assert kv_cache_elements_per_token(n_layers, n_kv_heads, d_head) * T == cache.numel()
    # The course's chapter 07 example: 32 layers, 32 KV heads, d_head 128, fp16, 4096 tokens = 2 GiB
    assert kv_cache_elements_per_token(32, 32, 128) * 4096 * 2 == 2 * 2**30
    assert kv_cache_elements_per_token(32, 32, 128) // kv_cache_elements_per_token(32, 8, 128) == 4


# ------------------------------------------------------------------------------------------------
# The module
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [None, 4, 2, 1])
def test_module_runs_the_functions_with_its_weights(n_kv_heads):
    torch.manual_seed(0)
    module = MultiHeadAttention(16, 4, n_kv_heads)
    x = torch.randn(2, 6, 16)
    mask = causal_mask(6) & padding_mask([6, 3], 6)[:, None]
    out, weights = module(x, mask)
    w = (module.q_proj.weight, module.k_proj.weight, module.v_proj.weight, module.o_proj.weight)
    want = grouped_query_attention(x, *w, 4, module.n_kv_heads, mask)
    assert out.shape == (2, 6, 16) and weights.shape == (2, 4, 6, 6)
    assert_close(out, want[0], n=16)
    assert_close(weights, want[1], n=16)
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())
    assert all(layer.bias is None for layer in (module.q_proj, module.k_proj, module.v_proj, module.o_proj))


def test_module_matches_torch_multiheadattention():
    torch.manual_seed(1)
    module = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    w = (module.q_proj.weight, module.k_proj.weight, module.v_proj.weight, module.o_proj.weight)
    t_out, t_weights = torch_mha(x, [t.detach() for t in w], 3, attn_mask=~causal_mask(5), average_attn_weights=False)
    out, weights = module(x, causal_mask(5))
    torch.testing.assert_close(out, t_out)
    torch.testing.assert_close(weights, t_weights)


# ------------------------------------------------------------------------------------------------
# Bad input: errors name what was expected and what was received
# ------------------------------------------------------------------------------------------------

_x, _w = make()  # d_model 12, H 3


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: split_heads(torch.randn(2, 5, 12), 5), ShapeError, ["d_model = 12", "n_heads = 5"]),
        (lambda: split_heads(torch.randn(5, 12), 3), ShapeError, ["(B, T, d_model)", "(5, 12)"]),
        (lambda: split_heads(torch.ones(2, 5, 12, dtype=torch.long), 3), TypeError, ["floating-point", "torch.int64"]),
        (lambda: split_heads(torch.randn(2, 5, 12), 0), ValueError, ["positive int", "0"]),
        (lambda: merge_heads(torch.randn(2, 5, 12)), ShapeError, ["(B, H, T, d_head)", "(2, 5, 12)"]),
        (lambda: multi_head_attention(_x, *_w, 5), ShapeError, ["d_model = 12", "n_heads = 5"]),
        (lambda: multi_head_attention(_x, _w[0], _w[1][:8], _w[2], _w[3], 3), ShapeError, ["w_k", "(12, 12)", "(8, 12)"]),
        (lambda: multi_head_attention(_x, _w[0].T[:, :6], *_w[1:], 3), ShapeError, ["w_q", "(d_model, d_model)", "(12, 6)"]),
        (lambda: multi_head_attention(_x, *_w, 3, padding_mask([5, 3], 5)), ShapeError, ["(2, 1, 5)", "mask[:, None]", "(B, 1, 1, T_k)"]),
        (lambda: multi_head_attention(_x, *_w, 3, torch.ones(5, 5)), TypeError, ["bool", "torch.float32"]),
        (lambda: multi_head_attention(_x, *_w, 3, torch.ones(4, 5, dtype=torch.bool)), ShapeError, ["(4, 5)", "(2, 3, 5, 5)"]),
        (lambda: multi_head_attention(_x.double(), *_w, 3), TypeError, ["x torch.float64", "w_q torch.float32"]),
        (lambda: grouped_query_attention(_x, *_w, 3, 2), ShapeError, ["n_heads = 3", "n_kv_heads = 2"]),
        (lambda: grouped_query_attention(_x, *_w, 3, 1), ShapeError, ["w_k", "(n_kv_heads * d_head, d_model)", "(4, 12)", "(12, 12)"]),
        (lambda: attention_param_count(100, 8), ShapeError, ["d_model = 100", "n_heads = 8"]),
        (lambda: attention_param_count(64, 8, 3), ShapeError, ["n_heads = 8", "n_kv_heads = 3"]),
        (lambda: attention_param_count(64, 8, bias=1), TypeError, ["bias", "True or False"]),
        (lambda: kv_cache_elements_per_token(32, 0, 128), ValueError, ["n_kv_heads", "positive int"]),
        (lambda: kv_head_for_query_head(6, 6, 2), ValueError, ["0..5", "6"]),
        (lambda: MultiHeadAttention(64, 8, 3), ShapeError, ["n_heads = 8", "n_kv_heads = 3"]),
        (lambda: MultiHeadAttention(60, 8), ShapeError, ["d_model = 60", "n_heads = 8"]),
    ],
)
def test_bad_input_names_expected_and_received_shapes(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
