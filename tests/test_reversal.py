"""helpers.reversal: chapter 05's trained encoder-decoder. The task's data against its definition,
the anti-diagonal measure against hand-made attention maps, and the experiment's phenomenon on two
seeds (a learned cross-attention that reads the source backwards)."""

from __future__ import annotations

import pytest
import torch

from helpers.reversal import BOS, anti_diagonal_mass, reversal_batch, reversal_experiment


def test_reversal_batch_is_the_reversed_source_behind_bos():
    src, tgt_in, tgt = reversal_batch(5, 7, 10, torch.Generator().manual_seed(0))
    assert src.shape == tgt_in.shape == tgt.shape == (5, 7)
    assert int(src.min()) >= 1 and int(src.max()) <= 10  # BOS = 0 never appears in the source
    for b in range(5):
        assert tgt[b].tolist() == src[b].tolist()[::-1]
        assert tgt_in[b].tolist() == [BOS] + tgt[b].tolist()[:-1]


def test_anti_diagonal_mass_of_known_maps():
    T = 6
    anti = torch.eye(T).flip(-1)[None, None, None].expand(1, 2, 1, T, T)  # (L, B, H, T, T): perfect reversal
    uniform = torch.full((1, 2, 1, T, T), 1 / T)
    diagonal = torch.eye(T)[None, None, None].expand(1, 2, 1, T, T)  # reads the same position: wrong for reversal
    assert anti_diagonal_mass(anti).item() == 1.0
    assert abs(anti_diagonal_mass(uniform).item() - 1 / T) < 1e-7
    assert anti_diagonal_mass(diagonal).item() == 0.0  # T even: the diagonal never meets the anti-diagonal
    assert abs(anti_diagonal_mass(uniform, width=1).item() - (3 * T - 2) / T / T) < 1e-7  # 3 keys, 2 at the corners
    with pytest.raises(ValueError, match=r"\(n_layers, B, H, T, T\)"):
        anti_diagonal_mass(torch.ones(2, 3, 4, 4))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_the_trained_cross_attention_reads_the_source_backwards(seed):
    """About 4 CPU-seconds per seed."""
    r = reversal_experiment(seed)
    assert r["first_loss"] > 0.9 * r["chance_loss"]  # it started knowing nothing
    assert r["accuracy"] > 0.98 and r["sequence_accuracy"] > 0.95, r
    assert r["loss"] < 0.1, r
    assert r["anti_diagonal_init"] < 1.5 * r["chance"], r  # at initialization: close to uniform
    assert r["anti_diagonal"] > 4 * r["chance"], r  # trained: most weight on key T - 1 - t
    assert r["anti_diagonal_band"] > 0.9, r
