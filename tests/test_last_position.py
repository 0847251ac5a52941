"""Chapter 00, section 1's mistake, run: training on logits[:, -1] only (helpers.last_position)."""

from __future__ import annotations

import pytest

from helpers.last_position import last_position_experiment

# ---------------------------------------------------------------------------------------------
# Section 1's mistake, run: training on logits[:, -1] only (about 3 CPU-s per seed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_training_on_the_last_position_only_wastes_the_signal(seed):
    run = last_position_experiment(seed=seed)
    assert run["targets_full"] == 32 * run["targets_last"]  # B T against B targets per step
    assert abs(run["val_init"] - run["uniform"]) < 0.3  # a fresh model is near the uniform guess
    assert run["val_full"] < run["val_init"] - 1.5  # the right run learns
    assert run["val_last"] < run["val_init"] - 0.5  # the wrong one learns something too...
    assert run["val_last"] > run["val_full"] + 0.4  # ...but ends far above the right one
    # even at the one position its loss reads
    assert run["last_pos_last"] > run["last_pos_full"] + 0.25


def test_last_position_experiment_refuses_bad_sizes():
    with pytest.raises(ValueError, match="steps must be a positive int"):
        last_position_experiment(steps=0)
