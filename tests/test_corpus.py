"""helpers.corpus: the cleaned documentation corpus and its split; the Markov chain and its entropy rate
against closed forms and against a long sample."""

from __future__ import annotations

import math
import re

import pytest
import torch

from helpers import corpus
from helpers.corpus import (
    VAL_FRACTION,
    MarkovChain,
    clean_text,
    corpus_documents,
    entropy_rate,
    load_corpus,
    markov_chain,
    split_point,
    stationary_distribution,
)

# ------------------------------------------------------------------------------------------------
# The documentation corpus
# ------------------------------------------------------------------------------------------------


def test_documents_are_the_pydoc_topics_in_alphabetical_order_without_repeats():
    from pydoc_data.topics import topics

    names = [name for name, _ in corpus_documents()]
    assert names == sorted(names) and set(names) <= set(topics)
    texts = [text for _, text in corpus_documents()]
    assert all(text.endswith("\n") for text in texts)
    # "if" and "else" (identical texts) are sections of "compound": they are dropped, "compound" is kept.
    assert "compound" in names and "if" not in names and "else" not in names
    for i, text in enumerate(texts):
        assert not any(text in other for j, other in enumerate(texts) if j != i)
    # Every dropped topic's text survives inside a kept one.
    kept = "\n".join(texts)
    assert all(clean_text(topics[name]) in kept for name in topics)


def test_corpus_is_clean_ascii():
    text = load_corpus("all")
    assert len(text) > 350_000
    assert all(ch == "\n" or 32 <= ord(ch) < 127 for ch in text)
    assert "\n\n\n" not in text
    assert not any(line != line.rstrip() for line in text.split("\n"))
    assert not any(re.fullmatch(r"[*=\-~^]{3,}", line.strip()) for line in text.split("\n"))


def test_clean_text_examples():
    raw = "The \u201cif\u201d statement\n******************\n\n\n\nIt\u2019s\ttrue \u2014 ok\u2026  \n\u00e9t\u00e9\n"
    # The tab expands to the next multiple of 4 columns; other non-ASCII characters are dropped.
    assert clean_text(raw) == 'The "if" statement\n\nIt\'s    true -- ok...\nt\n'
    assert clean_text("") == "" and clean_text("\n\n") == ""
    with pytest.raises(TypeError, match="must be a str"):
        clean_text(b"bytes")


def test_split_is_by_whole_documents_and_covers_everything():
    docs = [text for _, text in corpus_documents()]
    train, val = load_corpus("train"), load_corpus("val")
    first = split_point()
    assert val == "\n".join(docs[first:]) and train == "\n".join(docs[:first])
    assert train + "\n" + val == load_corpus("all")
    total = sum(len(text) for text in docs)
    held = sum(len(text) for text in docs[first:])
    # As few trailing documents as hold at least VAL_FRACTION of the characters.
    assert held >= VAL_FRACTION * total > held - len(docs[first])
    assert 0.1 <= len(val) / len(load_corpus("all")) < 0.2
    assert not any(text in train for text in docs[first:])


def test_corpus_is_the_same_on_every_call():
    first = load_corpus("train")
    corpus_documents.cache_clear()
    assert load_corpus("train") == first
    assert re.fullmatch(r"[0-9a-f]{12}", corpus.corpus_fingerprint())


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="'train', 'val' or 'all'"):
        load_corpus("test")


# ------------------------------------------------------------------------------------------------
# The synthetic language
# ------------------------------------------------------------------------------------------------


def _h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize("p, q", [(0.1, 0.3), (0.5, 0.5), (0.9, 0.2)])
def test_two_state_chain_matches_the_closed_form(p, q):
    """P = [[1-p, p], [q, 1-q]]: pi = (q, p) / (p + q), H = pi_0 h(p) + pi_1 h(q)."""
    P = torch.tensor([[1 - p, p], [q, 1 - q]], dtype=torch.float64)
    pi = stationary_distribution(P)
    torch.testing.assert_close(pi, torch.tensor([q, p], dtype=torch.float64) / (p + q), rtol=0, atol=1e-12)
    expected = q / (p + q) * _h(p) + p / (p + q) * _h(q)
    assert abs(entropy_rate(P) - expected) < 1e-12


def test_iid_and_deterministic_chains():
    row = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert abs(entropy_rate(row.expand(3, 3).clone()) - 1.5 * math.log(2)) < 1e-12
    cycle = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)  # a -> b -> c -> a
    assert entropy_rate(cycle) == 0.0
    torch.testing.assert_close(stationary_distribution(cycle), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert MarkovChain("abc", cycle).sample(7, seed=3) in ("abcabca", "bcabcab", "cabcabc")


def test_course_chain_is_stationary_and_below_the_uniform_entropy():
    chain = markov_chain()
    pi = chain.stationary
    torch.testing.assert_close(pi @ chain.transition, pi, rtol=0, atol=1e-12)
    assert abs(float(pi.sum()) - 1) < 1e-12 and bool((pi > 0).all())
    H = chain.entropy_rate()
    assert 0 < H < chain.unigram_entropy() < math.log(8)


def test_entropy_rate_is_the_average_loss_of_the_true_model_on_a_long_sample():
    """-(1/N) sum log P(x_{t+1} | x_t) over a sample converges to H (ergodic theorem)."""
    chain = markov_chain()
    text = chain.sample(100_000, seed=1)
    index = {ch: i for i, ch in enumerate(chain.alphabet)}
    ids = torch.tensor([index[ch] for ch in text])
    log_p = torch.log(chain.transition[ids[:-1], ids[1:]])
    assert abs(float(-log_p.mean()) - chain.entropy_rate()) < 0.02
    counts = torch.bincount(ids, minlength=8).double() / len(ids)
    torch.testing.assert_close(counts, chain.stationary, rtol=0, atol=0.01)


def test_sampling_is_seeded():
    chain = markov_chain()
    assert chain.sample(500, seed=4) == chain.sample(500, seed=4)
    assert chain.sample(500, seed=4) != chain.sample(500, seed=5)
    assert markov_chain(seed=1).transition.ne(markov_chain(seed=2).transition).any()
    assert set(chain.sample(2000)) == set(chain.alphabet)


def test_bad_chains_are_refused():
    with pytest.raises(ValueError, match="probability distribution"):
        entropy_rate(torch.tensor([[0.5, 0.6], [0.5, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="shape \\(V, V\\); got \\(2, 3\\)"):
        stationary_distribution(torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="distinct characters"):
        MarkovChain("aa", torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at most 26"):
        markov_chain(n_states=27)
    with pytest.raises(ValueError, match="positive int"):
        markov_chain().sample(0)
