"""helpers.training: losses against F.cross_entropy and a loss written out position by position, the
batch sampler, the schedule against torch's own schedulers, and the loop against an independently
written AdamW loop, for determinism, and on a Markov chain whose best possible loss is known."""

from __future__ import annotations

import copy
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.blocks import ModelConfig, TinyDecoder
from helpers.corpus import markov_chain
from helpers.numerics import assert_close
from helpers.shapes import ShapeError
from helpers.training import TrainHistory, batches, lm_loss, lr_at, token_loss, train

matplotlib.use("Agg")


# Tiny models: one torch thread is several times faster on a busy 2-core CPU (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(B: int, T: int, V: int, dtype=torch.float64, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).to(dtype)


def _ids(B: int, T: int, V: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _shifted_loss_by_hand(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int = -100) -> float:
    """The next-token loss one prediction at a time: position t predicts ids[b, t + 1]."""
    total, count = 0.0, 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            target = int(ids[b, t + 1])
            if target == ignore_index:
                continue
            z = logits[b, t].double()
            total += float(-(z[target] - z.exp().sum().log()))
            count += 1
    return total / count


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), T=st.integers(1, 9), V=st.integers(2, 13), seed=st.integers(0, 10_000))
def test_token_loss_equals_torch_cross_entropy(dtype, B, T, V, seed):
    logits, targets = _logits(B, T, V, dtype, seed), _ids(B, T, V, seed + 1)
    expected = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))
    assert_close(token_loss(logits, targets), expected, n=V * B * T)


def test_token_loss_ignores_targets_equal_to_ignore_index_like_torch():
    logits, targets = _logits(3, 7, 11), _ids(3, 7, 11)
    targets[0, 2:] = -100
    targets[2, 0] = -100
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=-100)
    assert_close(token_loss(logits, targets), expected, n=11 * 21)
    other = targets.masked_fill(targets == -100, 5)  # a custom ignore index
    other[1, 1] = 5
    expected = F.cross_entropy(logits.reshape(-1, 11), other.reshape(-1), ignore_index=5)
    assert_close(token_loss(logits, other, ignore_index=5), expected, n=11 * 21)


def test_token_loss_is_differentiable_and_matches_torch_gradients():
    logits = _logits(2, 5, 7).requires_grad_()
    targets = _ids(2, 5, 7)
    targets[1, 3] = -100
    (g,) = torch.autograd.grad(token_loss(logits, targets), logits)
    (expected,) = torch.autograd.grad(F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1)), logits)
    assert_close(g, expected, n=7 * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(2, 8), V=st.integers(2, 9), seed=st.integers(0, 10_000))
def test_lm_loss_equals_the_shifted_loss_written_out_one_position_at_a_time(dtype, B, T, V, seed):
    logits, ids = _logits(B, T, V, dtype, seed), _ids(B, T, V, seed + 1)
    expected = torch.tensor(_shifted_loss_by_hand(logits, ids), dtype=dtype)
    assert_close(lm_loss(logits, ids), expected, n=V * B * T)


def test_lm_loss_equals_cross_entropy_on_shifted_tensors_and_ignores_padding_targets():
    logits, ids = _logits(3, 8, 10), _ids(3, 8, 10)
    ids[1, 5:] = -100  # padding at the end of sequence 1: its targets are ignored
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 10), ids[:, 1:].reshape(-1))
    assert_close(lm_loss(logits, ids), expected, n=10 * 24)
    assert_close(lm_loss(logits, ids), torch.tensor(_shifted_loss_by_hand(logits, ids), dtype=torch.float64), n=240)


def test_lm_loss_differs_from_the_unshifted_loss():
    """The test can fail: without the shift every position would be scored against its own token."""
    logits, ids = _logits(2, 6, 9), _ids(2, 6, 9)
    unshifted = F.cross_entropy(logits.reshape(-1, 9), ids.reshape(-1))
    assert abs(float(lm_loss(logits, ids)) - float(unshifted)) > 1e-3


def test_fresh_model_loss_is_close_to_ln_v():
    """GPT-2's initialization (std 0.02) makes the first logits nearly equal: loss ~ ln V (uniform guess).
    Stated tolerance: within 0.05 nats of ln 512 = 6.238."""
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=512, d_model=64, n_heads=4, n_layers=2, max_seq_len=64)).eval()
    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = float(lm_loss(model(ids), ids))
    assert abs(loss - math.log(512)) < 0.05, (loss, math.log(512))


def test_losses_name_the_shapes_they_expected():
    logits = _logits(2, 5, 7)
    with pytest.raises(ShapeError, match=r"\(2, 5\).*got \(2, 4\)"):
        lm_loss(logits, _ids(2, 4, 7))
    with pytest.raises(ShapeError, match="T >= 2"):
        lm_loss(_logits(2, 1, 7), _ids(2, 1, 7))
    with pytest.raises(ShapeError, match="integer tensor"):
        token_loss(logits, logits[..., 0])
    with pytest.raises(ValueError, match="0..6"):
        token_loss(logits, torch.full((2, 5), 7))


# ------------------------------------------------------------------------------------------------
# The batch sampler
# ------------------------------------------------------------------------------------------------


def test_batches_are_windows_and_y_is_x_shifted_by_one():
    ids = torch.arange(1000, 1100)  # id = 1000 + position, so a window is readable
    x, y = batches(ids, 6, 9, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 9) and x.dtype == torch.int64
    starts = x[:, 0] - 1000
    assert torch.equal(x, ids[starts[:, None] + torch.arange(9)])
    assert torch.equal(y, x + 1)  # the next token of every position
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batches_repeat_for_a_seed_and_change_with_it():
    ids = torch.randint(0, 50, (500,), generator=torch.Generator().manual_seed(3))
    a = batches(ids, 4, 16, torch.Generator().manual_seed(7))
    b = batches(ids, 4, 16, torch.Generator().manual_seed(7))
    c = batches(ids, 4, 16, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_batches_reach_every_start_and_never_run_past_the_end():
    ids = torch.arange(12)
    gen = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        x, y = batches(ids, 4, 5, gen)
        assert int(y.max()) <= 11
        starts.update(x[:, 0].tolist())
    assert starts == set(range(12 - 5))  # 0 .. N - T - 1: the last window ends on the last token


def test_batches_refuse_bad_input_with_shapes():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ShapeError, match="block_size \\+ 1 = 11"):
        batches(torch.arange(10), 2, 10, gen)
    with pytest.raises(ShapeError, match=r"\(N,\).*\(2, 5\)"):
        batches(torch.zeros(2, 5, dtype=torch.long), 2, 3, gen)
    with pytest.raises(TypeError, match="torch.Generator"):
        batches(torch.arange(10), 2, 3, 0)


# ------------------------------------------------------------------------------------------------
# The learning-rate schedule against torch's schedulers
# ------------------------------------------------------------------------------------------------


def _torch_schedule(lr: float, min_lr: float, steps: int, warmup: int) -> list[float]:
    """The learning rate of every step from torch's schedulers: LinearLR over the warm-up (factors
    1/w, 2/w, ..., 1 on steps 0..w-1), then CosineAnnealingLR from lr to min_lr over steps - w steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    rates = []
    if warmup:
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0,
                                                 total_iters=max(warmup - 1, 1))
        for _ in range(warmup):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            warm.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup, eta_min=min_lr)
    for _ in range(steps - warmup):
        opt.step()
        cosine.step()  # the decay begins after the warm-up's peak
        rates.append(opt.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("steps, warmup", [(50, 5), (20, 1), (9, 3), (12, 0)])
def test_lr_schedule_equals_torch_linear_warmup_then_cosine_annealing(steps, warmup):
    lr, min_lr = 3e-3, 2e-4
    expected = _torch_schedule(lr, min_lr, steps, warmup)
    got = [lr_at(s, lr=lr, steps=steps, warmup=warmup, min_lr=min_lr) for s in range(steps)]
    assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), n=steps)
    assert math.isclose(got[-1], min_lr)
    if warmup:
        assert math.isclose(got[warmup - 1], lr)


def test_lr_schedule_without_warmup_starts_near_lr_and_only_decreases():
    got = [lr_at(s, lr=1.0, steps=10, warmup=0, min_lr=0.1) for s in range(10)]
    assert all(a > b for a, b in zip(got, got[1:])) and got[0] < 1.0 and math.isclose(got[-1], 0.1)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def _tiny(vocab: int = 16, seed: int = 0, **overrides) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder(ModelConfig(**{"vocab_size": vocab, "d_model": 16, "n_heads": 2, "n_layers": 1,
                                      "max_seq_len": 16, **overrides}))


def _data(vocab: int = 16, n: int = 2000, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_train_equals_an_independently_written_adamw_loop():
    """Same batches, schedule, decay groups, clipping and AdamW as a loop written here with torch's
    own optimizer, scheduler and clip_grad_norm_: the parameters agree after every run. The reference
    uses the loop's loss (token_loss, tested against F.cross_entropy above), AdamW kernel (fused) and
    clipping call, so the comparison sees the loop's logic and not rounding: Adam divides by sqrt(v),
    which can carry a last-bit gradient difference past a reduction-sized tolerance in a few steps
    (it did under ATEN_CPU_CAPABILITY=default)."""
    model, data = _tiny(), _data()
    reference = copy.deepcopy(model)
    steps, B, T, lr, min_lr, warmup, clip = 6, 4, 8, 1e-2, 1e-3, 2, 0.5
    history = train(model, data, data, steps=steps, batch_size=B, block_size=T, lr=lr, warmup=warmup,
                    min_lr=min_lr, grad_clip=clip, weight_decay=0.1, seed=3, progress=False, eval_every=100)

    matrices = [p for p in reference.parameters() if p.dim() >= 2]
    vectors = [p for p in reference.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": vectors, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=True)  # the same AdamW kernel as helpers.training.adamw
    rates = _torch_schedule(lr, min_lr, steps, warmup)
    gen = torch.Generator().manual_seed(3)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = rates[step]
        starts = torch.randint(0, len(data) - T, (B,), generator=gen)
        x = torch.stack([data[s:s + T] for s in starts])
        y = torch.stack([data[s + 1:s + T + 1] for s in starts])
        loss = token_loss(reference(x), y)  # the loop's loss (equal to F.cross_entropy: tested above), same rounding
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), clip, foreach=True)
        opt.step()
        losses.append(loss.item())
    assert_close(torch.tensor(history.train_loss), torch.tensor(losses), n=16 * B * T)
    for (name, got), expected in zip(model.named_parameters(), reference.parameters()):
        assert_close(got, expected, n=64, msg=lambda m, name=name: f"{name}: {m}")


def test_train_is_deterministic_for_a_seed_on_cpu():
    """Determinism means bit-identical: same process, same CPU, same seed, so the comparison is exact."""
    runs = []
    for _ in range(2):
        model = _tiny(seed=1)
        h = train(model, _data(), _data(seed=6), steps=8, batch_size=4, block_size=8, progress=False, seed=2,
                  eval_every=4, eval_batches=2)
        runs.append((h.train_loss, h.val_loss, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))
    other = train(_tiny(seed=1), _data(), _data(seed=6), steps=8, batch_size=4, block_size=8, progress=False, seed=3,
                  eval_every=4, eval_batches=2)
    assert other.train_loss != runs[0][0]  # another seed, other batches


def test_history_records_every_step_and_validation_and_its_throughput():
    model = _tiny()
    model.eval()
    h = train(model, _data(), _data(seed=6), steps=10, batch_size=4, block_size=8, eval_every=4,
              progress=False)
    assert isinstance(h, TrainHistory)
    assert h.steps == list(range(1, 11)) and len(h.train_loss) == len(h.lr) == len(h.grad_norm) == 10
    assert h.val_steps == [0, 4, 8, 10] and len(h.val_loss) == 4
    assert abs(h.val_loss[0] - math.log(16)) < 0.05  # the untrained model: about ln V
    assert h.tokens == 10 * 4 * 8 and h.tokens_per_s > 0 and h.seconds > 0
    assert not model.training  # left in the mode it came in


def test_validation_loss_is_the_mean_loss_on_fixed_batches_in_eval_mode():
    """Two validations of an unchanged model agree (steps with lr ~ 0 change nothing measurable)."""
    model = _tiny()
    h = train(model, _data(), _data(seed=6), steps=2, batch_size=4, block_size=8, lr=1e-12, min_lr=0.0,
              eval_every=1, progress=False, weight_decay=0.0)
    assert_close(torch.tensor(h.val_loss[1:]), torch.tensor([h.val_loss[0]] * 2), n=16 * 8 * 32)


def test_clipping_changes_the_run_and_norms_are_recorded_before_clipping():
    """The clip scales each step's gradient by its own factor clip / norm, so Adam's updates change."""
    runs = {}
    for clip in (1e-3, None):
        model = _tiny()
        h = train(model, _data(), _data(), steps=4, batch_size=4, block_size=8, grad_clip=clip, progress=False,
                  eval_batches=1)
        runs[clip] = (h, torch.cat([p.detach().flatten() for p in model.parameters()]))
    clipped, free = runs[1e-3][0], runs[None][0]
    assert all(n > 1e-3 for n in clipped.grad_norm)  # recorded before clipping
    assert_close(torch.tensor(clipped.grad_norm[0]), torch.tensor(free.grad_norm[0]), n=1000)  # same first gradient
    assert not torch.allclose(runs[1e-3][1], runs[None][1], rtol=1e-4, atol=1e-6)


def test_training_reaches_the_entropy_rate_of_a_markov_chain():
    """The oracle: a first-order Markov chain's entropy rate is the lowest loss any model can reach.
    A one-layer model learns the transition table in 250 steps; its validation loss ends within 0.03
    nats of the rate 1.190 (measured: 1.189, i.e. 0.001 below it, which is the finite validation
    sample's own noise), far below the unigram entropy 1.740 (the loss of ignoring context)."""
    chain = markov_chain(8, seed=0)
    alphabet = {ch: i for i, ch in enumerate(chain.alphabet)}
    train_ids = torch.tensor([alphabet[c] for c in chain.sample(40_000, seed=1)])
    val_ids = torch.tensor([alphabet[c] for c in chain.sample(20_000, seed=2)])
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=8, d_model=32, n_heads=2, n_layers=1, max_seq_len=32))
    h = train(model, train_ids, val_ids, steps=250, batch_size=16, block_size=32, lr=1e-2, eval_every=50,
              eval_batches=32, progress=False)
    rate, unigram = chain.entropy_rate(), chain.unigram_entropy()
    margin = h.val_loss[-1] - rate
    assert h.val_loss[0] > unigram  # untrained: about ln 8
    assert -0.02 < margin < 0.03, (h.val_loss[-1], rate, unigram)


def test_progress_bar_writes_to_the_terminal_only_when_asked(capsys):
    train(_tiny(), _data(), _data(), steps=2, batch_size=2, block_size=4, progress=True)
    assert "training" in capsys.readouterr().err
    train(_tiny(), _data(), _data(), steps=2, batch_size=2, block_size=4, progress=False)
    assert capsys.readouterr().err == ""


def test_history_plots_train_val_and_baselines_in_one_call():
    import matplotlib.pyplot as plt

    h = train(_tiny(), _data(), _data(), steps=30, batch_size=2, block_size=4, progress=False, eval_batches=2)
    ax = h.plot(baselines={"unigram": 2.7, "bigram": 2.5})
    labels = [line.get_label() for line in ax.get_lines()]
    assert "validation" in labels and any(label.startswith("train") for label in labels)
    assert "unigram 2.700" in labels and "bigram 2.500" in labels
    plt.close(ax.figure)


def test_train_refuses_bad_settings_with_clear_messages():
    with pytest.raises(ShapeError, match="max_seq_len = 16"):
        train(_tiny(), _data(), _data(), steps=2, batch_size=2, block_size=32, progress=False)
    with pytest.raises(ValueError, match="warmup"):
        train(_tiny(), _data(), _data(), steps=2, batch_size=2, block_size=4, warmup=2, progress=False)
    with pytest.raises(ShapeError, match=r"train_ids.*\(N,\)"):
        train(_tiny(), _data().view(2, -1), _data(), steps=2, batch_size=2, block_size=4, progress=False)
    with pytest.raises(FloatingPointError, match="lower lr"):
        train(_tiny(), _data(), _data(), steps=3, batch_size=2, block_size=4, lr=float("inf"), min_lr=0.0,
              progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_train_runs_on_a_gpu():
    h = train(_tiny(), _data(), _data(), steps=3, batch_size=2, block_size=4, progress=False, device="cuda")
    assert len(h.train_loss) == 3 and math.isfinite(h.val_loss[-1])


# ------------------------------------------------------------------------------------------------
# Masked LM, padding labels, teacher forcing, tying, baselines, sampling
# ------------------------------------------------------------------------------------------------

from collections import Counter  # noqa: E402

from helpers.blocks import model_param_count  # noqa: E402
from helpers.training import (  # noqa: E402
    bigram_loss,
    lm_labels,
    mlm_loss,
    mlm_mask,
    param_count,
    sample_tokens,
    teacher_forcing_inputs,
    tie_weights,
    tied_param_saving,
    unigram_loss,
)


def _mlm_by_loop(ids, mask_id, vocab_size, seed, p=0.15):
    """The spec one position at a time, with the documented draw order."""
    gen = torch.Generator().manual_seed(seed)
    u, r = torch.rand(ids.shape, generator=gen), torch.rand(ids.shape, generator=gen)
    rnd = torch.randint(0, vocab_size, ids.shape, generator=gen)
    inputs, labels = ids.clone(), torch.full_like(ids, -100)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if u[b, t] < p:
                labels[b, t] = ids[b, t]
                if r[b, t] < 0.8:
                    inputs[b, t] = mask_id
                elif r[b, t] < 0.9:
                    inputs[b, t] = rnd[b, t]
    return inputs, labels


def test_mlm_mask_equals_the_spec_written_as_a_loop_for_a_seed():
    ids = _ids(3, 17, 30, seed=4)
    for seed in (0, 1, 2):
        got = mlm_mask(ids, 29, 30, torch.Generator().manual_seed(seed))
        expected = _mlm_by_loop(ids, 29, 30, seed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_mlm_mask_statistics_are_15_then_80_10_10():
    """On 100 000 positions each rate is within 4 standard errors of its probability."""
    V, mask_id = 1000, 999
    ids = torch.randint(0, V - 1, (100, 1000), generator=torch.Generator().manual_seed(0))
    inputs, labels = mlm_mask(ids, mask_id, V, torch.Generator().manual_seed(1))
    selected = labels != -100
    n = selected.numel()

    def within(rate, p, count):
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / count), (rate, p)

    within(selected.float().mean().item(), 0.15, n)
    k = int(selected.sum())
    to_mask = (inputs == mask_id) & selected
    changed = (inputs != ids) & (inputs != mask_id) & selected
    kept = (inputs == ids) & selected
    within(to_mask.sum().item() / k, 0.8, k)
    within(changed.sum().item() / k, 0.1 * (1 - 1 / V), k)  # a random token may equal the original
    within(kept.sum().item() / k, 0.1 + 0.1 / V, k)
    assert torch.equal(labels[selected], ids[selected])  # the label is the original token
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions untouched


def test_mlm_mask_never_selects_what_can_mask_forbids_and_its_loss_is_cross_entropy():
    ids = _ids(4, 20, 12, seed=2)
    can = torch.arange(20) < torch.tensor([20, 15, 10, 5])[:, None]  # (B, T): padding cannot be masked
    inputs, labels = mlm_mask(ids, 11, 12, torch.Generator().manual_seed(0), p=0.5, can_mask=can)
    assert bool((labels[~can] == -100).all()) and bool((inputs[~can] == ids[~can]).all())
    logits = _logits(4, 20, 12)
    assert_close(mlm_loss(logits, labels), F.cross_entropy(logits.reshape(-1, 12), labels.reshape(-1)), n=12 * 80)


def test_padding_labels_make_the_batch_loss_equal_the_loss_of_the_unpadded_sequences():
    """The loss mask agrees with the attention mask: a right-padded batch gives the same loss as the
    sequences alone, because under a causal mask padding changes no real position's logits and no
    padding token is a target."""
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=2, max_seq_len=16)).double()
    lengths = [9, 6, 3]
    seqs = [_ids(1, n, 19, seed=10 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.full((3, 9), 19)  # 19 = the padding id
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    attention_mask = torch.arange(9) < torch.tensor(lengths)[:, None]  # (B, T) True = real token
    with torch.no_grad():
        loss = lm_loss(model(ids), lm_labels(ids, attention_mask))
    total = sum(F.cross_entropy(model(s[None])[0, :-1], s[1:], reduction="sum") for s in seqs)
    assert_close(loss, total / sum(n - 1 for n in lengths), n=20 * 27)
    unmasked = lm_loss(model(ids), ids)  # padding scored as a target: another number
    assert abs(unmasked.item() - loss.item()) > 1e-3


def test_teacher_forcing_inputs_are_bos_then_the_targets_shifted_right():
    targets = _ids(2, 6, 9)
    inputs = teacher_forcing_inputs(targets, 9)
    assert torch.equal(inputs[:, 0], torch.full((2,), 9)) and torch.equal(inputs[:, 1:], targets[:, :-1])


def test_teacher_forcing_loss_equals_the_lm_loss_of_the_bos_prefixed_sequence():
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=10, d_model=16, n_heads=2, n_layers=1, max_seq_len=16)).double()
    targets = _ids(3, 7, 9, seed=3)
    full = torch.cat([torch.full((3, 1), 9), targets], dim=1)  # (B, T + 1): BOS y_0 .. y_{T-1}
    assert_close(token_loss(model(teacher_forcing_inputs(targets, 9)), targets), lm_loss(model(full), full), n=160)


def test_tying_shares_storage_and_saves_exactly_v_times_d_model():
    config = dict(vocab_size=37, d_model=16, n_heads=2, n_layers=1, max_seq_len=16)
    untied = TinyDecoder(ModelConfig(**config, tie_weights=False))
    before = param_count(untied)
    assert before == model_param_count(ModelConfig(**config, tie_weights=False))
    tie_weights(untied.tok_emb, untied.lm_head)
    assert untied.lm_head.weight is untied.tok_emb.weight
    assert untied.lm_head.weight.data_ptr() == untied.tok_emb.weight.data_ptr()
    assert before - param_count(untied) == tied_param_saving(37, 16) == 37 * 16
    assert param_count(untied) == model_param_count(ModelConfig(**config, tie_weights=True))
    opt = torch.optim.AdamW(untied.parameters(), lr=0.1)
    lm_loss(untied(_ids(2, 5, 37)), _ids(2, 5, 37)).backward()
    opt.step()
    assert torch.equal(untied.lm_head.weight, untied.tok_emb.weight)  # still one tensor after a step
    copy_model = TinyDecoder(ModelConfig(**config, tie_weights=False))
    copy_model.lm_head.weight = torch.nn.Parameter(copy_model.tok_emb.weight.detach().clone())  # a copy
    assert copy_model.lm_head.weight.data_ptr() != copy_model.tok_emb.weight.data_ptr()
    assert param_count(copy_model) == before  # a copy saves nothing


def test_unigram_and_bigram_losses_equal_counts_done_by_hand():
    train_ids, val_ids, V = torch.tensor([0, 1, 1, 2, 1, 0, 1]), torch.tensor([1, 0, 2, 2]), 4
    counts = Counter(train_ids.tolist())
    expected = -sum(math.log((counts[v] + 1) / (7 + 4)) for v in val_ids.tolist()) / 4
    assert math.isclose(unigram_loss(train_ids, val_ids, V, alpha=1.0), expected, rel_tol=1e-12)
    pairs, firsts = Counter(zip(train_ids[:-1].tolist(), train_ids[1:].tolist())), Counter(train_ids[:-1].tolist())
    val_pairs = list(zip(val_ids[:-1].tolist(), val_ids[1:].tolist()))
    expected = -sum(math.log((pairs[a, b] + 0.5) / (firsts[a] + 0.5 * V)) for a, b in val_pairs) / 3
    assert math.isclose(bigram_loss(train_ids, val_ids, V, alpha=0.5), expected, rel_tol=1e-12)


def test_bigram_loss_reaches_a_markov_chains_entropy_rate_and_unigram_its_stationary_entropy():
    chain = markov_chain(8, seed=0)
    index = {ch: i for i, ch in enumerate(chain.alphabet)}
    train_ids = torch.tensor([index[c] for c in chain.sample(200_000, seed=1)])
    val_ids = torch.tensor([index[c] for c in chain.sample(100_000, seed=2)])
    assert abs(bigram_loss(train_ids, val_ids, 8) - chain.entropy_rate()) < 0.01
    assert abs(unigram_loss(train_ids, val_ids, 8) - chain.unigram_entropy()) < 0.01


def test_sample_tokens_greedy_is_the_argmax_loop_and_sampling_repeats_for_a_seed():
    torch.manual_seed(0)
    model = TinyDecoder(ModelConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, max_seq_len=8))
    prompt = _ids(2, 3, 11)
    greedy = sample_tokens(model, prompt, 9, generator=torch.Generator(), temperature=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(9):
            ids = torch.cat([ids, model(ids[:, -8:])[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, ids) and greedy.shape == (2, 12)
    a = sample_tokens(model, prompt, 5, generator=torch.Generator().manual_seed(3))
    b = sample_tokens(model, prompt, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a[:, :3], prompt)
