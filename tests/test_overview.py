"""helpers.overview: the shape map agrees with shapes measured on a running model, the measured tensors
are the ones the block really computes, permutation equivariance, token-budget arithmetic."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.blocks import DecoderBlock, ModelConfig, TinyDecoder
from helpers.ffn import feed_forward
from helpers.heads import merge_heads
from helpers.overview import (
    SHAPE_MAP,
    _derangement,
    budget_table,
    is_permutation_equivariant,
    largest_retrieved_context,
    measure_shapes,
    measure_tensors,
    remaining_tokens,
    shape_map,
)
from helpers.shapes import ShapeError

# ------------------------------------------------------------------------------------------------
# The shape map, measured
# ------------------------------------------------------------------------------------------------


def _model(B_seed: int = 0, **config) -> TinyDecoder:
    torch.manual_seed(B_seed)
    return TinyDecoder(ModelConfig(**config)).eval()


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 9), H=st.integers(1, 4), d_head=st.integers(1, 5),
       d_ff=st.integers(1, 20), V=st.integers(2, 40),
       variant=st.sampled_from([{}, {"ffn": "swiglu"}, {"norm": "rmsnorm", "norm_placement": "post"},
                                {"positions": "none", "tie_weights": False, "bias": True}]))
def test_shape_map_equals_the_shapes_measured_on_a_running_model(B, T, H, d_head, d_ff, V, variant):
    d_model = H * d_head
    model = _model(vocab_size=V, d_model=d_model, n_heads=H, d_ff=d_ff, n_layers=2, max_seq_len=9, **variant)
    ids = torch.randint(0, V, (B, T))
    assert measure_shapes(model, ids) == shape_map(B, T, d_model, H, d_ff, V)


def test_the_outline_example_and_the_keys():
    shapes = shape_map(B=2, T=128, d_model=768, n_heads=12, d_ff=3072, vocab=50257)
    assert list(shapes) == list(SHAPE_MAP)
    assert shapes["Q"] == (2, 12, 128, 64) and shapes["S"] == (2, 12, 128, 128)
    assert shapes["logits"] == (2, 128, 50257) and shapes["block_out"] == shapes["H"] == (2, 128, 768)


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("ffn", ["gelu", "swiglu"])
def test_measured_tensors_are_the_ones_the_block_computes(placement, ffn):
    """The explicit Q, K, V and hidden layer rebuild the block's own attention and FFN outputs."""
    model = _model(vocab_size=30, d_model=12, n_heads=3, d_ff=20, norm_placement=placement, ffn=ffn,
                   bias=ffn == "gelu").double()
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(1))
    got = measure_tensors(model, ids)
    block = model.blocks[0]
    out, weights = scaled_dot_product_attention(got["Q"], got["K"], got["V"], causal_mask(6))
    torch.testing.assert_close(weights, got["A"])
    torch.testing.assert_close(torch.softmax(got["S"].masked_fill(~causal_mask(6), float("-inf")), -1), got["A"])
    torch.testing.assert_close(merge_heads(out) @ block.attn.o_proj.weight.T, got["O"])
    down = block.ffn.down if ffn == "swiglu" else block.ffn.fc2
    bias = 0 if down.bias is None else down.bias
    x = got["block_out"]
    if ffn == "gelu":  # the hidden layer is the one feed_forward computes on the FFN's input
        assert got["mlp_hidden"].shape == (2, 6, 20)
    mlp_out = got["mlp_hidden"] @ down.weight.T + bias  # (B, T, d_model)
    h = got["H"]
    after_attn = h + got["O"] if placement == "pre" else block.norm1(h + got["O"])
    expected = after_attn + mlp_out if placement == "pre" else block.norm2(after_attn + mlp_out)
    torch.testing.assert_close(expected, x)
    torch.testing.assert_close(model(ids), got["logits"])


def test_measured_hidden_layer_matches_chapter_03s_function():
    model = _model(vocab_size=30, d_model=12, n_heads=3, d_ff=20, bias=True).double()
    ids = torch.randint(0, 30, (1, 4))
    got = measure_tensors(model, ids)
    ffn = model.blocks[0].ffn
    x = model.blocks[0].norm2(got["H"] + got["O"])  # what the FFN read (pre-norm)
    torch.testing.assert_close(got["mlp_hidden"] @ ffn.fc2.weight.T + ffn.fc2.bias,
                               feed_forward(x, ffn.fc1.weight, ffn.fc1.bias, ffn.fc2.weight, ffn.fc2.bias))


def test_shape_map_validates_its_arguments():
    with pytest.raises(ShapeError, match="d_model = 10 is not divisible by n_heads = 4"):
        shape_map(2, 5, 10, 4, 40, 50)
    with pytest.raises(ValueError, match="B must be a positive int; got 0"):
        shape_map(0, 5, 12, 3, 48, 50)
    with pytest.raises(ValueError, match="must be a positive int; got 2.0"):
        shape_map(2, 5, 12, 3, 48, 2.0)
    with pytest.raises(ValueError, match="assumes multi-head attention"):
        measure_shapes(_model(vocab_size=5, d_model=12, n_heads=4, n_kv_heads=2), torch.zeros(1, 2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# Permutation equivariance
# ------------------------------------------------------------------------------------------------


def _attention_only(causal: bool) -> DecoderBlock:
    torch.manual_seed(0)
    return DecoderBlock(ModelConfig(vocab_size=5, d_model=12, n_heads=3, causal=causal)).eval()


def test_attention_without_positions_is_permutation_equivariant():
    x = torch.randn(2, 7, 12)
    block = _attention_only(causal=False)
    assert is_permutation_equivariant(block, x)
    perm = _derangement(7, 0)
    torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm])


def test_positions_or_a_causal_mask_break_it():
    x = torch.randn(2, 7, 12)
    assert not is_permutation_equivariant(_attention_only(causal=True), x)
    torch.manual_seed(1)
    wpe = torch.randn(7, 12)
    block = _attention_only(causal=False)
    assert not is_permutation_equivariant(lambda h: block(h + wpe), x)


def test_equivariance_test_can_fail_and_is_not_fooled_by_invariance():
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    assert is_permutation_equivariant(lambda h: h * 2 + h.mean(dim=1, keepdim=True), x)
    assert not is_permutation_equivariant(lambda h: h.flip(1), x)
    assert not is_permutation_equivariant(lambda h: h + torch.arange(6, dtype=h.dtype)[:, None], x)
    assert is_permutation_equivariant(lambda h: h.flip(1), x, perm=torch.arange(6))  # the identity hides it


def test_derangements_move_every_token():
    for seed in range(20):
        perm = _derangement(5, seed)
        assert sorted(perm.tolist()) == list(range(5)) and bool((perm != torch.arange(5)).all())
    assert _derangement(1, 0).tolist() == [0]
    with pytest.raises(ValueError, match="must be a permutation of 0..T-1"):
        is_permutation_equivariant(lambda h: h, torch.zeros(1, 3, 2), perm=torch.tensor([0, 0, 1]))


# ------------------------------------------------------------------------------------------------
# Token budgets
# ------------------------------------------------------------------------------------------------


def test_the_prompt_budget_lab():
    parts = dict(system=600, retrieved=6000, user=400, output=1000)
    assert sum(parts.values()) == 8000
    assert remaining_tokens(8192, **parts) == 192
    assert largest_retrieved_context(8192, system=600, user=400, output=1000) == 6192
    assert remaining_tokens(8192, system=600, retrieved=6192, user=400, output=1000) == 0  # exactly full fits
    assert remaining_tokens(8192, system=600, retrieved=6193, user=400, output=1000) == -1  # one more does not


def test_chunks_and_overflow():
    assert largest_retrieved_context(8192, chunk_tokens=520, system=600, user=400, output=1000) == 11 * 520
    assert largest_retrieved_context(4096, system=3000, user=1000, output=512) == 0
    assert remaining_tokens(4096, system=350, retrieved=3200, user=250, output=512) == -216
    rows = budget_table(8192, dict(system=600, retrieved=6000, user=400, output=1000))
    assert rows[-1][:2] == ("margin", 192) and sum(r[1] for r in rows) == 8192
    assert abs(sum(r[2] for r in rows) - 100) < 1e-9


def test_budget_arguments_are_validated():
    with pytest.raises(ValueError, match="retrieved must be a token count, an int >= 0; got -5"):
        remaining_tokens(8192, retrieved=-5)
    with pytest.raises(ValueError, match="context_window must be a positive int"):
        remaining_tokens(0, user=1)
    with pytest.raises(ValueError, match="chunk_tokens must be a positive int"):
        largest_retrieved_context(8192, chunk_tokens=0)
