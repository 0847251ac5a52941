"""helpers.depth against oracles nobody here wrote: nn.TransformerEncoder for the stack, autograd
on torch's own modules for the gradients, Xavier's variance formula for the init, and closed forms
for the log-log slope."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.depth import (
    WARMUP_RUNS,
    direct_path_logits,
    encoder_layer_sublayers,
    loglog_slope,
    stack_gradients,
    table_loss,
    warmup_experiment,
    xavier_encoder_layer,
)
from helpers.norms import post_ln_block, pre_ln_block
from helpers.numerics import assert_close

SMALL = dict(d_model=16, n_heads=2, d_ff=32, T=5, B=3, vocab=11)


@pytest.mark.parametrize("order", ["pre", "post"])
def test_xavier_init_has_xavier_variance_zero_biases_and_identity_norms(order):
    torch.manual_seed(0)
    d, d_ff = 64, 256
    layer = xavier_encoder_layer(d, 4, d_ff, order)
    assert layer.norm_first == (order == "pre")
    for name, p in layer.named_parameters():
        if name.startswith("norm") and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        elif p.dim() == 1:
            assert torch.equal(p, torch.zeros_like(p)), name
    # Xavier normal: variance 2 / (fan_in + fan_out), each of W_Q, W_K, W_V on its own
    for w, fan_in, fan_out in [*[(part, d, d) for part in layer.self_attn.in_proj_weight.split(d)],
                               (layer.self_attn.out_proj.weight, d, d), (layer.linear1.weight, d, d_ff),
                               (layer.linear2.weight, d_ff, d)]:
        expected = 2 / (fan_in + fan_out)
        assert abs(w.var().item() / expected - 1) < 0.1, (tuple(w.shape), w.var().item(), expected)
    # the stacked in_proj treated as one matrix would have variance 2 / (d + 3d) = 1 / (2d), not 1 / d
    assert abs(layer.self_attn.in_proj_weight.var().item() * d - 1) < 0.1


@pytest.mark.parametrize("order", ["pre", "post"])
def test_our_block_on_the_layers_sublayers_equals_the_torch_layer(order):
    torch.manual_seed(1)
    layer = xavier_encoder_layer(16, 2, 32, order)
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    block = pre_ln_block if order == "pre" else post_ln_block
    assert_close(block(x, *encoder_layer_sublayers(layer)), layer(x), n=32)


@pytest.mark.parametrize("order", ["pre", "post"])
def test_stack_gradients_equal_autograd_through_nn_transformer_encoder(order):
    """Rebuild the same stack from the same seed as an nn.TransformerEncoder (with the final norm for
    Pre-LN), run the same loss, and compare every per-layer gradient norm."""
    L, seed = 3, 7
    got = stack_gradients(L, order, seed=seed, **SMALL)
    d, V, T, B = SMALL["d_model"], SMALL["vocab"], SMALL["T"], SMALL["B"]
    torch.manual_seed(seed)
    layers = [xavier_encoder_layer(d, SMALL["n_heads"], SMALL["d_ff"], order) for _ in range(L)]
    readout = nn.Linear(d, V, dtype=torch.float64)
    with torch.no_grad():
        nn.init.xavier_normal_(readout.weight)
        nn.init.zeros_(readout.bias)
    encoder = nn.TransformerEncoder(layers[0], L, norm=nn.LayerNorm(d, dtype=torch.float64) if order == "pre" else None,
                                    enable_nested_tensor=False)
    encoder.layers = nn.ModuleList(layers)
    data = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(B, T, d, generator=data, dtype=torch.float64)
    labels = torch.randint(V, (B, T), generator=data)
    loss = F.cross_entropy(readout(encoder(x)).reshape(B * T, V), labels.reshape(B * T))
    loss.backward()
    assert math.isclose(got.loss, loss.item(), rel_tol=1e-9)
    w2 = torch.stack([layer.linear2.weight.grad.norm() for layer in layers])
    assert_close(got.w2, w2, n=64)
    non_norm = torch.stack([
        torch.cat([layer.self_attn.in_proj_weight.grad.flatten(), layer.self_attn.in_proj_bias.grad.flatten(),
                   layer.self_attn.out_proj.weight.grad.flatten(), layer.self_attn.out_proj.bias.grad.flatten(),
                   layer.linear1.weight.grad.flatten(), layer.linear1.bias.grad.flatten(),
                   layer.linear2.weight.grad.flatten(), layer.linear2.bias.grad.flatten()]).norm()
        for layer in layers])
    assert_close(got.non_norm, non_norm, n=64)
    assert (got.non_norm > got.w2).all()  # W2 is one of the non-norm parameters, not all of them
    assert got.w2.shape == (L,) and got.stream.shape == (L + 1,)


def test_post_ln_stream_is_sqrt_d_after_every_block_and_pre_ln_stream_grows():
    post = stack_gradients(6, "post", seed=0, **SMALL)
    # gamma = 1, beta = 0: every token leaves a norm with mean 0 and variance var / (var + eps), i.e.
    # norm sqrt(d) lowered by a relative eps / (2 var) ~ 1e-5 (eps = 1e-5 inside the root)
    assert all(math.isclose(v, math.sqrt(16), rel_tol=1e-4) for v in post.stream[1:].tolist())
    assert not math.isclose(post.stream[0].item(), math.sqrt(16), rel_tol=1e-2)  # the raw input is not normalized
    pre = stack_gradients(6, "pre", seed=0, **SMALL)
    assert (pre.stream[1:] > pre.stream[:-1]).all()
    assert all(math.isclose(v, 16, rel_tol=2e-4) for v in post.stream_sq[1:].tolist())  # squared: d
    assert (pre.stream_sq >= pre.stream ** 2 * (1 - 1e-12)).all()  # mean of squares >= square of the mean
    assert (pre.stream_sq[1:] > pre.stream_sq[:-1]).all()


def test_stack_gradients_is_reproducible_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = stack_gradients(2, "pre", seed=3, **SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = stack_gradients(2, "pre", seed=3, **SMALL)
    c = stack_gradients(2, "pre", seed=4, **SMALL)
    assert torch.equal(a.w2, b.w2) and not torch.equal(a.w2, c.w2)


def test_pre_ln_without_final_norm_is_a_different_readout():
    right = stack_gradients(4, "pre", seed=0, **SMALL)
    wrong = stack_gradients(4, "pre", seed=0, final_norm=False, **SMALL)
    assert torch.equal(right.stream, wrong.stream)  # the same stack ...
    assert not math.isclose(right.loss, wrong.loss, rel_tol=1e-3)  # ... read differently


@pytest.mark.parametrize("bad, match", [
    (dict(order="middle"), "order must be 'pre' or 'post'"),
    (dict(n_layers=0), "n_layers must be a positive int"),
    (dict(seed=1.5), "seed must be an int"),
])
def test_bad_arguments_are_named(bad, match):
    args = dict(n_layers=2, order="pre", seed=0) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        stack_gradients(args.pop("n_layers"), args.pop("order"), **args, **SMALL)


@pytest.mark.parametrize("exponent", [-0.5, 0.0, 1.0, 2.5])
def test_loglog_slope_recovers_a_power_law(exponent):
    xs = [6, 12, 24, 48]
    assert math.isclose(loglog_slope(xs, [3.0 * x ** exponent for x in xs]), exponent, abs_tol=1e-12)


def test_loglog_slope_is_the_least_squares_fit():
    xs, ys = [1.0, 2.0, 4.0], [1.0, 4.0, 8.0]  # log2: (0, 0), (1, 2), (2, 3): slope 1.5
    assert math.isclose(loglog_slope(xs, ys), 1.5, rel_tol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2], [1, 0])
    with pytest.raises(ValueError, match="at least 2"):
        loglog_slope([1], [1])
    with pytest.raises(ValueError, match="not all be equal"):
        loglog_slope([2, 2], [1, 3])


def test_stack_gradients_restores_the_thread_count():
    before = torch.get_num_threads()
    stack_gradients(1, "post", seed=0, **SMALL)
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------------------
# The direct path W_E -> final norm -> W_U
# ------------------------------------------------------------------------------------------------


def _tiny(n_layers, **extra):
    from helpers.blocks import ModelConfig, TinyDecoder

    torch.manual_seed(0)
    return TinyDecoder(ModelConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=n_layers, max_seq_len=8,
                                   positions="none", tie_weights=False, **extra))


def test_direct_path_is_the_whole_model_when_there_are_no_blocks():
    model = _tiny(0)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    table = direct_path_logits(model)  # (V, V)
    assert table.shape == (13, 13)
    assert_close(table[ids[0]], model(ids)[0], n=16)


def test_direct_path_equals_a_model_whose_blocks_add_nothing():
    model = _tiny(2)
    with torch.no_grad():  # zero every block's output projections: each sublayer's edit is 0
        for name, p in model.blocks.named_parameters():
            if name.endswith(("attn.o_proj.weight", "ffn.fc2.weight")):
                p.zero_()
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    zeroed = [p for p in model.blocks.parameters() if p.dim() == 2 and torch.count_nonzero(p) == 0]
    assert len(zeroed) == 4, "two output projections per block must be zeroed, or the test proves nothing"
    assert_close(direct_path_logits(model)[ids[0]], model(ids)[0], n=16)
    assert not torch.allclose(direct_path_logits(_tiny(2))[ids[0]], _tiny(2)(ids)[0])  # untouched blocks do add edits


def test_table_loss_is_the_mean_negative_log_probability_of_the_pairs():
    log_p = torch.log(torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64))
    ids = torch.tensor([0, 1, 1, 0])  # pairs (0,1), (1,1), (1,0)
    expected = -(math.log(0.5) + math.log(0.9) + math.log(0.1)) / 3
    assert math.isclose(table_loss(log_p, ids), expected, rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"\(V, V\)"):
        table_loss(log_p[0], ids)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_post_ln_without_warmup_fails_where_the_other_three_learn(seed):
    """About 13 CPU-seconds per seed: four 12-layer runs of 100 steps."""
    r = warmup_experiment(seed)
    assert set(r) == {f"{o}_{'warmup' if w else 'no_warmup'}" for o, w in WARMUP_RUNS} | {"entropy_rate", "uniform"}
    others = [r["post_warmup"], r["pre_warmup"], r["pre_no_warmup"]]
    assert r["post_no_warmup"] > max(others) + 0.3, r  # clearly worse than each of the other three
    assert r["post_no_warmup"] > r["entropy_rate"] + 1.0, r  # it has not learned the transitions
    assert r["pre_warmup"] < r["entropy_rate"] + 0.3, r  # the healthy run nearly reaches the floor
    assert r["post_warmup"] < r["post_no_warmup"] - 0.5, r  # warm-up is what rescues Post-LN
