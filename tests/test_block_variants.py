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
from helpers.blocks import (
    BalancedMoEFFN,
    CrossDecoderBlock,
    DecoderBlock,
    EncoderBlock,
    ModelConfig,
    TinyDecoder,
    TinyEncoder,
    TinyEncoderDecoder,
    build_model,
    cross_attention,
    decoder_block,
    model_param_count,
    moe_balance_loss,
    parallel_block,
)
from helpers.numerics import assert_close
from helpers.shapes import ShapeError

from .randomize import randomize

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


def test_classifier_names_a_batch_by_the_plainest_kind_that_fits_every_sequence():
    assert classify_mask(torch.stack([causal_mask(4), torch.ones(4, 4, dtype=torch.bool)])) == "prefix-lm"
    assert classify_mask(causal_padding_mask([4, 1], 4)) == "causal"  # one real token fits any kind
    assert classify_mask(bidirectional_mask([1, 3], 4)) == "bidirectional"
    bad = torch.stack([causal_mask(4), ~torch.eye(4, dtype=torch.bool)])
    with pytest.raises(ValueError, match="sequence 1 of the batch blocks the diagonal"):
        classify_mask(bad)


def test_classifier_refuses_bad_input():
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


# ------------------------------------------------------------------------------------------------
# Blocks and models against torch's TransformerEncoderLayer / TransformerDecoderLayer / Transformer
# ------------------------------------------------------------------------------------------------
#
# torch's layers are built with bias=False where the API allows (attention projections, FFN linears
# and LayerNorm betas all go); for bias=True configs torch's attention biases are zeroed (ours have
# none) and the FFN biases and LayerNorm betas are copied. dropout=0, eval mode, and torch's boolean
# masks are ours inverted (torch: True = blocked).


def _config(**overrides) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 40, "d_model": 12, "n_heads": 3, "d_ff": 20, "max_seq_len": 16, **overrides})


def _copy_attention(ours, theirs, zero_bias: bool) -> None:
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.out_proj.weight.copy_(ours.o_proj.weight)
    if zero_bias:
        theirs.in_proj_bias.zero_()
        theirs.out_proj.bias.zero_()


def _copy_ffn_and_norms(block, layer, norms, bias: bool) -> None:
    layer.linear1.weight.copy_(block.ffn.fc1.weight)
    layer.linear2.weight.copy_(block.ffn.fc2.weight)
    if bias:
        layer.linear1.bias.copy_(block.ffn.fc1.bias)
        layer.linear2.bias.copy_(block.ffn.fc2.bias)
    for ours, theirs in norms:
        theirs.weight.copy_(ours.weight)
        if bias:
            theirs.bias.copy_(ours.bias)


def _torch_encoder_layer(block: EncoderBlock, dtype) -> nn.TransformerEncoderLayer:
    c = block.config
    layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ffn_width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=c.norm_placement == "pre", bias=c.bias,
                                       dtype=dtype).eval()
    with torch.no_grad():
        _copy_attention(block.attn, layer.self_attn, c.bias)
        _copy_ffn_and_norms(block, layer, [(block.norm1, layer.norm1), (block.norm2, layer.norm2)], c.bias)
    return layer


def _torch_decoder_layer(block: CrossDecoderBlock, dtype) -> nn.TransformerDecoderLayer:
    c = block.config
    layer = nn.TransformerDecoderLayer(c.d_model, c.n_heads, c.ffn_width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=c.norm_placement == "pre", bias=c.bias,
                                       dtype=dtype).eval()
    with torch.no_grad():
        _copy_attention(block.self_attn, layer.self_attn, c.bias)
        _copy_attention(block.cross_attn, layer.multihead_attn, c.bias)
        _copy_ffn_and_norms(block, layer, [(block.norm1, layer.norm1), (block.norm2, layer.norm2),
                                           (block.norm3, layer.norm3)], c.bias)
    return layer


def _lengths_mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T), True = real


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("bias", [False, True])
def test_encoder_block_equals_torch_encoder_layer_with_key_padding(dtype, placement, bias):
    block = EncoderBlock(_config(norm_placement=placement, bias=bias)).to(dtype).eval()
    randomize(block, 0, biases=bias)
    layer = _torch_encoder_layer(block, dtype)
    x = _randn(3, 7, 12, seed=1, dtype=dtype)
    real = _lengths_mask([7, 4, 1], 7)  # (B, T)
    got = block(x, real[:, None, None, :])
    assert_close(got, layer(x, src_key_padding_mask=~real), n=20)
    assert_close(block(x), layer(x), n=20)  # no mask: every token sees every token


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("bias", [False, True])
def test_cross_decoder_block_equals_torch_decoder_layer(dtype, placement, bias):
    block = CrossDecoderBlock(_config(norm_placement=placement, bias=bias)).to(dtype).eval()
    randomize(block, 2, biases=bias)
    layer = _torch_decoder_layer(block, dtype)
    x, memory = _randn(2, 5, 12, seed=3, dtype=dtype), _randn(2, 8, 12, seed=4, dtype=dtype)
    real = _lengths_mask([8, 3], 8)
    expected = layer(x, memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=~real)
    assert_close(block(x, memory, real), expected, n=20)


def test_cross_decoder_block_with_rmsnorm_equals_torch_layer_with_rmsnorm_modules():
    block = CrossDecoderBlock(_config(norm="rmsnorm")).double().eval()
    randomize(block, 5, biases=False)
    c = block.config
    layer = nn.TransformerDecoderLayer(12, 3, 20, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True, bias=False, dtype=torch.float64).eval()
    for name in ("norm1", "norm2", "norm3"):
        setattr(layer, name, nn.RMSNorm(c.d_model, eps=1e-6, dtype=torch.float64))
    with torch.no_grad():
        _copy_attention(block.self_attn, layer.self_attn, False)
        _copy_attention(block.cross_attn, layer.multihead_attn, False)
        _copy_ffn_and_norms(block, layer, [(getattr(block, n), getattr(layer, n)) for n in ("norm1", "norm2", "norm3")],
                            False)
    x, memory = _randn(2, 6, 12, seed=6), _randn(2, 4, 12, seed=7)
    assert_close(block(x, memory), layer(x, memory, tgt_mask=~causal_mask(6)), n=20)


@pytest.mark.parametrize("n_kv_heads", [1, 3])
def test_cross_decoder_block_equals_decoder_block_of_the_chapter_functions_with_gqa(n_kv_heads):
    """The module equals decoder_block with cross_attention (from weights) as its cross sublayer."""
    block = CrossDecoderBlock(_config(n_heads=6, n_kv_heads=n_kv_heads, ffn="swiglu")).double().eval()
    randomize(block, 8, biases=False)
    x, memory = _randn(2, 5, 12, seed=9), _randn(2, 7, 12, seed=10)
    real = _lengths_mask([7, 2], 7)
    a = block.cross_attn

    def cross(h, mem, mask):
        return cross_attention(h, mem, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.o_proj.weight,
                               6, n_kv_heads, mask)[0]

    def self_attn(h, mask):
        return block.self_attn(h, mask)[0]

    expected = decoder_block(x, memory, self_attn, cross, block.ffn, block.norm1, block.norm2, block.norm3, real)
    out, (w_self, w_cross) = block(x, memory, real, return_weights=True)
    assert_close(out, expected, n=20)
    assert w_self.shape == (2, 6, 5, 5) and w_cross.shape == (2, 6, 5, 7)
    assert bool((w_self.triu(1) == 0).all()) and bool((w_cross[1, :, :, 2:] == 0).all())


def _copy_stack(ours_blocks, theirs_layers, make, dtype):
    for ours, theirs in zip(ours_blocks, theirs_layers):
        copied = make(ours, dtype)
        theirs.load_state_dict(copied.state_dict())


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_encoder_decoder_equals_torch_transformer(dtype, placement):
    config = _config(kind="encoder-decoder", norm_placement=placement, n_layers=2)
    torch.manual_seed(0)
    model = TinyEncoderDecoder(config).to(dtype).eval()
    randomize(model, 11, biases=False)
    transformer = nn.Transformer(12, 3, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=20, dropout=0.0,
                                 activation="gelu", batch_first=True, norm_first=placement == "pre", bias=False,
                                 dtype=dtype).eval()
    _copy_stack(model.encoder, transformer.encoder.layers, _torch_encoder_layer, dtype)
    _copy_stack(model.decoder, transformer.decoder.layers, _torch_decoder_layer, dtype)
    with torch.no_grad():
        if placement == "pre":
            transformer.encoder.norm.weight.copy_(model.encoder_norm.weight)
            transformer.decoder.norm.weight.copy_(model.decoder_norm.weight)
        else:  # torch always adds a final norm to each stack; a Post-LN block already ends with one
            transformer.encoder.norm = None
            transformer.decoder.norm = None
    gen = torch.Generator().manual_seed(12)
    src, tgt = torch.randint(0, 40, (2, 9), generator=gen), torch.randint(0, 40, (2, 6), generator=gen)
    src_real = _lengths_mask([9, 5], 9)
    src_h = model.tok_emb.weight[src] + model.src_pos_emb.weight[:9]
    tgt_h = model.tok_emb.weight[tgt] + model.tgt_pos_emb.weight[:6]
    h = transformer(src_h, tgt_h, tgt_mask=~causal_mask(6), src_key_padding_mask=~src_real,
                    memory_key_padding_mask=~src_real)
    assert_close(model(src, tgt, [9, 5]), h @ model.tok_emb.weight.T, n=20)


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_encoder_model_equals_a_stack_of_torch_encoder_layers(placement):
    torch.manual_seed(1)
    model = TinyEncoder(_config(kind="encoder", norm_placement=placement, n_layers=3)).double().eval()
    randomize(model, 13, biases=False)
    ids = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(14))
    real = _lengths_mask([8, 6, 2], 8)
    h = model.tok_emb.weight[ids] + model.pos_emb.weight[:8]
    for block in model.blocks:
        h = _torch_encoder_layer(block, torch.float64)(h, src_key_padding_mask=~real)
    if placement == "pre":
        h = F.layer_norm(h, (12,), model.final_norm.weight, model.final_norm.bias, 1e-5)
    assert_close(model(ids, [8, 6, 2]), h @ model.tok_emb.weight.T, n=20)


# ------------------------------------------------------------------------------------------------
# Properties: who can see whom
# ------------------------------------------------------------------------------------------------


def _changed(ids: torch.Tensor, t: int, V: int) -> torch.Tensor:
    out = ids.clone()
    out[:, t] = (out[:, t] + 1) % V
    return out


def test_encoder_sees_the_future_and_the_decoder_never_does():
    torch.manual_seed(2)
    enc = TinyEncoder(_config(kind="encoder")).double().eval()
    ed = TinyEncoderDecoder(_config(kind="encoder-decoder")).double().eval()
    randomize(enc, 15, biases=False)
    randomize(ed, 16, biases=False)
    gen = torch.Generator().manual_seed(17)
    src, tgt = torch.randint(0, 40, (2, 7), generator=gen), torch.randint(0, 40, (2, 6), generator=gen)
    base_enc, base_dec = enc(src), ed(src, tgt)
    for t in range(1, 6):
        moved = enc(_changed(src, t, 40))
        assert not torch.allclose(moved[:, :t], base_enc[:, :t])  # earlier encoder outputs move
        dec = ed(src, _changed(tgt, t, 40))
        assert_close(dec[:, :t], base_dec[:, :t], n=20)  # earlier decoder outputs never do
        assert not torch.allclose(dec[:, t], base_dec[:, t])
    # every target position reads the whole source: changing the last source token moves target position 0
    assert not torch.allclose(ed(_changed(src, 6, 40), tgt)[:, 0], base_dec[:, 0])


def test_padded_source_tokens_never_influence_any_target_output():
    torch.manual_seed(3)
    model = TinyEncoderDecoder(_config(kind="encoder-decoder", norm_placement="post")).double().eval()
    randomize(model, 18, biases=False)
    gen = torch.Generator().manual_seed(19)
    src, tgt = torch.randint(0, 40, (2, 8), generator=gen), torch.randint(0, 40, (2, 5), generator=gen)
    base = model(src, tgt, [5, 8])
    garbage = src.clone()
    garbage[0, 5:] = torch.randint(0, 40, (3,), generator=gen)
    assert_close(model(garbage, tgt, [5, 8]), base, n=20)
    assert not torch.allclose(model(garbage, tgt), model(src, tgt))  # without the mask they do


def test_cross_decoder_block_is_invariant_to_permuting_memory():
    block = CrossDecoderBlock(_config(n_kv_heads=1)).double().eval()
    randomize(block, 20, biases=False)
    x, memory = _randn(2, 5, 12, seed=21), _randn(2, 9, 12, seed=22)
    real = _lengths_mask([9, 4], 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(23))
    assert_close(block(x, memory[:, perm], real[:, perm]), block(x, memory, real), n=20)


# ------------------------------------------------------------------------------------------------
# MoE and parallel blocks in the shared model
# ------------------------------------------------------------------------------------------------


def _dense_moe(x, moe):
    """Every expert on every token, mixed by the top-k softmax weights (zero for the others): the
    same numbers as sparse dispatch, computed densely with torch functions only."""
    logits = x @ moe.router.weight.T  # (..., E)
    top, idx = logits.topk(moe.k, dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))  # (..., E)
    outs = torch.stack([F.linear(F.silu(F.linear(x, e.gate.weight)) * F.linear(x, e.up.weight), e.down.weight)
                        for e in moe.experts], dim=-1)  # (..., d_model, E)
    return (outs * weights[..., None, :]).sum(-1)


def test_moe_block_equals_a_dense_mixture_and_its_balance_loss_reaches_the_model():
    torch.manual_seed(4)
    model = TinyDecoder(_config(ffn="moe", n_experts=4, top_k=2, n_layers=2)).double()
    randomize(model, 24, biases=False)
    block = model.blocks[0]
    assert isinstance(block.ffn, BalancedMoEFFN)
    x = _randn(2, 6, 12, seed=25)
    h = x + block.attn(block.norm1(x), causal_mask(6))[0]
    assert_close(block(x), h + _dense_moe(block.norm2(h), block.ffn), n=20)
    # Switch Transformer's loss, written out: n_experts * sum_i f_i P_i over this pass's tokens
    logits = block.norm2(h) @ block.ffn.router.weight.T  # (B, T, E)
    chosen = logits.topk(2, dim=-1).indices
    f = F.one_hot(chosen, 4).double().sum(dim=(0, 1, 2)) / chosen.numel()
    P = torch.softmax(logits, -1).mean(dim=(0, 1))
    assert_close(block.ffn.balance_loss, 4 * (f * P).sum())
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(26))
    model(ids)
    loss = moe_balance_loss(model)
    assert_close(loss, model.blocks[0].ffn.balance_loss + model.blocks[1].ffn.balance_loss)
    assert 1.0 <= float(loss.detach()) / 2 <= 4.0  # per layer: between perfect balance (1) and collapse (n_experts)
    loss.backward()
    assert model.blocks[0].ffn.router.weight.grad.abs().sum() > 0  # the loss trains the router


def test_moe_balance_loss_needs_moe_layers_and_a_forward_pass():
    with pytest.raises(ValueError, match="no MoE layer"):
        moe_balance_loss(TinyDecoder(_config()))
    with pytest.raises(ValueError, match="run a forward pass first"):
        moe_balance_loss(TinyEncoder(_config(kind="encoder", ffn="moe")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_block_equals_gptj_written_with_torch_functions(dtype):
    block = DecoderBlock(_config(block="parallel")).to(dtype)
    randomize(block, 27, biases=False)
    assert block.norm2 is None  # one norm feeds both sublayers
    x = _randn(2, 7, 12, seed=28, dtype=dtype)
    h = F.layer_norm(x, (12,), block.norm1.weight, block.norm1.bias, 1e-5)
    a = block.attn
    q, k, v = (F.linear(h, w).view(2, 7, 3, 4).transpose(1, 2) for w in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
    attn = F.linear(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 12),
                    a.o_proj.weight)
    mlp = F.linear(F.gelu(F.linear(h, block.ffn.fc1.weight)), block.ffn.fc2.weight)
    assert_close(block(x), x + attn + mlp, n=20)
    assert_close(parallel_block(x, lambda t: block.attn(t, causal_mask(7))[0], block.ffn, block.norm1), x + attn + mlp, n=20)


VARIANTS = [
    dict(), dict(ffn="moe"), dict(ffn="moe", n_experts=8, top_k=1, tie_weights=False), dict(block="parallel"),
    dict(block="parallel", norm="rmsnorm", ffn="swiglu"),
    dict(kind="encoder"), dict(kind="encoder", norm_placement="post", bias=True), dict(kind="encoder", block="parallel"),
    dict(kind="encoder", ffn="moe", positions="none"),
    dict(kind="encoder-decoder"), dict(kind="encoder-decoder", tie_weights=False, n_kv_heads=1),
    dict(kind="encoder-decoder", norm_placement="post", norm="rmsnorm", ffn="swiglu"),
    dict(kind="encoder-decoder", ffn="moe", n_layers=3), dict(kind="encoder-decoder", n_layers=0),
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_parameter_count_of_every_variant(overrides):
    torch.manual_seed(0)
    config = _config(**overrides)
    model = build_model(config)
    assert type(model) is {"decoder": TinyDecoder, "encoder": TinyEncoder, "encoder-decoder": TinyEncoderDecoder}[config.kind]
    assert sum(p.numel() for p in model.parameters()) == model_param_count(config)


def test_parameter_count_of_a_t5_small_shaped_config_written_out():
    """d = 512, 6 + 6 layers, 8 heads, d_ff = 2048, V = 32128, RMSNorm, tied, no biases; T5 has relative
    position biases instead of tables (positions='none' here: chapter 06 adds them)."""
    config = ModelConfig(vocab_size=32128, d_model=512, n_heads=8, d_ff=2048, n_layers=6, norm="rmsnorm",
                         positions="none", kind="encoder-decoder", ffn="gelu")
    d, f, L, V = 512, 2048, 6, 32128
    encoder = L * (4 * d * d + 2 * d * f + 2 * d) + d
    decoder = L * (8 * d * d + 2 * d * f + 3 * d) + d
    assert model_param_count(config) == V * d + encoder + decoder
    # T5-small's 60,506,624 (Hugging Face's t5-small) adds its relative-position bias tables: 32 buckets
    # x 8 heads, one table per stack
    assert model_param_count(config) + 2 * 32 * 8 == 60_506_624


@pytest.mark.parametrize("overrides, message", [
    (dict(block="parallel", norm_placement="post"), "block='parallel' .* needs norm_placement='pre'"),
    (dict(block="parallel", kind="encoder-decoder"), "an encoder-decoder's decoder block has three"),
    (dict(ffn="moe", n_experts=2, top_k=3), "top_k = 3 is more than n_experts = 2"),
    (dict(kind="seq2seq"), "kind must be one of \\('decoder', 'encoder', 'encoder-decoder'\\)"),
    (dict(block="sandwich"), "block must be one of"),
    (dict(n_experts=0), "n_experts must be a positive int"),
])
def test_bad_variant_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_each_model_refuses_the_other_kinds():
    with pytest.raises(ValueError, match="TinyDecoder: config.kind must be 'decoder'; got 'encoder' \\(build it with TinyEncoder"):
        TinyDecoder(_config(kind="encoder"))
    with pytest.raises(ValueError, match="TinyEncoderDecoder: config.kind must be 'encoder-decoder'; got 'decoder'"):
        TinyEncoderDecoder(_config())
    with pytest.raises(ValueError, match="TinyEncoder: config.kind must be 'encoder'"):
        TinyEncoder(_config(kind="encoder-decoder"))


def test_models_name_bad_inputs():
    model = TinyEncoderDecoder(_config(kind="encoder-decoder"))
    with pytest.raises(ShapeError, match="src_ids must be an integer tensor of shape \\(B, T\\)"):
        model(torch.zeros(2, 5), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="every length must lie in 1..T = 1..5; got \\[6, 2\\]"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), [6, 2])
    with pytest.raises(ShapeError, match="tgt_ids has T = 17 tokens but the position table has only max_seq_len = 16"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"memory must be \(B, T, d_model\) with d_model = 12; got \(2, 4, 8\)"):
        model.decoder[0](torch.zeros(2, 3, 12), torch.zeros(2, 4, 8))
