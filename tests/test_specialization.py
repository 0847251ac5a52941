"""Chapter 02, section 5: specialization measured on a briefly trained model (helpers.specialization)."""

from __future__ import annotations

import pytest
import torch

from helpers.numerics import assert_close
from helpers.shapes import ShapeError
from helpers.specialization import previous_token_scores, trained_heads_experiment

# ---------------------------------------------------------------------------------------------
# Specialization measured on a trained model (chapter 02, section 5; about 5 CPU-s per seed)
# ---------------------------------------------------------------------------------------------


def test_previous_token_scores_reads_the_sub_diagonal():
    T = 5
    sharp = torch.diag(torch.ones(T - 1), diagonal=-1)  # (T, T): query i reads key i - 1
    sharp[0, 0] = 1.0
    even = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]  # (T, T): evenly spread causal rows
    weights = [torch.stack([sharp, even])[None]]  # one layer: (B, H, T, T) = (1, 2, 5, 5)
    scores = previous_token_scores(weights)  # (1, 2)
    assert scores.shape == (1, 2)
    assert_close(scores[0, 0], torch.tensor(1.0))
    assert_close(scores[0, 1], torch.tensor(sum(1 / (i + 1) for i in range(1, T)) / (T - 1)))
    with pytest.raises(ShapeError, match="T >= 2"):
        previous_token_scores([torch.ones(1, 2, 1, 1)])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_training_makes_a_previous_token_head_and_heads_that_differ(seed):
    found = trained_heads_experiment(seed=seed)
    assert found["val_trained"] < found["val_init"] - 2.0  # the model learned
    assert found["prev_init"] < 2 * found["uniform"]  # no head reads the previous token at initialization
    assert found["prev_trained"] > 5 * found["uniform"]  # one does after training...
    assert found["prev_trained"] > found["others_trained"] + 0.15  # ...clearly more than the other heads
    assert found["top_is_previous"] > 0.4  # its largest weight is on the previous token for most queries
    assert found["farthest_distance"] > 2 * found["nearest_distance"]  # heads differ in how far back they read
    assert found["farthest_distance"] < found["uniform_distance"]  # every head more local than an even spread
