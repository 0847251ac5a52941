"""Chapter 00: text -> token ids -> text. A character tokenizer and a tiny byte-pair encoding (BPE).

    chars = CharTokenizer.from_text(load_corpus("train"))   # one id per distinct character
    bpe = course_bpe()                                        # 256 bytes + 256 merges, trained on the corpus
    ids = bpe.encode("The cat sat")                           # list[int]
    bpe.decode(ids) == "The cat sat"                          # the round trip is exact

**Character level.** The vocabulary is the sorted set of characters of a text; id i is the i-th
character. A character outside the vocabulary is an error, never skipped or guessed.

**Byte-pair encoding** (Sennrich et al. 2016; byte-level as in GPT-2). Start from the text's UTF-8
bytes, ids 0..255, so every string can be encoded. Training repeats `n_merges` times: count every
adjacent pair of ids (weighted by how often its chunk occurs), take the most frequent pair and give
it the next id, 256, 257, ... Rules that make training deterministic:

* the text is first cut into chunks (a word with its leading space, a run of digits, of
  punctuation, or of whitespace; `pretokenize`), and pairs never cross a chunk boundary;
* **ties**: among pairs with the same count, the pair with the smallest (left id, right id) wins;
* training stops early only if no pair occurs at least twice.

Encoding applies the learned merges in the order they were learned (the lowest-ranked pair present
first), left to right and without overlap: merging (a, a) in [a, a, a] gives [aa, a].
"""

from __future__ import annotations

import functools
import heapq
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from .corpus import load_corpus

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "DEFAULT_MERGES",
    "course_bpe",
    "course_chars",
    "merge_pair",
    "most_frequent_pair",
    "pair_counts",
    "pretokenize",
    "train_bpe",
]

DEFAULT_MERGES = 256  # the course's BPE: 256 byte ids + 256 merges = a vocabulary of 512

# GPT-2's chunk pattern, ASCII version: ' word', ' 123', ' ...', whitespace. Every character of the
# text lands in exactly one chunk, so "".join(pretokenize(text)) == text.
_CHUNK = re.compile(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _require_text(fn: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{fn}: text must be a str; got {type(text).__name__}")
    return text


def _require_ids(fn: str, ids: object) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{fn}: ids must be a sequence of ints; got {type(ids).__name__}")
    out = []
    for i in ids:
        value = i.item() if hasattr(i, "item") else i
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn}: ids must be ints; got {value!r}")
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# Character level
# ---------------------------------------------------------------------------------------------


class CharTokenizer:
    """id i <-> the i-th character of `vocab` (a string of distinct characters)."""

    def __init__(self, vocab: str) -> None:
        _require_text("CharTokenizer", vocab)
        if not vocab or len(set(vocab)) != len(vocab):
            raise ValueError("CharTokenizer: vocab must be a non-empty string of distinct characters")
        self.vocab = vocab
        self._id = {ch: i for i, ch in enumerate(vocab)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary is the sorted set of the text's characters."""
        return cls("".join(sorted(set(_require_text("CharTokenizer.from_text", text)))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        _require_text("CharTokenizer.encode", text)
        try:
            return [self._id[ch] for ch in text]
        except KeyError as error:
            ch = error.args[0]
            raise ValueError(f"CharTokenizer.encode: character {ch!r} (U+{ord(ch):04X}) is not in the "
                             f"vocabulary of {self.vocab_size} characters") from None

    def decode(self, ids: Sequence[int]) -> str:
        ids = _require_ids("CharTokenizer.decode", ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"CharTokenizer.decode: id {bad[0]} is outside 0..{self.vocab_size - 1}")
        return "".join(self.vocab[i] for i in ids)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.decode([i]) for i in _require_ids("CharTokenizer.token_strings", ids)]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------
# Byte-pair encoding: the two steps of training, then training and encoding
# ---------------------------------------------------------------------------------------------


def pretokenize(text: str) -> list[str]:
    """Chunks that BPE merges never cross: ' word', ' 42', ' .,', runs of whitespace."""
    return _CHUNK.findall(_require_text("pretokenize", text))


def pair_counts(ids: Sequence[int]) -> Counter:
    """How often each adjacent pair occurs: [1, 2, 1, 2] -> {(1, 2): 2, (2, 1): 1}."""
    ids = _require_ids("pair_counts", ids)
    return Counter(zip(ids, ids[1:]))


def most_frequent_pair(ids: Sequence[int]) -> tuple[int, int] | None:
    """The adjacent pair that occurs most often; ties go to the smallest (left, right). None if len < 2."""
    counts = pair_counts(ids)
    if not counts:
        return None
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of `pair` by `new_id`, left to right, without overlap; a new list."""
    ids = _require_ids("merge_pair", ids)
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise TypeError(f"merge_pair: pair must be a tuple of two ids; got {pair!r}")
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2  # both ids consumed: [a, a, a] with (a, a) -> [aa, a]
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int = DEFAULT_MERGES) -> list[tuple[int, int]]:
    """The merges learned from `text`, in order: merge r creates id 256 + r.

    The same as calling most_frequent_pair / merge_pair on every chunk n_merges times, but fast:
    each distinct chunk is stored once with its count, and only the chunks that contain the chosen
    pair are updated. A heap keyed (-count, left, right) finds the next pair with the tie rule.
    """
    _require_text("train_bpe", text)
    if isinstance(n_merges, bool) or not isinstance(n_merges, int) or n_merges < 0:
        raise ValueError(f"train_bpe: n_merges must be an int >= 0; got {n_merges!r}")
    chunk_counts = Counter(pretokenize(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk once
    freq = list(chunk_counts.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)  # pair -> weighted count
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunks containing it
    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            counts[pair] += freq[w]
            where[pair].add(w)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        if counts.get((a, b), 0) != -neg:
            continue  # a stale entry: this pair's count changed since it was pushed
        if -neg < 2:
            break  # no pair occurs twice: nothing left worth merging
        new_id = 256 + len(merges)
        merges.append((a, b))
        changed: set[tuple[int, int]] = set()
        for w in sorted(where.pop((a, b))):
            word = words[w]
            for pair in zip(word, word[1:]):  # remove the chunk's old pairs ...
                counts[pair] -= freq[w]
                changed.add(pair)
            word = words[w] = merge_pair(word, (a, b), new_id)
            for pair in zip(word, word[1:]):  # ... and add its new ones
                counts[pair] += freq[w]
                where[pair].add(w)
                changed.add(pair)
        counts.pop((a, b), None)
        for pair in changed:
            if counts.get(pair, 0) > 0:
                heapq.heappush(heap, (-counts[pair], *pair))
            else:
                counts.pop(pair, None)
                where.pop(pair, None)
    return merges


class BPETokenizer:
    """Byte-level BPE from a list of merges: ids 0..255 are bytes, id 256 + r is merge r."""

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None:
        self.merges = [tuple(int(i) for i in m) for m in merges]
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}  # id -> the bytes it stands for
        for r, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + r and 0 <= b < 256 + r):
                raise ValueError(f"BPETokenizer: merge {r} = {(a, b)} uses an id that does not exist yet")
            self.vocab[256 + r] = self.vocab[a] + self.vocab[b]
        self._rank = {pair: r for r, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, n_merges: int = DEFAULT_MERGES) -> BPETokenizer:
        return cls(train_bpe(text, n_merges))

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    def _encode_chunk(self, chunk: str) -> list[int]:
        if chunk not in self._cache:
            ids = list(chunk.encode("utf-8"))
            while len(ids) > 1:
                pair = min(zip(ids, ids[1:]), key=lambda p: self._rank.get(p, len(self._rank)))
                if pair not in self._rank:
                    break  # no learned merge applies any more
                ids = merge_pair(ids, pair, 256 + self._rank[pair])
            self._cache[chunk] = ids
        return self._cache[chunk]

    def encode(self, text: str) -> list[int]:
        return [i for chunk in pretokenize(text) for i in self._encode_chunk(chunk)]

    def decode(self, ids: Sequence[int]) -> str:
        ids = _require_ids("BPETokenizer.decode", ids)
        bad = [i for i in ids if i not in self.vocab]
        if bad:
            raise ValueError(f"BPETokenizer.decode: id {bad[0]} is outside 0..{self.vocab_size - 1}")
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """What each id stands for, as text (a byte that is part of a longer UTF-8 character shows as �)."""
        return [self.vocab[i].decode("utf-8", errors="replace") for i in _require_ids("BPETokenizer.token_strings", ids)]

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# ---------------------------------------------------------------------------------------------
# The course's tokenizers (trained once per process on the training split)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def course_bpe(n_merges: int = DEFAULT_MERGES) -> BPETokenizer:
    """The BPE every chapter uses: trained on load_corpus("train") with n_merges merges."""

    return BPETokenizer.train(load_corpus("train"), n_merges)


@functools.lru_cache(maxsize=1)
def course_chars() -> CharTokenizer:
    """The character tokenizer of the whole corpus (train and validation share one vocabulary)."""

    return CharTokenizer.from_text(load_corpus("all"))
