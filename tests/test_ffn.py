"""helpers.ffn against oracles nobody here wrote: torch's activations and nn.Linear, a dense loop over
experts, closed forms (parameter counts of published models), and properties that can fail."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.attention import causal_mask, scaled_dot_product_attention
from helpers.ffn import (
    FeedForward,
    MoEFFN,
    SwiGLUFFN,
    block_param_counts,
    capacity_keep,
    expert_capacity,
    feed_forward,
    ffn_param_count,
    gelu,
    load_balancing_loss,
    moe_forward,
    moe_param_count,
    relu,
    silu,
    swiglu_ffn,
    swiglu_width,
    token_influence,
    top_k_route,
)
from helpers.numerics import assert_close, close, tolerances
from helpers.shapes import ShapeError

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    # the course's one rule for float comparisons (torch's defaults for these short reductions)
    return tolerances(dtype)


def randn(*shape, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def ffn_weights(d_model=6, d_ff=10, seed=1, dtype=torch.float32):
    return (randn(d_ff, d_model, seed=seed, dtype=dtype), randn(d_ff, seed=seed + 1, dtype=dtype),
            randn(d_model, d_ff, seed=seed + 2, dtype=dtype), randn(d_model, seed=seed + 3, dtype=dtype))


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(dtype, approximate):
    x = torch.cat([torch.linspace(-8, 8, 2001, dtype=dtype), randn(3, 50, seed=2, dtype=dtype).flatten() * 4])
    torch.testing.assert_close(gelu(x, approximate), F.gelu(x, approximate=approximate), **tol(dtype))
    assert gelu(x, approximate).dtype == dtype


def test_gelu_forms_differ_and_closed_values():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(gelu(x), x * phi)
    assert gelu(torch.tensor(0.0)).item() == 0.0
    assert 1e-4 < (gelu(x) - gelu(x, "tanh")).abs().max() < 1e-3  # close, but not the same function
    with pytest.raises(ValueError, match="'none' or 'tanh'"):
        gelu(x, "sigmoid")


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_silu_match_torch(dtype):
    x = randn(4, 33, seed=3, dtype=dtype) * 5
    torch.testing.assert_close(silu(x), F.silu(x), **tol(dtype))
    torch.testing.assert_close(relu(x), F.relu(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# FFN and SwiGLU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation, torch_act", [("gelu", F.gelu), ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh")),
                                                   ("relu", F.relu), ("silu", F.silu)])
def test_feed_forward_matches_torch_linear_layers(dtype, activation, torch_act):
    x = randn(2, 5, 6, seed=4, dtype=dtype)  # (B, T, d_model)
    w1, b1, w2, b2 = ffn_weights(dtype=dtype)
    expected = F.linear(torch_act(F.linear(x, w1, b1)), w2, b2)
    out = feed_forward(x, w1, b1, w2, b2, activation)
    assert out.shape == (2, 5, 6) and out.dtype == dtype
    torch.testing.assert_close(out, expected, **tol(dtype))
    torch.testing.assert_close(feed_forward(x, w1, None, w2, None, activation),
                               F.linear(torch_act(F.linear(x, w1)), w2), **tol(dtype))


def test_feed_forward_module_is_an_nn_sequential():
    torch.manual_seed(0)
    module = FeedForward(6, 10, activation="gelu")
    oracle = torch.nn.Sequential(module.fc1, torch.nn.GELU(), module.fc2)
    x = randn(3, 4, 6, seed=5)
    torch.testing.assert_close(module(x), oracle(x))
    assert sum(p.numel() for p in module.parameters()) == ffn_param_count(6, 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_matches_torch(dtype):
    x = randn(2, 5, 6, seed=6, dtype=dtype)
    w_gate, w_up, w_down = randn(10, 6, seed=7, dtype=dtype), randn(10, 6, seed=8, dtype=dtype), randn(6, 10, seed=9, dtype=dtype)
    expected = F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
    torch.testing.assert_close(swiglu_ffn(x, w_gate, w_up, w_down), expected, **tol(dtype))
    swapped = F.linear(F.silu(F.linear(x, w_up)) * F.linear(x, w_gate), w_down)
    assert not torch.allclose(swiglu_ffn(x, w_gate, w_up, w_down), swapped)  # gate and up are not interchangeable
    module = SwiGLUFFN(6, 10).to(dtype)
    torch.testing.assert_close(module(x), F.linear(F.silu(module.gate(x)) * module.up(x), module.down.weight), **tol(dtype))
    assert sum(p.numel() for p in module.parameters()) == ffn_param_count(6, 10, gated=True, bias=False)


def test_ffn_works_on_any_leading_axes_and_non_contiguous_input():
    w1, b1, w2, b2 = ffn_weights()
    x = randn(5, 2, 6, seed=10).transpose(0, 1)  # (B, T, d_model), not contiguous
    assert not x.is_contiguous()
    flat = feed_forward(x.reshape(-1, 6), w1, b1, w2, b2).reshape(2, 5, 6)
    torch.testing.assert_close(feed_forward(x, w1, b1, w2, b2), flat)
    torch.testing.assert_close(feed_forward(x[0, 0], w1, b1, w2, b2), flat[0, 0])


def test_bad_inputs_name_the_shapes():
    w1, b1, w2, b2 = ffn_weights()
    x = randn(2, 5, 6)
    with pytest.raises(ShapeError, match=r"w1 must have shape \(d_ff, d_model\) = \(d_ff, 6\).*got \(6, 10\)"):
        feed_forward(x, w1.T, b1, w2, b2)
    with pytest.raises(ShapeError, match=r"w2 must have shape \(d_model, d_ff\) = \(6, 10\).*got \(10, 6\)"):
        feed_forward(x, w1, b1, w2.T, b2)
    with pytest.raises(ShapeError, match=r"b1 must have shape \(d_ff,\) = \(10,\); got \(6,\)"):
        feed_forward(x, w1, b2, w2, b2)
    with pytest.raises(TypeError, match="floating-point"):
        feed_forward(x.long(), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="share one dtype"):
        feed_forward(x.double(), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="activation must be one of"):
        feed_forward(x, w1, b1, w2, b2, "tanh")
    with pytest.raises(ShapeError, match=r"w_up must have shape \(d_ff, d_model\) = \(10, 6\).*got \(9, 6\)"):
        swiglu_ffn(x, randn(10, 6), randn(9, 6), randn(6, 10))
    with pytest.raises(ShapeError, match=r"x must have shape \(\.\.\., d_model\); got \(\) \(rank 0\)"):
        swiglu_ffn(torch.tensor(1.0), randn(10, 6), randn(10, 6), randn(6, 10))


# ---------------------------------------------------------------------------------------------
# Token independence (the property, and proof that the test of it can fail)
# ---------------------------------------------------------------------------------------------


def test_ffn_is_token_independent_and_permutation_equivariant():
    w1, b1, w2, b2 = ffn_weights()
    x = randn(2, 7, 6, seed=11)
    out = feed_forward(x, w1, b1, w2, b2)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    # Equal up to rounding only: permuted rows may be blocked differently inside the matrix multiply.
    assert_close(feed_forward(x[:, perm], w1, b1, w2, b2), out[:, perm], n=24)
    for j in range(7):
        x2 = x.clone()
        x2[:, j] += 3.0
        out2 = feed_forward(x2, w1, b1, w2, b2)
        others = [i for i in range(7) if i != j]
        assert close(out2[:, others], out[:, others], n=24)
        assert not close(out2[:, j], out[:, j], n=24)


def test_token_influence_is_diagonal_for_ffn_and_full_for_attention():
    w1, b1, w2, b2 = ffn_weights()
    x = randn(2, 5, 6, seed=12)
    ffn = token_influence(lambda t: feed_forward(t, w1, b1, w2, b2), x)
    off_diagonal = ~torch.eye(5, dtype=torch.bool)
    assert torch.all(ffn[off_diagonal] == 0) and torch.all(ffn.diagonal() > 0)
    attention = token_influence(lambda t: scaled_dot_product_attention(t, t, t)[0], x)
    assert torch.all(attention > 0)  # the same test fails on a token mixer
    causal = token_influence(lambda t: scaled_dot_product_attention(t, t, t, causal_mask(5))[0], x)
    assert torch.equal(causal > 0, causal_mask(5))


# ---------------------------------------------------------------------------------------------
# Parameter counts: published model sizes
# ---------------------------------------------------------------------------------------------


def test_gpt2_small_mlp_is_two_thirds_of_a_block():
    counts = block_param_counts(768, 3072)
    assert counts == {"attention": 2_362_368, "mlp": 4_722_432}
    assert abs(counts["mlp"] / (counts["mlp"] + counts["attention"]) - 2 / 3) < 1e-3
    # GPT-2 small has 124,439,808 parameters: embeddings 50257*768 + 1024*768, 12 blocks, final LayerNorm.
    layer_norms = 2 * 2 * 768
    total = 50257 * 768 + 1024 * 768 + 12 * (counts["attention"] + counts["mlp"] + layer_norms) + 2 * 768
    assert total == 124_439_808


def test_ffn_param_count_matches_modules():
    for d_model, d_ff in [(8, 32), (5, 7)]:
        for bias in (True, False):
            module = FeedForward(d_model, d_ff, bias=bias)
            assert ffn_param_count(d_model, d_ff, bias=bias) == sum(p.numel() for p in module.parameters())
            gated = [torch.nn.Linear(d_model, d_ff, bias=bias), torch.nn.Linear(d_model, d_ff, bias=bias),
                     torch.nn.Linear(d_ff, d_model, bias=bias)]
            assert ffn_param_count(d_model, d_ff, gated=True, bias=bias) == sum(p.numel() for m in gated for p in m.parameters())


def test_swiglu_width_matches_llama_and_the_parameter_budget():
    assert swiglu_width(4096, multiple_of=256) == 11008  # Llama-1/2 7B
    assert swiglu_width(5120, multiple_of=256) == 13824  # Llama-2 13B
    assert swiglu_width(768) == 2048
    d_ff = swiglu_width(768)
    assert ffn_param_count(768, d_ff, gated=True, bias=False) == ffn_param_count(768, 4 * 768, bias=False)
    with pytest.raises(ValueError, match="positive int"):
        swiglu_width(0)


def test_moe_param_count_mixtral_layer():
    counts = moe_param_count(4096, 14336, 8, 2)
    expert = 3 * 4096 * 14336
    assert counts == {"total": 8 * expert + 8 * 4096, "active": 2 * expert + 8 * 4096}


# ---------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_top_k_route_against_a_loop_and_the_softmax_then_renormalise_form(dtype):
    logits = randn(3, 4, 7, seed=13, dtype=dtype)  # (B, T, n_experts)
    weights, idx = top_k_route(logits, 3)
    assert weights.shape == idx.shape == (3, 4, 3) and idx.dtype == torch.int64 and weights.dtype == dtype
    for b in range(3):
        for t in range(4):
            row = logits[b, t].tolist()
            order = sorted(range(7), key=lambda e: -row[e])[:3]
            assert idx[b, t].tolist() == order
            exps = [math.exp(row[e] - row[order[0]]) for e in order]
            torch.testing.assert_close(weights[b, t], torch.tensor([v / sum(exps) for v in exps], dtype=dtype), **tol(dtype))
    # the other convention: softmax over all experts, top-k, renormalise -> the same weights
    probs = torch.softmax(logits, dim=-1).gather(-1, idx)
    torch.testing.assert_close(probs / probs.sum(-1, keepdim=True), weights, **tol(dtype))
    assert (probs.sum(-1) < 1 - 1e-3).all()  # without renormalising they do not sum to 1


def test_top_k_route_edges_and_errors():
    logits = randn(5, 4, seed=14)
    w, idx = top_k_route(logits, 1)
    assert torch.equal(w, torch.ones(5, 1)) and torch.equal(idx[:, 0], logits.argmax(-1))
    w, idx = top_k_route(logits, 4)
    torch.testing.assert_close(w.gather(-1, idx.argsort(-1)), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match=r"k = 5 is more than n_experts = 4"):
        top_k_route(logits, 5)
    with pytest.raises(ValueError, match="positive int"):
        top_k_route(logits, 0)


# ---------------------------------------------------------------------------------------------
# MoE forward: a dense loop over experts as the oracle
# ---------------------------------------------------------------------------------------------


def dense_moe(x, router_weight, experts, k):
    """Every expert on every token, weighted by a dense (N, n_experts) gate that is 0 off the top-k."""
    logits = x @ router_weight.T
    n = router_weight.shape[0]
    flat = logits.reshape(-1, n)
    gate = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        top = sorted(range(n), key=lambda e: -flat[t, e].item())[:k]
        z = torch.stack([flat[t, e] for e in top])
        for e, w in zip(top, torch.softmax(z, 0)):
            gate[t, e] = w
    outs = torch.stack([expert(x.reshape(-1, x.shape[-1])) for expert in experts], dim=1)  # (N, n, d)
    return (gate[:, :, None] * outs).sum(1).reshape(x.shape)


def make_experts(n, d_model, d_ff, dtype, seed=20, gated=False):
    experts = []
    for e in range(n):
        if gated:
            ws = [randn(d_ff, d_model, seed=seed + 3 * e, dtype=dtype), randn(d_ff, d_model, seed=seed + 3 * e + 1, dtype=dtype),
                  randn(d_model, d_ff, seed=seed + 3 * e + 2, dtype=dtype)]
            experts.append(lambda t, ws=ws: swiglu_ffn(t, *ws))
        else:
            ws = ffn_weights(d_model, d_ff, seed=seed + 4 * e, dtype=dtype)
            experts.append(lambda t, ws=ws: feed_forward(t, *ws))
    return experts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("gated", [False, True])
def test_moe_forward_matches_dense_loop(dtype, k, gated):
    x = randn(2, 6, 4, seed=15, dtype=dtype)
    router = randn(5, 4, seed=16, dtype=dtype)
    experts = make_experts(5, 4, 9, dtype, gated=gated)
    out = moe_forward(x, router, experts, k)
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, dense_moe(x, router, experts, k), **tol(dtype))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(B=st.integers(1, 3), T=st.integers(1, 6), d=st.integers(1, 5), n=st.integers(1, 6), data=st.data())
def test_moe_random_shapes_match_dense_loop(B, T, d, n, data):
    k = data.draw(st.integers(1, n))
    x, router = randn(B, T, d, seed=B * 100 + T, dtype=torch.float64), randn(n, d, seed=n * 7 + d, dtype=torch.float64)
    experts = make_experts(n, d, 3, torch.float64)
    torch.testing.assert_close(moe_forward(x, router, experts, k), dense_moe(x, router, experts, k))


def test_equal_logits_and_all_experts_give_the_mean():
    x = randn(3, 4, seed=17, dtype=torch.float64)
    experts = make_experts(4, 4, 6, torch.float64)
    out = moe_forward(x, torch.zeros(4, 4, dtype=torch.float64), experts, k=4)
    torch.testing.assert_close(out, torch.stack([e(x) for e in experts]).mean(0))


def test_moe_module_and_dropped_tokens():
    torch.manual_seed(0)
    layer = MoEFFN(6, 8, n_experts=3, k=2).double()
    x = randn(2, 5, 6, seed=18, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense_moe(x, layer.router.weight, list(layer.experts), 2))
    assert sum(p.numel() for p in layer.parameters()) == moe_param_count(6, 8, 3, 2)["total"]
    # a tiny capacity drops assignments: those tokens get less (or nothing) from the layer
    capped = moe_forward(x, layer.router.weight, list(layer.experts), 2, capacity_factor=0.3)
    assert not torch.allclose(capped, layer(x))


def test_capacity_and_keep_mask():
    assert expert_capacity(8, 4) == 2 and expert_capacity(8, 4, capacity_factor=1.25) == 3
    assert expert_capacity(10, 10, capacity_factor=1.1) == 2 and expert_capacity(100, 10, capacity_factor=1.1) == 11
    assert expert_capacity(8, 4, k=2) == 4
    idx = torch.tensor([[0], [0], [1], [0], [2], [0], [3], [1]])  # top-1: expert 0 gets 4 tokens
    keep = capacity_keep(idx, 4, capacity=2)
    assert keep[:, 0].tolist() == [True, True, True, False, True, False, True, True]
    # k = 2: every first choice is served before any second choice
    idx2 = torch.tensor([[1, 0], [0, 1], [0, 2]])
    assert capacity_keep(idx2, 3, 1).tolist() == [[True, False], [True, False], [False, True]]


def test_load_balancing_loss_closed_forms_and_gradient():
    n = 4
    uniform_logits = torch.zeros(8, n, dtype=torch.float64, requires_grad=True)
    balanced = torch.arange(8).remainder(n)[:, None]  # (N, 1): two tokens per expert
    loss = load_balancing_loss(uniform_logits, balanced)
    torch.testing.assert_close(loss, torch.tensor(1.0, dtype=torch.float64))
    collapsed_logits = torch.zeros(8, n, dtype=torch.float64)
    collapsed_logits[:, 0] = 50.0
    torch.testing.assert_close(load_balancing_loss(collapsed_logits, torch.zeros(8, 1, dtype=torch.long)),
                               torch.tensor(float(n), dtype=torch.float64))
    # f = (1/2, 1/4, 1/8, 1/8), P = (.4, .3, .2, .1): 4 * (0.2 + 0.075 + 0.025 + 0.0125) = 1.25
    P = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    idx = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])[:, None]
    torch.testing.assert_close(load_balancing_loss(P.log().expand(8, 4), idx), torch.tensor(1.25, dtype=torch.float64))
    # the gradient flows through P only, and pushes probability away from the over-used expert
    logits = randn(8, n, seed=19, dtype=torch.float64).requires_grad_()
    load_balancing_loss(logits, idx).backward()
    assert logits.grad[:, 0].sum() > 0 > logits.grad[:, 3].sum()


def test_moe_bad_inputs():
    x = randn(2, 4)
    with pytest.raises(ShapeError, match=r"routes to 3 experts, but 2 experts were given"):
        moe_forward(x, randn(3, 4), make_experts(2, 4, 5, torch.float32), 1)
    with pytest.raises(ShapeError, match=r"router_weight must have shape \(n_experts, d_model\) = \(n_experts, 4\).*got \(4, 3\)"):
        moe_forward(x, randn(4, 3), make_experts(4, 4, 5, torch.float32), 1)
    with pytest.raises(ShapeError, match="expert_indices must be integers"):
        load_balancing_loss(randn(2, 4), torch.zeros(3, 1, dtype=torch.long))
