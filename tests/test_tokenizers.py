"""helpers.tokenizers: exact round trips on the whole corpus and on any text, deterministic BPE training
with its stated tie rule, and the fast trainer equal to the slow textbook algorithm."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.corpus import load_corpus
from helpers.tokenizers import (
    DEFAULT_MERGES,
    BPETokenizer,
    CharTokenizer,
    course_bpe,
    course_chars,
    merge_pair,
    most_frequent_pair,
    pair_counts,
    pretokenize,
    train_bpe,
)

# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


def test_char_round_trip_on_the_whole_corpus():
    text = load_corpus("all")
    tok = course_chars()
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.vocab == "".join(sorted(set(text))) and tok.vocab_size < 100


def test_bpe_round_trip_on_the_whole_corpus():
    text = load_corpus("all")
    bpe = course_bpe()
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert "".join(bpe.token_strings(ids)) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert len(text) / len(ids) > 1.8  # 256 merges roughly halve the length


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trip_on_any_text(text):
    """Byte level: every string, any script or emoji, encodes and decodes exactly."""
    bpe = course_bpe()
    assert bpe.decode(bpe.encode(text)) == text
    assert "".join(pretokenize(text)) == text


def test_char_tokenizer_refuses_unknown_characters_and_ids():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab == " dehlorw" and tok.encode("low") == [4, 5, 7]
    with pytest.raises(ValueError, match=r"character 'z' \(U\+007A\) is not in the vocabulary of 8 characters"):
        tok.encode("lowz")
    with pytest.raises(ValueError, match="id 8 is outside 0..7"):
        tok.decode([1, 8])
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aa")


def test_enumerate_gives_positions_not_ids():
    tokens = ["The", " cat", " sat"]
    assert list(enumerate(tokens)) == [(0, "The"), (1, " cat"), (2, " sat")]
    bpe = course_bpe()
    ids = bpe.encode("The cat sat")
    assert [i for i, _ in enumerate(ids)] == list(range(len(ids)))


# ------------------------------------------------------------------------------------------------
# The two steps of BPE training
# ------------------------------------------------------------------------------------------------


def test_pair_counts_and_tie_rule():
    assert pair_counts([1, 2, 1, 2]) == Counter({(1, 2): 2, (2, 1): 1})
    assert most_frequent_pair([5, 6, 5, 6, 1, 2, 1, 2]) == (1, 2)  # both twice: smallest pair wins
    assert most_frequent_pair([9, 9, 9]) == (9, 9)  # overlapping occurrences are counted
    assert most_frequent_pair([3]) is None


def test_merge_pair_left_to_right_without_overlap():
    assert merge_pair([1, 1, 1], (1, 1), 256) == [256, 1]
    assert merge_pair([1, 1, 1, 1], (1, 1), 256) == [256, 256]
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 300) == [300, 3, 300]
    assert merge_pair([2, 1], (1, 2), 300) == [2, 1]
    ids = [1, 2]
    assert merge_pair(ids, (1, 2), 7) == [7] and ids == [1, 2]  # a new list; the input is untouched


def test_ties_in_training_follow_the_stated_rule():
    # "abab" and " cdcd": (a, b) and (c, d) both occur twice; (97, 98) < (99, 100) wins.
    assert train_bpe("abab cdcd", 2) == [(97, 98), (99, 100)]
    # Chunks are never crossed: "b c" never forms the pair (b, ' ').
    assert all(pair != (98, 32) for pair in train_bpe("ab ab ab", 10))
    # Training stops early when no pair occurs twice.
    assert train_bpe("abc", 5) == []


def _slow_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    """The textbook algorithm: recount every pair of every chunk occurrence before each merge."""
    words = [list(chunk.encode("utf-8")) for chunk in pretokenize(text)]
    merges = []
    for r in range(n_merges):
        counts = Counter()
        for word in words:
            counts.update(zip(word, word[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if counts[best] < 2:
            break
        merges.append(best)
        words = [merge_pair(word, best, 256 + r) for word in words]
    return merges


@pytest.mark.parametrize("start, length, n_merges", [(0, 6000, 60), (200_000, 4000, 40)])
def test_fast_training_equals_the_textbook_algorithm(start, length, n_merges):
    text = load_corpus("train")[start:start + length]
    assert train_bpe(text, n_merges) == _slow_train(text, n_merges)


def test_encoding_equals_applying_the_merges_in_order():
    text = load_corpus("val")[:3000]
    bpe = course_bpe()
    expected = []
    for chunk in pretokenize(text):
        ids = list(chunk.encode("utf-8"))
        for r, pair in enumerate(bpe.merges):
            ids = merge_pair(ids, pair, 256 + r)
        expected.extend(ids)
    assert bpe.encode(text) == expected


def test_course_bpe_is_deterministic():
    bpe = course_bpe()
    assert len(bpe.merges) == DEFAULT_MERGES and bpe.vocab_size == 512
    assert train_bpe(load_corpus("train"), DEFAULT_MERGES) == bpe.merges
    assert BPETokenizer(bpe.merges).encode("The cat sat.") == bpe.encode("The cat sat.")


def test_bpe_vocab_and_bad_input():
    bpe = BPETokenizer([(104, 105), (256, 256)])  # "hi", then "hihi"
    assert bpe.vocab[257] == b"hihi" and bpe.encode("hihihi!") == [257, 256, 33]
    with pytest.raises(ValueError, match="id 258 is outside 0..257"):
        bpe.decode([258])
    with pytest.raises(ValueError, match="uses an id that does not exist yet"):
        BPETokenizer([(300, 1)])
    with pytest.raises(TypeError, match="must be a str"):
        bpe.encode(b"hi")
    with pytest.raises(ValueError, match="n_merges must be an int >= 0"):
        train_bpe("abc", -1)
