"""Chapter 09's induction-head experiment and ablation summary: the training data, the probes, head
ablation, the committed checkpoint (recomputed here, and its set-up current) and, slow, the
experiment itself on two seeds (the phenomenon, and agreement with the committed checkpoint)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import diagnostics as dg
from helpers.attention import causal_mask
from helpers.blocks import ModelConfig, build_model
from helpers.numerics import assert_close
from helpers.threads import torch_threads
from helpers.tokenizers import course_chars
from helpers.training import batches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_repeated_chunk_batches_repeat_a_text_chunk_and_fraction_zero_is_plain_text():
    ids = torch.arange(1000) % 97  # every window of it is distinct from its shifts
    x, y = dg.repeated_chunk_batch(ids, 12, 40, torch.Generator().manual_seed(0), repeat_fraction=0.5,
                                   periods=(5, 9))
    assert x.shape == y.shape == (12, 40)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    for b in range(6):  # repeated windows: the smallest period is in 5..9 and the chunk comes from ids
        seq = torch.cat([x[b], y[b, -1:]])
        period = next(p for p in range(1, 41) if torch.equal(seq[p:], seq[:-p]))
        assert 5 <= period <= 9
        start = int(seq[0])
        assert torch.equal(seq[:period], ids[start:start + period])
    for b in range(6, 12):  # text windows: consecutive ids, no short period
        assert torch.equal(x[b, 1:] - x[b, :-1], torch.ones(39, dtype=torch.long) - 97 * (x[b, 1:] == 0))
    plain = dg.repeated_chunk_batch(ids, 12, 40, torch.Generator().manual_seed(3), repeat_fraction=0.0)
    reference = batches(ids, 12, 40, torch.Generator().manual_seed(3))
    assert torch.equal(plain[0], reference[0]) and torch.equal(plain[1], reference[1])
    with pytest.raises(ValueError, match="periods"):
        dg.repeated_chunk_batch(ids, 4, 8, torch.Generator(), periods=(4, 9))


def test_probes_repeat_common_letters_and_text():
    tok = course_chars()
    gen = torch.Generator().manual_seed(0)
    letters = dg.repeated_letters(5, 7, tok, gen)
    assert letters.shape == (5, 14) and torch.equal(letters[:, :7], letters[:, 7:])
    assert set(tok.decode(letters.flatten().tolist())) <= set(dg.LETTERS)
    text = torch.arange(300)
    rep = dg.repeated_text(text, 4, 6, gen)
    assert rep.shape == (4, 12) and torch.equal(rep[:, :6], rep[:, 6:])
    assert torch.equal(rep[:, 1:6] - rep[:, :5], torch.ones(4, 5, dtype=torch.long))


def test_uniform_scores_are_what_uniform_causal_attention_scores():
    T, P = 64, 24
    uniform = lambda n: (causal_mask(n).double() / causal_mask(n).sum(-1, keepdim=True))[None, None]  # noqa: E731
    prev, ind = dg.uniform_scores(T, P)
    assert math.isclose(prev, float(dg.previous_token_score(uniform(T))[0]), rel_tol=1e-12)
    assert math.isclose(ind, float(dg.induction_score(uniform(2 * P), P)[0]), rel_tol=1e-12)


def test_copy_losses_split_a_curve_at_the_period():
    curve = torch.cat([torch.full((3,), 4.0), torch.tensor([9.0]), torch.full((3,), 1.0)])  # P = 4
    assert dg.copy_losses(curve, 4) == (4.0, 1.0)
    with pytest.raises(dg.ShapeError, match=r"\(7,\)"):
        dg.copy_losses(curve[:-1], 4)


@pytest.mark.parametrize("kernels", ["course", "fused"])
def test_an_ablated_head_has_no_influence_and_the_weights_come_back(kernels):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=23, d_model=16, n_heads=4, n_layers=2, max_seq_len=16,
                                    positions="rope", kernels=kernels)).double().eval()
    ids = torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = model(ids)
    values = model.blocks[1].attn.v_proj.weight.data[2 * 4:3 * 4]  # head 2's rows of W_V in layer 1 (a view)

    def head_2_values_doubled():
        values.mul_(2.0)  # a power of two: exact both ways
        try:
            return model(ids)
        finally:
            values.div_(2.0)

    assert not torch.allclose(head_2_values_doubled(), full)  # the head matters ...
    with dg.ablated_heads(model, [(1, 2)]):
        ablated = model(ids)
        assert_close(head_2_values_doubled(), ablated, n=16)  # ... ablated, it does not
        assert not torch.allclose(ablated, full)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was not restored"


def _rows(losses):
    return [dg.AblationRow(name, 0, loss, 0.0) for name, loss in losses.items()]


def test_ablation_summary_pools_the_seed_noise_and_calls_only_what_exceeds_it():
    runs = {0: _rows({"base": 2.00, "a": 2.30, "b": 2.02, "c": 1.70}),
            1: _rows({"base": 2.02, "a": 2.32, "b": 2.04, "c": 1.72})}
    summary = dg.ablation_summary(runs)
    sigma = math.sqrt(0.02 ** 2 / 2)  # every config's two seeds differ by 0.02: variance 0.0002
    assert math.isclose(summary["sigma"], sigma, rel_tol=1e-9)
    assert math.isclose(summary["noise_floor"], 2 * sigma, rel_tol=1e-9)  # se = sigma * sqrt(2 / 2)
    verdicts = {name: row["verdict"] for name, row in summary["configs"].items()}
    assert verdicts == {"base": "baseline", "a": "worse", "b": "within noise", "c": "better"}
    assert math.isclose(summary["configs"]["a"]["delta"], 0.30, abs_tol=1e-12)
    assert "within noise" in dg.summary_table(summary)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        dg.ablation_summary({0: runs[0]})
    with pytest.raises(ValueError, match="same configs"):
        dg.ablation_summary({0: runs[0], 1: runs[1][::-1]})


@pytest.fixture(scope="module")
def committed():
    with torch_threads(1):  # a module-scoped fixture runs outside the one_thread fixture
        return dg.load_induction_runs(), torch.load(dg.INDUCTION_CHECKPOINT, weights_only=True)


def test_the_committed_checkpoint_is_current_and_recomputes_its_own_numbers(committed):
    runs, saved = committed
    assert saved["setup"] == dg.INDUCTION_SETUP, "the set-up changed: rerun python tools/train_induction.py"
    assert set(runs) == set(dg.INDUCTION_RUNS)
    for name, run in runs.items():
        for key in ("previous_token_score", "induction_score", "loss_first_copy", "loss_second_copy",
                    "ablated_induction_second_copy"):
            assert math.isclose(run[key], run["saved"][key], abs_tol=1e-3), (name, key, run[key], run["saved"][key])


def test_the_committed_models_show_induction_and_the_control_does_not(committed):
    runs, _ = committed
    for name in ("seed 0", "seed 1"):
        run = runs[name]
        assert run["induction_score"] >= 0.3 and run["previous_token_score"] >= 0.5, name
        assert run["loss_second_copy"] <= run["loss_first_copy"] / 2, name
        assert run["ablated_induction_second_copy"] >= 0.9 * run["ablated_induction_first_copy"], name
        assert 0 < run["drop_step"] <= run["steps"]
    control = runs["text only"]
    assert control["induction_score"] < 0.1 and control["drop_step"] == -1
    assert control["loss_second_copy"] > 0.8 * control["loss_first_copy"]


@pytest.mark.slow
def test_induction_heads_form_on_two_seeds_as_committed(committed):
    """About 40 CPU-seconds per seed at one thread."""
    _, saved = committed
    for seed in (0, 1):
        run = dg.induction_experiment(seed)
        assert run["induction_score"] >= 0.3, run["induction_score"]
        assert run["loss_second_copy"] <= run["loss_first_copy"] / 2, (run["loss_first_copy"], run["loss_second_copy"])
        assert run["ablated_induction_second_copy"] >= 0.9 * run["ablated_induction_first_copy"]
        # Another CPU rounds differently and 1000 AdamW steps amplify that (CONTRIBUTING.md §5): the run
        # agrees with the committed one as a run of the same set-up does, not to the bit.
        committed_run = saved["runs"][f"seed {seed}"]["metrics"]
        assert abs(run["induction_score"] - committed_run["induction_score"]) < 0.2
        assert abs(run["previous_token_score"] - committed_run["previous_token_score"]) < 0.3
        assert abs(run["loss_second_copy"] - committed_run["loss_second_copy"]) < 1.0


def test_whole_split_scoring_with_non_overlapping_windows_is_the_mean_over_every_window():
    """run_ablation(whole_split=True) scores with chapter 08's split_loss at stride = block_size."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                                    kernels="fused")).double()
    ids = torch.randint(0, 23, (97,), generator=torch.Generator().manual_seed(2))  # 12 windows of 8 and their targets
    expected = torch.stack([torch.nn.functional.cross_entropy(model(ids[None, 8 * w:8 * w + 8])[0], ids[8 * w + 1:8 * w + 9])
                            for w in range(12)]).mean()  # one window at a time: an independent loop
    assert_close(torch.tensor(dg.split_loss(model, ids, block_size=8, stride=8, batch_size=5), dtype=torch.float64), expected, n=96)
    assert model.training  # left as it was
    with pytest.raises(dg.ShapeError, match="too few"):
        dg.split_loss(model, ids[:8], block_size=8)
