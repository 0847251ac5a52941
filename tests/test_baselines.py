"""helpers.baselines: the Witten-Bell count models against a hand-computed case and a dictionary
oracle written from the published recursion, distributions that sum to 1 after every context,
whole-split scoring against a direct computation, and (slow) chapter 08's run beating the trigram."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from helpers.baselines import RUN_TRAINING, NGramModel, ngram_losses, showcase_run, split_loss
from helpers.corpus import load_corpus
from helpers.numerics import assert_close
from helpers.shapes import ShapeError
from helpers.tokenizers import course_chars

pytestmark = pytest.mark.usefixtures("one_thread")


def _witten_bell_oracle(train: list[int], order: int, V: int):
    """p(w | history) by the recursion written out with Python dictionaries, one context at a time."""
    follow: dict[tuple[int, ...], list[int]] = {}
    for k in range(order):
        for t in range(k, len(train)):
            follow.setdefault(tuple(train[t - k:t]), []).append(train[t])

    def prob(history: list[int], w: int) -> float:
        p = 1.0 / V
        for k in range(min(order - 1, len(history)) + 1):
            h = tuple(history[len(history) - k:])
            seen = follow.get(h)
            if seen:
                p = (seen.count(w) + len(set(seen)) * p) / (len(seen) + len(set(seen)))
        return p

    return prob


def test_a_bigram_by_hand():
    # train "0 1 0 1 0 2": unigram counts 3, 2, 1 of N = 6 with T = 3 distinct, so
    # p0 = (c + 3/3) / (6 + 3) = 4/9, 3/9, 2/9. After 0 came 1, 1, 2: c(0) = 3, T(0) = 2, so
    # p(1 | 0) = (2 + 2 * 3/9) / 5 = 8/15, p(2 | 0) = (1 + 2 * 2/9) / 5 = 13/45, p(0 | 0) = (2 * 4/9) / 5 = 8/45.
    # Token 2 was never followed by anything: p(. | 2) falls back to p0.
    model = NGramModel(torch.tensor([0, 1, 0, 1, 0, 2]), 2, 3)
    expected = {0: [8 / 45, 8 / 15, 13 / 45], 1: None, 2: [4 / 9, 3 / 9, 2 / 9]}
    assert_close(model.distribution([0]), torch.tensor(expected[0], dtype=torch.float64), n=3)
    assert_close(model.distribution([2]), torch.tensor(expected[2], dtype=torch.float64), n=3)
    assert_close(model.distribution([]), torch.tensor(expected[2], dtype=torch.float64), n=3)
    # validation "2 0 1": targets 0 after 2 (p0(0) = 4/9) and 1 after 0 (8/15)
    assert math.isclose(model.loss(torch.tensor([2, 0, 1])), -(math.log(4 / 9) + math.log(8 / 15)) / 2,
                        rel_tol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one_after_every_context(order):
    V = 5
    gen = torch.Generator().manual_seed(order)
    train = torch.randint(0, V - 1, (300,), generator=gen)  # token 4 never occurs: its contexts are unseen
    model = NGramModel(train, order, V)
    for k in range(order):
        for context in itertools.product(range(V), repeat=k):
            p = model.distribution(list(context))
            assert p.shape == (V,)
            assert bool((p > 0).all()), f"a zero probability after {context}"
            assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), n=V)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_a_dictionary_oracle(seed):
    V, order = 6, 4
    gen = torch.Generator().manual_seed(seed)
    # a skewed text, so that counts, distinct continuations and unseen contexts all vary
    weights = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0, 0.5])
    train = torch.multinomial(weights, 400, replacement=True, generator=gen)
    val = torch.multinomial(weights.flip(0), 120, replacement=True, generator=gen)
    model = NGramModel(train, order, V)
    oracle = _witten_bell_oracle(train.tolist(), order, V)
    v = val.tolist()
    expected = torch.tensor([math.log(oracle(v[max(0, t - order + 1):t], v[t])) for t in range(1, len(v))],
                            dtype=torch.float64)
    assert_close(model.token_log_probs(val), expected, n=order)
    history = v[:7]
    assert_close(model.distribution(history),
                 torch.tensor([oracle(history, w) for w in range(V)], dtype=torch.float64), n=order)


def test_corpus_losses_fall_with_the_order():
    tok = course_chars()
    train = torch.tensor(tok.encode(load_corpus("train")))
    val = torch.tensor(tok.encode(load_corpus("val")))
    losses = ngram_losses(train, val, tok.vocab_size)
    assert list(losses) == ["unigram", "bigram", "trigram", "4-gram"]
    values = list(losses.values())
    assert all(a - b > 0.2 for a, b in zip(values, values[1:])), losses
    assert values[0] < math.log(tok.vocab_size)


class _PreviousTokenTable(nn.Module):
    """A 'language model' whose logits at t depend on ids[t] only: its loss on a split is the same
    whichever windows score it, so split_loss must equal the direct sum over positions 1 .. N - 1."""

    def __init__(self, V: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(V, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]  # (B, T, V)


@pytest.mark.parametrize("N, block, stride", [(200, 16, 8), (97, 10, 3), (64, 63, 63), (50, 8, 1)])
def test_split_loss_scores_every_target_once(N, block, stride):
    V = 7
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(N))
    model = _PreviousTokenTable(V)
    log_p = torch.log_softmax(model.table, -1)  # (V, V)
    direct = -log_p[ids[:-1], ids[1:]].mean()
    got = split_loss(model, ids, block_size=block, stride=stride, batch_size=5)
    assert_close(torch.tensor(got, dtype=torch.float64), direct, n=N)


def test_split_loss_refuses_a_too_short_split():
    with pytest.raises(ShapeError, match="too few"):
        split_loss(_PreviousTokenTable(3), torch.zeros(8, dtype=torch.long), block_size=8)
    with pytest.raises(ValueError, match="stride"):
        split_loss(_PreviousTokenTable(3), torch.zeros(80, dtype=torch.long), block_size=8, stride=9)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_the_chapter_08_run_beats_the_trigram(seed):
    # about 20 CPU-seconds per seed at one thread (RUN_TRAINING: 1,000 steps)
    result = showcase_run(seed, threads=1)
    assert result["history"].steps[-1] == RUN_TRAINING["steps"]
    assert result["val_loss"] < result["trigram"] - 0.2, result
    assert result["val_loss"] < result["4-gram"], result
