"""helpers.nanogpt: the speed baseline is nanoGPT's architecture (counted, tied, causal), its optimizer
groups are nanoGPT's, and the stopwatch interleaves models and restores the thread count. No times
are asserted (COURSE.md §6): the comparison itself is a benchmark, tools/bench_training.py."""

from __future__ import annotations

import pytest
import torch

from helpers.nanogpt import NANOGPT_CPU, NanoGPT, compare_training, nanogpt_step, training_flops_per_token
from helpers.numerics import assert_close
from helpers.training import param_count

pytestmark = pytest.mark.usefixtures("one_thread")


def _small(bias: bool = False) -> NanoGPT:
    torch.manual_seed(0)
    return NanoGPT(vocab_size=13, block_size=10, n_layer=2, n_head=2, n_embd=8, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
def test_the_parameter_count_is_gpt2s_formula_with_a_tied_head(bias):
    V, T, L, d = 13, 10, 2, 8
    per_layer = 12 * d * d + 2 * d + (2 * d if bias else 0)  # 4 d² attention + 8 d² MLP, 2 LN gains (+ betas)
    if bias:
        per_layer += 3 * d + d + 4 * d + d  # c_attn, c_proj, c_fc, c_proj biases
    expected = V * d + T * d + L * per_layer + d + (d if bias else 0)  # + ln_f
    model = _small(bias)
    assert param_count(model) == expected
    assert model.lm_head.weight is model.wte.weight
    assert model.h[0].attn.c_attn.weight.shape == (3 * d, d)


def test_nanogpt_cpu_configuration_has_about_0_8_million_parameters():
    c = NANOGPT_CPU
    model = NanoGPT(c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["n_embd"])
    assert param_count(model) == 65 * 128 + 64 * 128 + 4 * (12 * 128 * 128 + 2 * 128) + 128  # 804,096


def test_a_future_token_never_changes_earlier_logits_and_the_loss_is_cross_entropy():
    model = _small().double()
    ids = torch.randint(0, 13, (2, 10), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 13
    logits, loss = model(ids, ids)
    assert_close(model(changed)[0][:, :6], logits[:, :6], n=8 * 10)
    assert not torch.allclose(model(changed)[0][:, 6:], logits[:, 6:])
    assert_close(loss, torch.nn.functional.cross_entropy(logits.reshape(-1, 13), ids.reshape(-1)), n=13 * 20)


def test_the_optimizer_decays_matrices_only_and_a_step_changes_the_weights():
    model = _small(bias=True)
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.99))
    decayed, plain = opt.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)
    before = model.h[0].attn.c_attn.weight.detach().clone()
    ids = torch.randint(0, 13, (2, 10), generator=torch.Generator().manual_seed(2))
    nanogpt_step(model, opt, ids[:, :-1].contiguous(), ids[:, 1:].contiguous())  # nanoGPT's batches are contiguous
    assert not torch.equal(before, model.h[0].attn.c_attn.weight) and all(p.grad is None for p in model.parameters())


def test_compare_training_interleaves_the_models_and_restores_the_thread_count():
    calls: list[tuple[str, int]] = []
    steppers = {name: (lambda i, name=name: calls.append((name, torch.get_num_threads()))) for name in "ABC"}
    before = torch.get_num_threads()
    rates = compare_training(steppers, 100, threads=(1, 2), rounds=2, seconds=0.0, warmup=1)
    assert [name for name, _ in calls] == list("ABC") + list("ABCABC") + list("ABC") + list("ABCABC")
    assert [n for _, n in calls] == [1] * 9 + [2] * 9
    assert set(rates) == {1, 2} and all(len(r) == 2 and min(r) > 0 for by in rates.values() for r in by.values())
    assert torch.get_num_threads() == before


def test_training_flops_per_token_is_6n_plus_attention():
    assert training_flops_per_token(1000, 2, 8, 10) == 6 * 1000 + 12 * 2 * 8 * 10
