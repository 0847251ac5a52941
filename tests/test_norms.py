"""helpers.norms against oracles nobody here wrote: torch's LayerNorm, RMSNorm and
TransformerEncoderLayer, closed forms, and properties (each shown to fail on a broken variant)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.norms import (
    LayerNorm,
    RMSNorm,
    layer_norm,
    post_ln_block,
    pre_ln_block,
    residual_norms,
    rms_norm,
)
from helpers.numerics import close, tolerances
from helpers.shapes import ShapeError

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    # the course's one rule for float comparisons (torch's defaults for these short reductions)
    return tolerances(dtype)


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


def params(d, dtype, seed=1):
    return randn(d, dtype=dtype, seed=seed) * 0.5 + 1.0, randn(d, dtype=dtype, seed=seed + 1)  # gamma, beta


# ------------------------------------------------------------------------------------------------
# LayerNorm and RMSNorm against torch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 5, 7), (2, 3, 5, 7)], ids=["1-D", "2-D", "3-D", "4-D"])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layer_norm_matches_torch(dtype, shape, eps):
    x = randn(*shape, dtype=dtype, scale=3.0, shift=2.0)
    gamma, beta = params(shape[-1], dtype)
    oracle = nn.LayerNorm(shape[-1], eps=eps, dtype=dtype)
    with torch.no_grad():
        oracle.weight.copy_(gamma)
        oracle.bias.copy_(beta)
    out = layer_norm(x, gamma, beta, eps)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, oracle(x), **tol(dtype))
    torch.testing.assert_close(out, F.layer_norm(x, (shape[-1],), gamma, beta, eps), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 7), (2, 5, 7), (2, 3, 5, 7)], ids=["1-D", "2-D", "3-D", "4-D"])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rms_norm_matches_torch_with_eps_passed_explicitly(dtype, shape, eps):
    x = randn(*shape, dtype=dtype, scale=3.0, shift=2.0)
    gamma, _ = params(shape[-1], dtype)
    oracle = nn.RMSNorm(shape[-1], eps=eps, dtype=dtype)  # eps explicit: its default is None (finfo.eps)
    with torch.no_grad():
        oracle.weight.copy_(gamma)
    out = rms_norm(x, gamma, eps)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, oracle(x), **tol(dtype))
    torch.testing.assert_close(out, F.rms_norm(x, (shape[-1],), gamma, eps=eps), **tol(dtype))


def test_torch_rms_norm_default_eps_is_not_ours():
    """Why every comparison passes eps: nn.RMSNorm's default eps is None = finfo(dtype).eps."""
    x = torch.full((1, 8), 1e-3)  # a token with a tiny norm: eps matters
    gamma = torch.ones(8)
    assert nn.RMSNorm(8).eps is None
    assert not torch.allclose(nn.RMSNorm(8)(x), rms_norm(x, gamma), rtol=1e-3, atol=0)
    torch.testing.assert_close(nn.RMSNorm(8)(x), rms_norm(x, gamma, eps=torch.finfo(torch.float32).eps))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=3), d=st.integers(2, 40),
       seed=st.integers(0, 2**16), double=st.booleans(), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_random_shapes_match_torch(lead, d, seed, double, scale):
    dtype = torch.float64 if double else torch.float32
    x = randn(*lead, d, dtype=dtype, seed=seed, scale=scale)
    gamma, beta = params(d, dtype, seed=seed + 1)
    torch.testing.assert_close(layer_norm(x, gamma, beta), F.layer_norm(x, (d,), gamma, beta, 1e-5), **tol(dtype))
    torch.testing.assert_close(rms_norm(x, gamma), F.rms_norm(x, (d,), gamma, eps=1e-6), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_modules_match_torch_modules_and_count_parameters(dtype):
    x = randn(3, 4, 9, dtype=dtype, scale=2.0)
    ours_ln, ours_rms = LayerNorm(9).to(dtype), RMSNorm(9, eps=1e-5).to(dtype)
    theirs_ln, theirs_rms = nn.LayerNorm(9, dtype=dtype), nn.RMSNorm(9, eps=1e-5, dtype=dtype)
    torch.testing.assert_close(ours_ln(x), theirs_ln(x), **tol(dtype))
    torch.testing.assert_close(ours_rms(x), theirs_rms(x), **tol(dtype))
    assert sum(p.numel() for p in ours_ln.parameters()) == sum(p.numel() for p in theirs_ln.parameters()) == 18
    assert sum(p.numel() for p in ours_rms.parameters()) == sum(p.numel() for p in theirs_rms.parameters()) == 9
    ours_ln.load_state_dict(theirs_ln.state_dict())  # same parameter names as torch's
    ours_rms.load_state_dict(theirs_rms.state_dict())
    assert ours_ln.eps == 1e-5 and ours_rms.eps == 1e-5
    assert "9, eps=1e-05" in repr(ours_ln)


def test_gradients_match_torch():
    x = randn(2, 5, 7, dtype=torch.float64, scale=2.0).requires_grad_()
    gamma, beta = (p.requires_grad_() for p in params(7, torch.float64))
    upstream = randn(2, 5, 7, dtype=torch.float64, seed=9)
    for ours, theirs in [(lambda: layer_norm(x, gamma, beta), lambda: F.layer_norm(x, (7,), gamma, beta, 1e-5)),
                         (lambda: rms_norm(x, gamma), lambda: F.rms_norm(x, (7,), gamma, eps=1e-6))]:
        grads_ours = torch.autograd.grad((ours() * upstream).sum(), (x, gamma))
        grads_theirs = torch.autograd.grad((theirs() * upstream).sum(), (x, gamma))
        for g1, g2 in zip(grads_ours, grads_theirs):
            torch.testing.assert_close(g1, g2)


def test_closed_form_small_vector():
    """The chapter's hand example: x = [1, 3, 5, 7] has mean 4, biased variance 5, mean square 21."""
    x = torch.tensor([1.0, 3, 5, 7], dtype=torch.float64)
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    expected = torch.tensor([-3.0, -1, 1, 3], dtype=torch.float64) / math.sqrt(5 + 1e-5)
    torch.testing.assert_close(layer_norm(x, ones, zeros), expected)
    torch.testing.assert_close(rms_norm(x, ones), x / math.sqrt(21 + 1e-6))
    # the exercise's vector: eps = 7 makes var + eps = 16 and mean square + eps = 25
    x = torch.tensor([0.0, 2, 2, 8], dtype=torch.float64)
    gamma = torch.tensor([2.0, 0.5, 1, 2], dtype=torch.float64)
    beta = torch.tensor([0.5, 0, 0, -1], dtype=torch.float64)
    torch.testing.assert_close(layer_norm(x, gamma, beta, eps=7), torch.tensor([-1.0, -0.125, -0.25, 1.5], dtype=torch.float64))
    torch.testing.assert_close(rms_norm(x, gamma, eps=7), torch.tensor([0.0, 0.2, 0.4, 3.2], dtype=torch.float64))


def test_non_contiguous_input():
    x = randn(7, 5, 2, dtype=torch.float64).permute(2, 1, 0)  # (2, 5, 7), not contiguous
    assert not x.is_contiguous()
    gamma, beta = params(7, torch.float64)
    torch.testing.assert_close(layer_norm(x, gamma, beta), F.layer_norm(x.contiguous(), (7,), gamma, beta, 1e-5))
    torch.testing.assert_close(rms_norm(x, gamma), F.rms_norm(x.contiguous(), (7,), gamma, eps=1e-6))


# ------------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------------


def _unit_stats(norm, x):
    d = x.shape[-1]
    return norm(x, torch.ones(d, dtype=x.dtype), torch.zeros(d, dtype=x.dtype))


def biased_layer_norm_ok(ln):
    """Zero mean and unit *biased* variance per token, before gamma/beta (eps = 0 for exactness)."""
    x = randn(3, 6, 10, dtype=torch.float64, scale=4.0, shift=-3.0)
    y = ln(x)
    return (torch.allclose(y.mean(-1), torch.zeros(3, 6, dtype=torch.float64), atol=1e-12)
            and torch.allclose(y.var(-1, correction=0), torch.ones(3, 6, dtype=torch.float64)))


def test_layer_norm_zero_mean_unit_biased_variance_and_the_property_can_fail():
    ones, zeros = torch.ones(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    assert biased_layer_norm_ok(lambda x: layer_norm(x, ones, zeros, eps=0.0))
    unbiased = lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
    assert not biased_layer_norm_ok(unbiased)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(d=st.integers(2, 64), seed=st.integers(0, 2**16), scale=st.floats(1e-2, 1e3))
def test_rms_norm_output_has_unit_rms(d, seed, scale):
    x = randn(4, d, dtype=torch.float64, seed=seed, scale=scale)
    y = rms_norm(x, torch.ones(d, dtype=torch.float64), eps=0.0)
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("a", [0.01, 3.0, 1000.0])
def test_both_are_invariant_to_scaling_a_token(a):
    x = randn(2, 5, 16, dtype=torch.float64, scale=2.0, shift=1.0)
    gamma, beta = params(16, torch.float64)
    torch.testing.assert_close(layer_norm(a * x, gamma, beta, eps=0.0), layer_norm(x, gamma, beta, eps=0.0))
    torch.testing.assert_close(rms_norm(a * x, gamma, eps=0.0), rms_norm(x, gamma, eps=0.0))
    # only LayerNorm is also invariant to shifting a token; RMSNorm is not
    torch.testing.assert_close(layer_norm(x + 5.0, gamma, beta), layer_norm(x, gamma, beta))
    assert not torch.allclose(rms_norm(x + 5.0, gamma), rms_norm(x, gamma))


def test_scale_invariance_can_fail():
    """The invariance test is a real test: a 'norm' that only subtracts the mean fails it."""
    x = randn(2, 5, 16, dtype=torch.float64)
    center = lambda t: t - t.mean(-1, keepdim=True)
    assert not torch.allclose(center(3.0 * x), center(x))


def test_each_token_is_normalized_by_its_own_statistics():
    """Changing other tokens (in the batch or the sequence) leaves a token's output unchanged."""
    x = randn(3, 6, 8, dtype=torch.float64)
    gamma, beta = params(8, torch.float64)
    x2 = x.clone()
    x2[1:] *= 7.0  # the other sequences of the batch
    x2[0, 1:] += 3.0  # the other tokens of sequence 0
    for norm in (lambda t: layer_norm(t, gamma, beta), lambda t: rms_norm(t, gamma)):
        assert close(norm(x)[0, 0], norm(x2)[0, 0], n=8)
    # a batch-axis "norm" fails the same test
    over_batch = lambda t: (t - t.mean(0)) / t.var(0, correction=0).add(1e-5).sqrt()
    assert not close(over_batch(x)[0, 0], over_batch(x2)[0, 0], n=8)


def test_batch_of_one():
    """A batch of one is fine per token, while batch statistics of one example are degenerate."""
    x = randn(1, 4, 8, dtype=torch.float64)
    gamma, beta = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    y = layer_norm(x, gamma, beta)
    assert y.abs().sum() > 1.0
    torch.testing.assert_close(y[0], layer_norm(x[0], gamma, beta))
    over_batch = (x - x.mean(0)) / x.var(0, correction=0).add(1e-5).sqrt()
    assert torch.equal(over_batch, torch.zeros_like(x))


# ------------------------------------------------------------------------------------------------
# Pre-LN and Post-LN blocks against nn.TransformerEncoderLayer
# ------------------------------------------------------------------------------------------------


def encoder_layer(norm_first, dtype, d_model=12, nhead=3, d_ff=20, seed=0):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, nhead, d_ff, dropout=0.0, batch_first=True,
                                       norm_first=norm_first, dtype=dtype).eval()
    with torch.no_grad():  # non-trivial gamma/beta, so norm1 and norm2 are not interchangeable
        for norm in (layer.norm1, layer.norm2):
            norm.weight.copy_(1 + 0.3 * torch.randn(d_model, dtype=dtype))
            norm.bias.copy_(0.3 * torch.randn(d_model, dtype=dtype))
    return layer


def sublayers_of(layer):
    attn = lambda h: layer.self_attn(h, h, h, need_weights=False)[0]
    ffn = lambda h: layer.linear2(layer.activation(layer.linear1(h)))
    norm1 = lambda h: layer_norm(h, layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    norm2 = lambda h: layer_norm(h, layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    return attn, ffn, norm1, norm2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first, block", [(True, pre_ln_block), (False, post_ln_block)], ids=["pre-LN", "post-LN"])
def test_blocks_match_transformer_encoder_layer(dtype, norm_first, block):
    layer = encoder_layer(norm_first, dtype)
    x = randn(2, 5, 12, dtype=dtype, scale=2.0)
    out = block(x, *sublayers_of(layer))
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, layer(x), **tol(dtype))
    with torch.no_grad():  # the fused inference path computes the same function
        torch.testing.assert_close(out.detach(), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_first, block, other", [(True, pre_ln_block, post_ln_block),
                                                      (False, post_ln_block, pre_ln_block)], ids=["pre-LN", "post-LN"])
def test_the_other_order_does_not_match(norm_first, block, other):
    layer = encoder_layer(norm_first, torch.float64)
    x = randn(2, 5, 12, dtype=torch.float64)
    assert not torch.allclose(other(x, *sublayers_of(layer)), layer(x))


def test_pre_ln_stack_needs_a_final_norm_outside_the_layers():
    """nn.TransformerEncoder(norm=...) applies the final LayerNorm once, after the last Pre-LN layer."""
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(12, 3, 20, dropout=0.0, batch_first=True, norm_first=True,
                                       dtype=torch.float64)
    stack = nn.TransformerEncoder(layer, num_layers=3, norm=nn.LayerNorm(12, dtype=torch.float64),
                                  enable_nested_tensor=False).eval()
    x = randn(2, 5, 12, dtype=torch.float64)
    h = x
    for sub in stack.layers:
        h = pre_ln_block(h, *sublayers_of(sub))
    torch.testing.assert_close(stack(x), layer_norm(h, stack.norm.weight, stack.norm.bias))
    assert not torch.allclose(stack(x), h)


def test_identity_path():
    """Pre-LN: zero sublayers give output = input exactly. Post-LN: the norms still act."""
    x = randn(2, 5, 12, dtype=torch.float64, scale=3.0, shift=1.0)
    zero = torch.zeros_like
    gamma, beta = params(12, torch.float64)
    norm = lambda h: layer_norm(h, gamma, beta)
    assert torch.equal(pre_ln_block(x, zero, zero, norm, norm), x)
    torch.testing.assert_close(post_ln_block(x, zero, zero, norm, norm), norm(norm(x)))
    assert not torch.allclose(post_ln_block(x, zero, zero, norm, norm), x)


def test_blocks_work_with_rms_norm_and_2d_input():
    x = randn(5, 12, dtype=torch.float64)
    gamma, _ = params(12, torch.float64)
    w = randn(12, 12, dtype=torch.float64, seed=4)
    attn = lambda h: torch.softmax(h @ h.transpose(-2, -1), -1) @ h
    ffn = lambda h: torch.tanh(h @ w.T)
    norm = lambda h: rms_norm(h, gamma)
    h = x + attn(norm(x))
    torch.testing.assert_close(pre_ln_block(x, attn, ffn, norm, norm), h + ffn(norm(h)))
    h = norm(x + attn(x))
    torch.testing.assert_close(post_ln_block(x, attn, ffn, norm, norm), norm(h + ffn(h)))


# ------------------------------------------------------------------------------------------------
# Residual-stream norms
# ------------------------------------------------------------------------------------------------


def test_residual_norms_closed_forms():
    x = randn(2, 5, 12, dtype=torch.float64)
    per_token = torch.stack([x[b, t].pow(2).sum().sqrt() for b in range(2) for t in range(5)]).mean()
    doubling = [lambda h: 2 * h] * 3
    torch.testing.assert_close(residual_norms(x, doubling), per_token * torch.tensor([1.0, 2, 4, 8], dtype=torch.float64))
    torch.testing.assert_close(residual_norms(x, []), per_token[None])
    unit = [lambda h: h / h.norm(dim=-1, keepdim=True)] * 2
    torch.testing.assert_close(residual_norms(x, unit)[1:], torch.ones(2, dtype=torch.float64))


def test_residual_norms_of_a_real_stack():
    layers = [encoder_layer(True, torch.float64, seed=s) for s in range(4)]
    x = randn(2, 5, 12, dtype=torch.float64)
    norms = residual_norms(x, layers)
    assert norms.shape == (5,)
    h, expected = x, [x.norm(dim=-1).mean()]
    for layer in layers:
        h = layer(h)
        expected.append(h.norm(dim=-1).mean())
    torch.testing.assert_close(norms, torch.stack(expected))


# ------------------------------------------------------------------------------------------------
# Bad input: the message names what was expected and what was received
# ------------------------------------------------------------------------------------------------

_x = torch.randn(2, 5, 7)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: layer_norm(_x, torch.ones(5), torch.zeros(7)), ShapeError, ["(d_model,) = (7,)", "gamma (5,)", "(2, 5, 7)"]),
        (lambda: layer_norm(_x, torch.ones(7), torch.zeros(2, 7)), ShapeError, ["beta", "(d_model,)", "(2, 7)"]),
        (lambda: rms_norm(_x, torch.ones(1, 7)), ShapeError, ["gamma", "(d_model,)", "(1, 7)"]),
        (lambda: rms_norm(_x, torch.ones(5)), ShapeError, ["(d_model,) = (7,)", "(5,)"]),
        (lambda: layer_norm(_x.long(), torch.ones(7), torch.zeros(7)), TypeError, ["floating-point", "torch.int64"]),
        (lambda: rms_norm(_x, torch.ones(7, dtype=torch.float64)), TypeError, ["torch.float32", "torch.float64"]),
        (lambda: layer_norm(_x, torch.ones(7), torch.zeros(7), eps=-1.0), ValueError, ["eps", "-1.0"]),
        (lambda: rms_norm(_x, torch.ones(7), eps=None), ValueError, ["eps", "None"]),
        (lambda: layer_norm([1.0, 2.0], torch.ones(2), torch.zeros(2)), TypeError, ["torch.Tensor", "list"]),
        (lambda: pre_ln_block(torch.randn(7), torch.tanh, torch.tanh, torch.tanh, torch.tanh), ShapeError, ["(..., T, d_model)", "(7,)"]),
        (lambda: pre_ln_block(_x, lambda h: h[..., :3], torch.tanh, torch.tanh, torch.tanh), ShapeError, ["attn", "(2, 5, 7)", "(2, 5, 3)"]),
        (lambda: post_ln_block(_x, torch.tanh, lambda h: h.sum(-1), torch.tanh, torch.tanh), ShapeError, ["ffn", "(2, 5, 7)", "(2, 5)"]),
        (lambda: post_ln_block(_x, torch.tanh, torch.tanh, "layernorm", torch.tanh), TypeError, ["norm1", "callable", "str"]),
        (lambda: residual_norms(torch.randn(5, 7), []), ShapeError, ["(B, T, d_model)", "(5, 7)"]),
        (lambda: residual_norms(_x, [torch.tanh, lambda h: h[0]]), ShapeError, ["blocks[1]", "(2, 5, 7)", "(5, 7)"]),
    ],
)
def test_bad_input_names_expected_and_received_shapes(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))
