"""Chapter 05: the mask family and its classifier, cross-attention and the decoder block with
cross-attention, the encoder-only and encoder-decoder models, MoE and parallel blocks, against torch's
own modules (nn.MultiheadAttention, nn.TransformerEncoderLayer / DecoderLayer, nn.Transformer with
copied weights) and properties (causality, permutation invariance over memory, padding)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.attention import (
    bidirectional_mask,
    causal_mask,
    causal_padding_mask,
    classify_mask,
    cross_mask,
    model_masks,
    prefix_lm_mask,
)
from helpers.blocks import cross_attention, decoder_block
from helpers.numerics import assert_close
from helpers.shapes import ShapeError

DTYPES = [torch.float32, torch.float64]


def _randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


# ------------------------------------------------------------------------------------------------
# Masks, against loops written from their definitions and torch's own causal mask
# ------------------------------------------------------------------------------------------------


def _loop_mask(rule, lengths, T_q, T_k, prefixes=None):
    out = torch.zeros(len(lengths), T_q, T_k, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for i in range(T_q):
            for j in range(T_k):
                out[b, i, j] = rule(i, j, n, None if prefixes is None else prefixes[b])
    return out


@settings(max_examples=30, deadline=None)
@given(data=st.data(), T=st.integers(1, 7), B=st.integers(1, 3))
def test_masks_equal_their_definitions_written_as_loops(data, T, B):
    lengths = data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    prefixes = [data.draw(st.integers(0, n)) for n in lengths]
    T_tgt = data.draw(st.integers(1, 6))
    assert torch.equal(bidirectional_mask(lengths, T), _loop_mask(lambda i, j, n, p: j < n, lengths, T, T))
    assert torch.equal(causal_padding_mask(lengths, T), _loop_mask(lambda i, j, n, p: j < n and j <= i, lengths, T, T))
    assert torch.equal(prefix_lm_mask(prefixes, lengths, T),
                       _loop_mask(lambda i, j, n, p: j < n and (j <= i or j < p), lengths, T, T, prefixes))
    assert torch.equal(cross_mask(lengths, T_tgt, T), _loop_mask(lambda i, j, n, p: j < n, lengths, T_tgt, T))


def test_causal_padding_mask_matches_torchs_square_subsequent_mask():
    T = 6
    torch_causal = torch.isfinite(nn.Transformer.generate_square_subsequent_mask(T))  # 0 allowed, -inf blocked
    assert torch.equal(causal_padding_mask([T, T], T), torch_causal.expand(2, T, T))
    assert torch.equal(causal_padding_mask([T], T)[0], causal_mask(T))


def test_prefix_lm_mask_between_causal_and_bidirectional():
    lengths = torch.tensor([5, 3])
    assert torch.equal(prefix_lm_mask([0, 0], lengths, 5), causal_padding_mask(lengths, 5))
    assert torch.equal(prefix_lm_mask([1, 1], lengths, 5), causal_padding_mask(lengths, 5))
    assert torch.equal(prefix_lm_mask(lengths, lengths, 5), bidirectional_mask(lengths, 5))
    # printed: bidirectional inside the first 3 tokens, causal after them
    assert prefix_lm_mask([3], [5], 5)[0].int().tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_padding_blocks_keys_not_queries():
    mask = bidirectional_mask([2], 4)[0]
    assert mask.int().tolist() == [[1, 1, 0, 0]] * 4  # padded query rows still see the real keys


def test_model_masks_by_kind():
    enc = model_masks("encoder", [3, 2], 4)
    dec = model_masks("decoder", [3, 2], 4)
    ed = model_masks("encoder-decoder", [3, 2], 4, [5, 1], 6)
    assert set(enc) == {"self"} and set(dec) == {"self"} and set(ed) == {"encoder", "decoder", "cross"}
    assert torch.equal(enc["self"], bidirectional_mask([3, 2], 4))
    assert torch.equal(dec["self"], causal_padding_mask([3, 2], 4))
    assert torch.equal(ed["cross"], cross_mask([3, 2], 6, 4)) and ed["cross"].shape == (2, 6, 4)
    assert torch.equal(ed["decoder"], causal_padding_mask([5, 1], 6))
    assert [classify_mask(m) for m in (enc["self"], dec["self"], ed["encoder"], ed["decoder"], ed["cross"])] == \
        ["bidirectional", "causal", "bidirectional", "causal", "cross"]
    with pytest.raises(ValueError, match="kind must be one of"):
        model_masks("decoder-only", [3], 4)
    with pytest.raises(ValueError, match="needs target_lengths and T_tgt"):
        model_masks("encoder-decoder", [3], 4)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), T=st.integers(2, 8))
def test_classifier_names_every_builder_output(data, T):
    n = data.draw(st.integers(1, T))
    T_tgt = data.draw(st.sampled_from([t for t in range(1, 9) if t != T]))
    assert classify_mask(bidirectional_mask([n], T)[0]) == "bidirectional"
    assert classify_mask(causal_padding_mask([n], T)[0]) == ("causal" if n > 1 else "bidirectional")
    assert classify_mask(cross_mask([n], T_tgt, T)) == "cross"
    if n >= 3:
        p = data.draw(st.integers(2, n - 1))
        assert classify_mask(prefix_lm_mask([p], [n], T)) == "prefix-lm"
        assert classify_mask(prefix_lm_mask([p], [n], T)[:, None]) == "prefix-lm"  # (B, 1, T, T)


def test_classifier_on_left_padding_and_a_mixed_prefix_batch():
    left = causal_mask(5).clone()
    left[:, :2] = False  # the first two positions are padding
    assert classify_mask(left) == "causal"
    batch = prefix_lm_mask([2, 4, 0], [4, 4, 4], 6)  # prefix-lm, bidirectional, causal sequences
    assert classify_mask(batch) == "prefix-lm"


@pytest.mark.parametrize("mask, message", [
    (~torch.eye(4, dtype=torch.bool), "blocks the diagonal: query 0 cannot see its own token"),
    (torch.eye(3, dtype=torch.bool) | torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool),
     "is lower-triangular but query 1 cannot see the earlier key 0"),
    (torch.ones(3, 5, dtype=torch.bool).tril(), "is not square \\(3 queries x 5 keys\\)"),
    (causal_mask(4).T.contiguous(), "lets query 0 see the later key 1"),
    (torch.zeros(3, 3, dtype=torch.bool), "blocks every key"),
])
def test_classifier_refuses_masks_of_no_kind(mask, message):
    with pytest.raises(ValueError, match=message):
        classify_mask(mask)


def test_classifier_refuses_a_batch_of_different_kinds_and_bad_input():
    mixed = torch.stack([causal_mask(4), torch.ones(4, 4, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"different kinds: \['causal', 'bidirectional'\]"):
        classify_mask(mixed)
    with pytest.raises(TypeError, match="bool tensor"):
        classify_mask(causal_mask(3).float())
    with pytest.raises(ShapeError, match="got \\(4,\\)"):
        classify_mask(torch.ones(4, dtype=torch.bool))


def test_mask_builders_refuse_bad_lengths():
    with pytest.raises(ValueError, match="must lie in 0..4; got \\[5\\]"):
        bidirectional_mask([5], 4)
    with pytest.raises(ValueError, match="a prefix cannot be longer than its sequence"):
        prefix_lm_mask([4], [3], 5)
    with pytest.raises(ShapeError, match="lengths must be a 1-D integer tensor"):
        causal_padding_mask(torch.tensor([[1.0]]), 3)


# ------------------------------------------------------------------------------------------------
# Cross-attention against nn.MultiheadAttention and F.scaled_dot_product_attention
# ------------------------------------------------------------------------------------------------


def _cross_weights(d_model, n_heads, n_kv_heads, dtype, seed=0):
    d_kv = n_kv_heads * (d_model // n_heads)
    return [_randn(*shape, seed=seed + i, dtype=dtype, scale=1 / math.sqrt(d_model))
            for i, shape in enumerate([(d_model, d_model), (d_kv, d_model), (d_kv, d_model), (d_model, d_model)])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_cross_attention_equals_torch_multihead_attention(dtype, with_mask):
    B, T_tgt, T_src, d_model, H = 2, 5, 7, 12, 3
    x, memory = _randn(B, T_tgt, d_model, seed=1, dtype=dtype), _randn(B, T_src, d_model, seed=2, dtype=dtype)
    w_q, w_k, w_v, w_o = _cross_weights(d_model, H, H, dtype)
    memory_mask = torch.arange(T_src)[None, :] < torch.tensor([7, 4])[:, None] if with_mask else None  # (B, T_src)
    mha = nn.MultiheadAttention(d_model, H, bias=False, batch_first=True, dtype=dtype)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.out_proj.weight.copy_(w_o)
    expected, expected_w = mha(x, memory, memory, key_padding_mask=None if memory_mask is None else ~memory_mask,
                               average_attn_weights=False)  # torch: True = blocked
    out, weights = cross_attention(x, memory, w_q, w_k, w_v, w_o, H, memory_mask=memory_mask)
    assert out.shape == (B, T_tgt, d_model) and weights.shape == (B, H, T_tgt, T_src)
    assert_close(out, expected, n=d_model)
    assert_close(weights, expected_w, n=d_model)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_heads, n_kv_heads", [(6, 2), (6, 1), (4, 4)])
def test_grouped_cross_attention_equals_sdpa_with_enable_gqa(dtype, n_heads, n_kv_heads):
    B, T_tgt, T_src, d_model = 2, 4, 9, 12
    d_head = d_model // n_heads
    x, memory = _randn(B, T_tgt, d_model, seed=3, dtype=dtype), _randn(B, T_src, d_model, seed=4, dtype=dtype)
    w_q, w_k, w_v, w_o = _cross_weights(d_model, n_heads, n_kv_heads, dtype, seed=5)
    memory_mask = torch.arange(T_src)[None, :] < torch.tensor([3, 9])[:, None]
    q = (x @ w_q.T).view(B, T_tgt, n_heads, d_head).transpose(1, 2)
    k = (memory @ w_k.T).view(B, T_src, n_kv_heads, d_head).transpose(1, 2)
    v = (memory @ w_v.T).view(B, T_src, n_kv_heads, d_head).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_mask[:, None, None, :], enable_gqa=True)
    expected = o.transpose(1, 2).reshape(B, T_tgt, d_model) @ w_o.T
    out, _ = cross_attention(x, memory, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, memory_mask)
    assert_close(out, expected, n=d_model)


def test_cross_attention_properties():
    """Permuting memory tokens changes nothing (no positions on memory); padded memory never matters."""
    B, T_tgt, T_src, d_model, H = 2, 5, 8, 12, 3
    x, memory = _randn(B, T_tgt, d_model, seed=6), _randn(B, T_src, d_model, seed=7)
    w = _cross_weights(d_model, H, H, torch.float64, seed=8)
    out, _ = cross_attention(x, memory, *w, H)
    perm = torch.randperm(T_src, generator=torch.Generator().manual_seed(9))
    assert_close(cross_attention(x, memory[:, perm], *w, H)[0], out, n=T_src)
    mask = torch.arange(T_src)[None, :] < torch.tensor([5, 2])[:, None]
    masked, weights = cross_attention(x, memory, *w, H, memory_mask=mask)
    garbage = memory.clone()
    garbage[~mask] = 1e3 * _randn(int((~mask).sum()), d_model, seed=10)
    assert_close(cross_attention(x, garbage, *w, H, memory_mask=mask)[0], masked, n=T_src)
    assert bool((weights[~mask[:, None, None, :].expand_as(weights)] == 0).all())
    # and the causal triangle is absent: target query 0 reads source key 7
    assert bool((weights[0, :, 0, :5] > 0).all())


def test_cross_attention_bad_input_names_shapes():
    w = _cross_weights(12, 3, 3, torch.float64)
    with pytest.raises(ShapeError, match=r"memory must be \(B, T_src, d_model\) with B = 2 and d_model = 12; got \(3, 4, 12\)"):
        cross_attention(_randn(2, 5, 12, seed=0), _randn(3, 4, 12, seed=0), *w, 3)
    with pytest.raises(ShapeError, match=r"memory_mask must be a bool key-padding mask of shape \(B, T_src\) = \(2, 4\)"):
        cross_attention(_randn(2, 5, 12, seed=0), _randn(2, 4, 12, seed=0), *w, 3, memory_mask=torch.ones(2, 5, 4).bool())
