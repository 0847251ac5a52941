"""Chapter 06's length experiment shows what section 7 says, on two seeds (about 15 CPU-seconds).

Trained at 32 characters and read at 256: RoPE's loss past twice the training length rises by more
than 0.2 nats, ALiBi's by less than 0.1, and position interpolation with a short training at the
long length recovers part of RoPE's loss there. Orderings and thresholds, never exact values.
"""

from __future__ import annotations

import pytest
import torch

from helpers.extrapolation import length_experiment, length_ranges

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lengths():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return length_experiment(("rope", "alibi", "rope-pi-tuned"), seeds=(0, 1))
    finally:
        torch.set_num_threads(threads)


def _past_2l(result, method, seed):
    """Mean loss on positions [64, 256): a third on [64, 128), two thirds on [128, 256)."""
    by = result[method]["by_seed"][seed]
    return by["64-128"] / 3 + 2 * by["128-256"] / 3


def test_the_result_has_every_range_and_seed(lengths):
    assert length_ranges(32, 256) == [(0, 32), (32, 64), (64, 128), (128, 256)]
    for method in ("rope", "alibi", "rope-pi-tuned"):
        assert set(lengths[method]["by_seed"]) == {0, 1}
        assert list(lengths[method]["ranges"]) == ["0-32", "32-64", "64-128", "128-256"]
        assert len(lengths[method]["curve"]) == 256
        assert all(1.0 < v < 4.6 for v in lengths[method]["ranges"].values())  # below ln V = 4.54 + margin


def test_rope_degrades_past_twice_the_training_length_and_alibi_does_not(lengths):
    for seed in (0, 1):
        assert lengths["rope"]["rise_by_seed"][seed] > 0.2, lengths["rope"]["by_seed"][seed]
        assert lengths["alibi"]["rise_by_seed"][seed] < 0.1, lengths["alibi"]["by_seed"][seed]
        assert _past_2l(lengths, "alibi", seed) < _past_2l(lengths, "rope", seed)


def test_position_interpolation_with_a_short_training_recovers_loss(lengths):
    for seed in (0, 1):
        assert _past_2l(lengths, "rope-pi-tuned", seed) < _past_2l(lengths, "rope", seed) - 0.1
        assert lengths["rope-pi-tuned"]["rise_by_seed"][seed] < 0.1


def test_unknown_methods_and_short_evaluations_are_refused():
    with pytest.raises(ValueError, match="unknown method 'yarn'"):
        length_experiment(("yarn",))
    with pytest.raises(ValueError, match="must exceed 2 \\* train_len"):
        length_experiment(("rope",), train_len=32, eval_len=64)
