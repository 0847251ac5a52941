"""The course's offline corpus: Python's own documentation, and a synthetic language with a known floor.

    text = load_corpus("train")            # English prose from the standard library, no download
    chain = markov_chain()                  # a seeded 8-letter Markov chain
    chain.entropy_rate()                    # its entropy rate in nats per token, exactly
    chain.sample(10_000, seed=0)            # a string of 10 000 letters drawn from it

**Python's documentation.** Every Python installation ships `pydoc_data.topics`, the text that
`help("if")` prints: 79 topics, about 460 KB of English with code examples. `corpus_documents`
cleans it the same way on every run:

* topics in alphabetical order of their names; a topic whose text is part of another topic's
  (many are sections of a longer one) is dropped, so no text appears twice;
* typographic characters mapped to ASCII (’ -> ', “ -> ", … -> ..., — -> --, – -> -), every
  other non-ASCII character dropped, tabs expanded to spaces;
* reStructuredText underlines (a line of only * = - ~ ^ under a heading) removed, trailing spaces
  stripped, runs of blank lines collapsed to one.

The split is by whole documents, so no paragraph is in both halves: the last documents in
alphabetical order, as few as hold at least VAL_FRACTION = 10 % of the characters, are the
validation split; the others are the training split. The text is the one your Python ships, so counts may differ slightly between Python
releases; `corpus_fingerprint()` names the version you have.

**A synthetic language with a known entropy rate.** A first-order Markov chain over a small
alphabet: the next letter depends only on the current one, through a transition matrix P
(rows sum to 1). Its entropy rate, the best average loss any model can reach on it, has a closed
form (Cover & Thomas, Elements of Information Theory, theorem 4.2.4):

    H = - sum_i pi_i sum_j P_ij log P_ij         pi the stationary distribution: pi P = pi

Chapter 08 trains a model on it and compares the loss with this floor.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import re
from dataclasses import dataclass

import torch

from .shapes import ShapeError, fmt_shape, require_positive_int

__all__ = [
    "VAL_FRACTION",
    "MarkovChain",
    "clean_text",
    "corpus_documents",
    "corpus_fingerprint",
    "entropy_rate",
    "load_corpus",
    "split_point",
    "markov_chain",
    "stationary_distribution",
]

VAL_FRACTION = 0.1  # the validation split: the last documents, at least this share of the characters

_ASCII_FOR = {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
              "\u2014": "--", "\u2013": "-", "\u00df": "ss", "\u00b0": " degrees", "\u00a0": " "}
_UNDERLINE = re.compile(r"[*=\-~^]{3,}")


# ---------------------------------------------------------------------------------------------
# Python's documentation as a corpus
# ---------------------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """ASCII only, no heading underlines, no trailing spaces, at most one blank line in a row."""
    if not isinstance(text, str):
        raise TypeError(f"clean_text: text must be a str; got {type(text).__name__}")
    text = "".join(_ASCII_FOR.get(ch, ch) for ch in text).expandtabs(4)
    text = "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)
    lines = [line.rstrip() for line in text.split("\n") if not _UNDERLINE.fullmatch(line.strip())]
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return cleaned + "\n" if cleaned else ""


@functools.lru_cache(maxsize=1)
def corpus_documents() -> tuple[tuple[str, str], ...]:
    """((topic name, cleaned text), ...) in alphabetical order of the names, without repeats.

    Many topics are sections of longer ones ("if" is part of "compound"): a document whose text is
    contained in another document is dropped (of two identical ones the first name is kept), so
    no text is counted twice and none can sit in both halves of the split.
    """
    from pydoc_data.topics import topics  # ships with every Python: no download

    docs = [(name, clean_text(topics[name])) for name in sorted(topics)]

    def repeated(i: int, text: str) -> bool:
        return any(len(text) <= len(other) and text[:80] in other and text in other and (text != other or j < i)
                   for j, (_, other) in enumerate(docs) if j != i)

    return tuple((name, text) for i, (name, text) in enumerate(docs) if not repeated(i, text))


def split_point() -> int:
    """Index of the first validation document: the last documents (alphabetically), as few as hold
    at least VAL_FRACTION of the characters, are the validation split."""
    docs = corpus_documents()
    total = sum(len(text) for _, text in docs)
    held, first = 0, len(docs)
    while held < VAL_FRACTION * total:
        first -= 1
        held += len(docs[first][1])
    return first


def load_corpus(split: str = "train") -> str:
    """The cleaned documentation text: "train", "val" or "all" (documents joined by a blank line)."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"load_corpus: split must be 'train', 'val' or 'all'; got {split!r}")
    docs = [text for _, text in corpus_documents()]
    first_val = split_point()
    chosen = {"all": docs, "train": docs[:first_val], "val": docs[first_val:]}[split]
    return "\n".join(chosen)


def corpus_fingerprint() -> str:
    """The first 12 hex digits of the SHA-256 of load_corpus("all"): equal texts, equal fingerprints."""
    return hashlib.sha256(load_corpus("all").encode("utf-8")).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# A synthetic language: a Markov chain and its entropy rate
# ---------------------------------------------------------------------------------------------


def _require_transition(fn: str, transition: object) -> torch.Tensor:
    if not isinstance(transition, torch.Tensor) or not transition.is_floating_point():
        raise TypeError(f"{fn}: transition must be a floating-point torch.Tensor of shape (V, V)")
    if transition.dim() != 2 or transition.shape[0] != transition.shape[1]:
        raise ShapeError(f"{fn}: transition must have shape (V, V); got {fmt_shape(transition.shape)}")
    P = transition.detach().to(torch.float64).cpu()
    if (P < 0).any() or not torch.allclose(P.sum(dim=1), torch.ones(P.shape[0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"{fn}: every row of transition must be a probability distribution (>= 0, sums to 1)")
    return P


def stationary_distribution(transition: torch.Tensor) -> torch.Tensor:
    """pi with pi P = pi and sum(pi) = 1, for an irreducible chain: (V, V) -> (V,) float64.

    Solves the linear system (P^T - I) pi = 0 with one equation replaced by sum(pi) = 1.
    """
    P = _require_transition("stationary_distribution", transition)  # (V, V)
    V = P.shape[0]
    A = P.T - torch.eye(V, dtype=torch.float64)  # (V, V): (P^T - I) pi = 0
    A[-1] = 1.0  # the last equation becomes sum(pi) = 1
    b = torch.zeros(V, dtype=torch.float64)
    b[-1] = 1.0
    return torch.linalg.solve(A, b)  # (V,)


def entropy_rate(transition: torch.Tensor) -> float:
    """H = -sum_i pi_i sum_j P_ij log P_ij in nats per token (0 log 0 = 0)."""
    P = _require_transition("entropy_rate", transition)  # (V, V)
    pi = stationary_distribution(P)  # (V,)
    row_entropy = -torch.where(P > 0, P * torch.log(P), torch.zeros_like(P)).sum(dim=1)  # (V,)
    return float((pi * row_entropy).sum())


@dataclass(frozen=True, eq=False)
class MarkovChain:
    """A first-order Markov chain over the letters of `alphabet`; transition[i, j] = P(next j | now i)."""

    alphabet: str
    transition: torch.Tensor  # (V, V) float64, rows sum to 1

    def __post_init__(self) -> None:
        P = _require_transition("MarkovChain", self.transition)
        if len(self.alphabet) != P.shape[0] or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"MarkovChain: alphabet must hold {P.shape[0]} distinct characters, one per "
                             f"state of transition {fmt_shape(P.shape)}; got {self.alphabet!r}")
        object.__setattr__(self, "transition", P)

    @property
    def stationary(self) -> torch.Tensor:
        return stationary_distribution(self.transition)  # (V,)

    def entropy_rate(self) -> float:
        """Nats per token: the lowest average next-token loss any model can reach on long samples."""
        return entropy_rate(self.transition)

    def unigram_entropy(self) -> float:
        """H(pi) in nats: the best a model that ignores the previous letter can do."""
        pi = self.stationary
        return float(-(pi * torch.log(pi.clamp_min(1e-300))).sum())

    def sample(self, n_tokens: int, seed: int = 0) -> str:
        """n_tokens letters; the first is drawn from pi, so every position has distribution pi."""
        require_positive_int("MarkovChain.sample", "n_tokens", n_tokens)
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand(n_tokens, generator=gen, dtype=torch.float64).tolist()  # (n_tokens,)
        start = torch.cumsum(self.stationary, 0).tolist()
        rows = [torch.cumsum(row, 0).tolist() for row in self.transition]
        V = len(self.alphabet)
        state = min(bisect.bisect_right(start, uniforms[0]), V - 1)
        out = [state]
        for u in uniforms[1:]:
            state = min(bisect.bisect_right(rows[state], u), V - 1)  # inverse-CDF sampling
            out.append(state)
        return "".join(self.alphabet[s] for s in out)


def markov_chain(n_states: int = 8, seed: int = 0, sharpness: float = 1.5) -> MarkovChain:
    """A seeded chain over the first n_states lowercase letters: row i = softmax(sharpness * z_i),
    z_i standard normal. Larger sharpness, more predictable text (lower entropy rate)."""
    require_positive_int("markov_chain", "n_states", n_states)
    if n_states > 26:
        raise ValueError(f"markov_chain: n_states must be at most 26 (one lowercase letter each); got {n_states}")
    if not (isinstance(sharpness, (int, float)) and math.isfinite(sharpness) and sharpness >= 0):
        raise ValueError(f"markov_chain: sharpness must be a finite number >= 0; got {sharpness!r}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n_states, n_states, generator=gen, dtype=torch.float64)  # (V, V)
    transition = torch.softmax(sharpness * z, dim=1)  # (V, V), rows sum to 1, all entries > 0
    return MarkovChain("abcdefghijklmnopqrstuvwxyz"[:n_states], transition)
