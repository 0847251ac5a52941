"""helpers.blocks: the shared decoder block and TinyDecoder against torch's own transformer layer, a
model built from torch functions, causality, weight tying and the parameter-count formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.attention import causal_mask
from helpers.blocks import (
    LATER_CHAPTERS,
    Attention,
    DecoderBlock,
    ModelConfig,
    TinyDecoder,
    attend,
    decoder_forward,
    model_param_count,
)
from helpers.heads import grouped_query_attention, multi_head_attention
from helpers.numerics import assert_close
from helpers.shapes import ShapeError

from .randomize import randomize

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _torch_layer(block: DecoderBlock, dtype: torch.dtype) -> nn.TransformerEncoderLayer:
    """nn.TransformerEncoderLayer with the block's weights copied in."""
    c = block.config
    layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ffn_width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=c.norm_placement == "pre", bias=c.bias,
                                       dtype=dtype).eval()
    if c.norm == "rmsnorm":
        layer.norm1 = nn.RMSNorm(c.d_model, eps=1e-6, dtype=dtype)
        layer.norm2 = nn.RMSNorm(c.d_model, eps=1e-6, dtype=dtype)
    with torch.no_grad():
        attn = block.attn
        layer.self_attn.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        layer.self_attn.out_proj.weight.copy_(attn.o_proj.weight)
        layer.linear1.weight.copy_(block.ffn.fc1.weight)
        layer.linear2.weight.copy_(block.ffn.fc2.weight)
        for ours, theirs in [(block.norm1, layer.norm1), (block.norm2, layer.norm2)]:
            theirs.weight.copy_(ours.weight)
        if c.bias:  # our attention has no biases: zero torch's; copy the FFN's and the norms' betas
            layer.self_attn.in_proj_bias.zero_()
            layer.self_attn.out_proj.bias.zero_()
            layer.linear1.bias.copy_(block.ffn.fc1.bias)
            layer.linear2.bias.copy_(block.ffn.fc2.bias)
            layer.norm1.bias.copy_(block.norm1.bias)
            layer.norm2.bias.copy_(block.norm2.bias)
    return layer


def _block(dtype: torch.dtype, seed: int = 0, **overrides) -> DecoderBlock:
    config = ModelConfig(**{"vocab_size": 50, "d_model": 12, "n_heads": 3, "d_ff": 20, **overrides})
    block = DecoderBlock(config).to(dtype).eval()
    # Without FFN biases, torch's LayerNorm has no beta either (bias=False): keep ours at 0.
    randomize(block, seed, biases=config.bias)
    return block


def _x(B: int, T: int, d: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, d, generator=gen, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------------
# The block against torch.nn.TransformerEncoderLayer
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("bias", [False, True])
def test_block_equals_torch_encoder_layer_with_a_causal_mask(dtype, placement, bias):
    block = _block(dtype, norm_placement=placement, bias=bias)
    layer = _torch_layer(block, dtype)
    x = _x(2, 7, 12, dtype)
    expected = layer(x, src_mask=~causal_mask(7))  # torch: True = blocked
    torch.testing.assert_close(block(x), expected, **TOL[dtype])


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_bidirectional_block_equals_torch_encoder_layer_without_a_mask(placement):
    block = _block(torch.float64, norm_placement=placement, causal=False)
    torch.testing.assert_close(block(_x(3, 5, 12, torch.float64)),
                               _torch_layer(block, torch.float64)(_x(3, 5, 12, torch.float64)), **TOL[torch.float64])


def test_rmsnorm_block_equals_torch_layer_with_rmsnorm_modules():
    """torch's layer calls self.norm1 / self.norm2: swapped for nn.RMSNorm, it is an RMSNorm block."""
    block = _block(torch.float64, norm="rmsnorm")
    x = _x(2, 6, 12, torch.float64)
    torch.testing.assert_close(block(x), _torch_layer(block, torch.float64)(x, src_mask=~causal_mask(6)),
                               **TOL[torch.float64])


def _torch_function_block(block: DecoderBlock, x: torch.Tensor) -> torch.Tensor:
    """An independent pre-LN block from torch functions: F.layer_norm, F.scaled_dot_product_attention
    (with enable_gqa for grouped heads), F.silu / F.gelu."""
    c = block.config
    B, T, _ = x.shape

    def heads(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.view(B, T, n, c.d_head).transpose(1, 2)

    def norm(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        if c.norm == "layernorm":
            return F.layer_norm(t, (c.d_model,), module.weight, module.bias, 1e-5)
        return F.rms_norm(t, (c.d_model,), module.weight, 1e-6)

    h = norm(block.norm1, x)
    a = block.attn
    q, k, v = heads(F.linear(h, a.q_proj.weight), c.n_heads), heads(F.linear(h, a.k_proj.weight), c.kv_heads), \
        heads(F.linear(h, a.v_proj.weight), c.kv_heads)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=c.kv_heads != c.n_heads)
    x = x + F.linear(o.transpose(1, 2).reshape(B, T, c.d_model), a.o_proj.weight)
    h = norm(block.norm2, x)
    f = block.ffn
    if c.ffn == "swiglu":
        mlp = F.linear(F.silu(F.linear(h, f.gate.weight)) * F.linear(h, f.up.weight), f.down.weight)
    else:
        mlp = F.linear(F.gelu(F.linear(h, f.fc1.weight, f.fc1.bias)), f.fc2.weight, f.fc2.bias)
    return x + mlp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overrides", [
    dict(ffn="swiglu"), dict(n_kv_heads=1), dict(n_heads=6, n_kv_heads=2, norm="rmsnorm", ffn="swiglu"),
    dict(bias=True),
], ids=["swiglu", "mqa", "gqa-rms-swiglu", "ffn-bias"])
def test_block_variants_equal_a_block_built_from_torch_functions(dtype, overrides):
    block = _block(dtype, **overrides)
    x = _x(2, 7, 12, dtype)
    torch.testing.assert_close(block(x), _torch_function_block(block, x), **TOL[dtype])


def test_block_returns_its_attention_weights():
    block = _block(torch.float64)
    out, weights = block(_x(2, 7, 12, torch.float64), return_weights=True)
    assert out.shape == (2, 7, 12) and weights.shape == (2, 3, 7, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64))
    assert bool((weights.triu(1) == 0).all())  # nothing from the future


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> TinyDecoder:
    torch.manual_seed(seed)
    config = ModelConfig(**{"vocab_size": 40, "d_model": 12, "n_heads": 3, "n_layers": 2, "max_seq_len": 16,
                            **overrides})
    return TinyDecoder(config).to(dtype).eval()


def test_model_equals_the_tour_written_out_with_torch_layers():
    model = _model()
    randomize(model, 3, biases=False)  # torch's layer with bias=False has no LayerNorm beta
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(4))
    h = F.embedding(ids, model.tok_emb.weight) + model.pos_emb.weight[:9]
    for block in model.blocks:
        h = _torch_layer(block, torch.float64)(h, src_mask=~causal_mask(9))
    h = F.layer_norm(h, (12,), model.final_norm.weight, model.final_norm.bias, 1e-5)
    torch.testing.assert_close(model(ids), h @ model.tok_emb.weight.T, **TOL[torch.float64])


@pytest.mark.parametrize("causal, changes_the_past", [(True, False), (False, True)])
def test_changing_a_future_token_never_changes_earlier_logits(causal, changes_the_past):
    """The property holds with the causal mask and fails without it: the test can fail."""
    model = _model(causal=causal)
    randomize(model, 5, biases=True)
    gen = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 40, (3, 10), generator=gen)
    base = model(ids)
    for t in range(10):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1 + torch.randint(0, 38, (3,), generator=gen)) % 40
        logits = model(changed)
        same = torch.allclose(logits[:, :t], base[:, :t], rtol=0, atol=1e-12)
        assert same != (changes_the_past and t > 0)
        assert not torch.allclose(logits[:, t], base[:, t])  # the changed position itself moves


def test_model_returns_one_weight_tensor_per_layer():
    model = _model(n_layers=3)
    logits, weights = model(torch.zeros(2, 5, dtype=torch.long), return_weights=True)
    assert logits.shape == (2, 5, 40) and len(weights) == 3
    assert all(w.shape == (2, 3, 5, 5) for w in weights)


def test_tied_weights_share_one_tensor():
    model = _model()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    with torch.no_grad():
        model.tok_emb.weight[3, 0] += 1.0  # one edit shows up in both uses
    assert model.lm_head.weight[3, 0] == model.tok_emb.weight[3, 0]
    model.train()
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad[7].abs().sum() > 0  # from the head
    untied = _model(tie_weights=False)
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()


CONFIGS = [
    dict(), dict(tie_weights=False), dict(positions="none"), dict(norm="rmsnorm"), dict(ffn="swiglu", d_ff=32),
    dict(norm_placement="post"), dict(n_kv_heads=1), dict(bias=True, tie_weights=False, n_layers=4),
]


@pytest.mark.parametrize("overrides", CONFIGS)
def test_parameter_count_matches_the_formula(overrides):
    model = _model(**overrides)
    assert sum(p.numel() for p in model.parameters()) == model_param_count(model.config)


def test_parameter_count_of_a_gpt2_small_shaped_model_written_out():
    """V = 50257, d = 768, 12 layers, 12 heads, d_ff = 3072, T_max = 1024, tied, FFN biases, LayerNorm."""
    config = ModelConfig(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, max_seq_len=1024, bias=True)
    V, d, L, T, f = 50257, 768, 12, 1024, 3072
    per_layer = 4 * d * d + (2 * d * f + f + d) + 2 * (2 * d)  # attention (no biases), FFN, 2 LayerNorms
    assert model_param_count(config) == V * d + T * d + L * per_layer + 2 * d
    # GPT-2 small's published 124,439,808 also counts biases in the four attention projections.
    assert model_param_count(config) + L * 4 * d == 124_439_808
    # (Not built here: `with torch.device("meta")` would import torch._dynamo, which replaces
    # torch.manual_seed and makes every check in this process refuse to run.)


def test_every_block_keeps_the_shape_contract():
    model = _model(n_layers=3)
    shapes = []
    handles = [b.register_forward_hook(lambda m, args, out: shapes.append((tuple(args[0].shape), tuple(out.shape))))
               for b in model.blocks]
    model(torch.zeros(2, 6, dtype=torch.long))
    for handle in handles:
        handle.remove()
    assert shapes == [((2, 6, 12), (2, 6, 12))] * 3


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 8), H=st.integers(1, 3), d_head=st.integers(1, 4),
       V=st.integers(2, 30), n_layers=st.integers(0, 2))
def test_logits_shape_for_random_sizes(B, T, H, d_head, V, n_layers):
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=V, d_model=H * d_head, n_heads=H, n_layers=n_layers, max_seq_len=8))
    assert model(torch.randint(0, V, (B, T))).shape == (B, T, V)


def test_same_seed_same_model():
    a, b = _model(seed=3), _model(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------------------------------------
# The config, and bad input
# ------------------------------------------------------------------------------------------------


def test_later_chapter_values_are_refused_with_the_chapter_named(monkeypatch):
    """Every value the syllabus names exists now (LATER_CHAPTERS is empty); the mechanism stays for
    a value a future chapter adds: it is refused naming that chapter, not as an unknown value."""
    for (field, value), chapter in {**LATER_CHAPTERS, ("norm", "dyt"): "10_future"}.items():
        monkeypatch.setitem(LATER_CHAPTERS, (field, value), chapter)
        with pytest.raises(ValueError, match=f"{field}='{value}' is added to the shared model in chapter {chapter}"):
            ModelConfig(vocab_size=10, **{field: value})


@pytest.mark.parametrize("overrides, message", [
    (dict(norm="batchnorm"), "norm must be one of \\('layernorm', 'rmsnorm'\\); got 'batchnorm'"),
    (dict(norm_placement="sandwich"), "norm_placement must be one of"),
    (dict(d_model=10, n_heads=3), "d_model = 10 is not divisible by n_heads = 3"),
    (dict(n_heads=4, n_kv_heads=3, d_model=12), "n_heads = 4 is not divisible by n_kv_heads = 3"),
    (dict(n_layers=-1), "n_layers must be an int >= 0"),
    (dict(vocab_size=0), "vocab_size must be a positive int; got 0"),
    (dict(d_ff=2.5), "d_ff must be a positive int"),
    (dict(tie_weights=1), "tie_weights must be True or False"),
])
def test_bad_config_values_are_refused(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ModelConfig(**{"vocab_size": 10, **overrides})


def test_bad_inputs_name_the_shapes():
    block = _block(torch.float32)
    with pytest.raises(ShapeError, match=r"x must be \(B, T, d_model\) with d_model = 12; got \(2, 5, 8\)"):
        block(torch.zeros(2, 5, 8))
    with pytest.raises(ShapeError, match=r"x must have shape \(B, T, d_model\); got \(5, 12\)"):
        block(torch.zeros(5, 12))
    model = _model()
    with pytest.raises(ShapeError, match="ids must be an integer tensor of shape \\(B, T\\)"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="token ids must lie in 0..V-1 = 0..39"):
        model(torch.tensor([[0, 40]]))
    with pytest.raises(ShapeError, match="T = 17 tokens but the position table wpe \\(16, 12\\)"):
        model(torch.zeros(1, 17, dtype=torch.long))
    _model(positions="none")(torch.zeros(1, 17, dtype=torch.long))  # no table, no limit


def test_decoder_forward_with_plain_functions():
    wte = torch.eye(4, dtype=torch.float64)  # V = d_model = 4
    ids = torch.tensor([[2, 0, 3]])
    logits = decoder_forward(ids, wte, None, [], None)
    assert torch.equal(logits, F.one_hot(ids, 4).double())  # embeddings read back by the tied head


# ---------------------------------------------------------------------------------------------
# The attention sublayer every block uses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_sublayer_is_chapter_02s_attention(n_kv_heads, dtype):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=11, d_model=24, n_heads=4, n_kv_heads=n_kv_heads)
    attn = Attention(config).to(dtype)
    x = torch.randn(3, 7, 24, dtype=dtype)
    mask = causal_mask(7)
    out, weights = attn(x, mask)
    w = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight)
    if n_kv_heads == 4:
        want = multi_head_attention(x, *w, 4, mask)
    else:
        want = grouped_query_attention(x, *w, 4, n_kv_heads, mask)
    assert out.shape == (3, 7, 24) and weights.shape == (3, 4, 7, 7)
    assert_close(out, want[0], n=24)
    assert_close(weights, want[1], n=24)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_score_bias_matches_torch_float_mask(dtype):
    """F.scaled_dot_product_attention adds a float attn_mask to the scaled scores: the same as `bias`."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 5, 8, generator=gen, dtype=dtype)
    k = torch.randn(2, 3, 6, 8, generator=gen, dtype=dtype)
    v = torch.randn(2, 3, 6, 4, generator=gen, dtype=dtype)
    bias = torch.randn(3, 5, 6, generator=gen, dtype=dtype)  # one bias per head, broadcast over B
    mask = torch.rand(2, 1, 5, 6, generator=gen) > 0.3
    mask[..., 0] = True  # every query keeps a key
    out, weights = attend(q, k, v, mask, bias)
    float_mask = bias.masked_fill(~mask, float("-inf"))  # (2, 3, 5, 6)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask), n=8)
    assert_close(weights.sum(-1), torch.ones(2, 3, 5, dtype=dtype), n=6)
    assert_close(attend(q, k, v, mask, torch.zeros((), dtype=dtype))[0], attend(q, k, v, mask)[0], n=8)


def test_cross_attention_reads_keys_and_values_from_the_source():
    torch.manual_seed(2)
    attn = Attention(ModelConfig(vocab_size=11, d_model=16, n_heads=2, n_kv_heads=1))
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    out, weights = attn(x, source=memory)
    assert out.shape == (2, 5, 16) and weights.shape == (2, 2, 5, 9)
    q, k, v = attn.project(x, memory)
    assert q.shape == (2, 2, 5, 8) and k.shape == v.shape == (2, 1, 9, 8)
    moved = attn(x, source=memory[:, torch.randperm(9)])[0]  # no positions on memory: order is irrelevant
    assert_close(moved, out, n=16)


def test_attention_errors_name_the_shapes():
    attn = Attention(ModelConfig(vocab_size=11, d_model=16, n_heads=2))
    with pytest.raises(ShapeError, match=r"x must be \(B, T_q, d_model\) with d_model = 16; got \(2, 5, 12\)"):
        attn(torch.randn(2, 5, 12))
    with pytest.raises(ShapeError, match=r"same batch size"):
        attn(torch.randn(2, 5, 16), source=torch.randn(3, 4, 16))
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ShapeError, match=r"bias must broadcast to the scores .*\(1, 2, 3, 3\); got \(4, 4\)"):
        attend(q, q, q, bias=torch.zeros(4, 4))
