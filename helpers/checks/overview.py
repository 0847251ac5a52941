"""Checks for chapter 00 (tokens, the shape map, the tour, permutation equivariance, token budgets)
and their catalogue of known mistakes.

Each `check_*` takes the learner's function (or numbers), calls it on inputs it makes and raises
`CheckFailed` with one sentence when something is wrong. Keyword arguments choose other seeds,
dtypes and sizes: the visible tests use the defaults, the hidden tests use others.

What the checks hand to the learner's code (blocks, norms, the functions whose equivariance is
tested) is built from torch and from the chapters' own modules (helpers.blocks, helpers.ffn,
helpers.norms, helpers.overview.AddPositions), never from this file, so calling them is never
mistaken for calling the checks' own code.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import blocks as ref_blocks
from .. import overview as ref
from .. import tokenizers as ref_tok
from ..corpus import load_corpus
from ..ffn import FeedForward
from ..norms import LayerNorm
from . import probes as _probes
from .core import Case, CheckFailed, Mistake, call_learner, check_function, check_numbers, named_shape, protect

__all__ = [
    "MISTAKES",
    "check_char_tokenizer",
    "check_count_tokens",
    "check_lm_forward",
    "check_merge_pair",
    "check_most_frequent_pair",
    "check_permutation_test",
    "check_shape_map",
    "check_token_budget",
]

# ---------------------------------------------------------------------------------------------
# Forbidden: what each exercise may not call or be (its checks refuse it; course-scan flags it)
# ---------------------------------------------------------------------------------------------

# The learner writes these themselves: an answer that is or calls one of them is refused.
FORBIDDEN = {
    "ex1": (ref_tok.CharTokenizer.encode, ref_tok.CharTokenizer.decode, ref_tok.CharTokenizer.__init__),
    "ex2": (ref_tok.most_frequent_pair, ref_tok.merge_pair, ref_tok.pair_counts, ref_tok.train_bpe,
            ref_tok.BPETokenizer.__init__, ref_tok.BPETokenizer.encode),
    "ex3": (),
    "ex4": (ref.shape_map, ref.measure_shapes, ref.measure_tensors),
    "ex5": (ref_blocks.decoder_forward, ref_blocks.TinyDecoder.forward),
    "ex6": (ref.is_permutation_equivariant, ref._derangement),
    "ex7": (),
}


# ---------------------------------------------------------------------------------------------
# Shared: the learner's list results (tokenizers, BPE) and how they are judged
# ---------------------------------------------------------------------------------------------

def _as_ids(name: str, value: Any) -> list[int]:
    if isinstance(value, torch.Tensor) and value.dim() == 1 and not value.is_floating_point():
        return value.tolist()
    if not isinstance(value, (list, tuple)):
        raise CheckFailed(f"{name} should return a list of ints; it returned a {type(value).__name__}")
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in value):
        raise CheckFailed(f"{name} should return a list of ints; it returned {list(value)[:6]!r}")
    return [int(i) for i in value]


def _learner_outputs(fn: Any, name: str, calls: Sequence[tuple], arg_names: tuple[str, ...],
                     normalize: Callable[[Any], Any], forbidden: Sequence[Any]) -> list[Any]:
    """The learner's results on every call (normalized), after checking that no input list was changed."""
    results = []
    for args in calls:
        before = [list(a) if isinstance(a, list) else a for a in args]
        note = ", ".join(f"{n}={a!r}" for n, a in zip(arg_names, args))
        got = call_learner(fn, name, Case(tuple(args), {}, arg_names, note), forbidden)
        if list(args) != before:
            raise CheckFailed(f"{name} changed its input list {arg_names[0]}; build and return a new list instead")
        results.append(normalize(got))
    return results


def _judge(name: str, got: list[Any], calls: Sequence[tuple], reference: Callable, mistakes: Sequence[Mistake],
           arg_names: tuple[str, ...]) -> None:
    """Name the catalogued mistake whose results on all calls equal the learner's, else the first wrong call."""
    expected = [reference(*args) for args in calls]
    if got == expected:
        return
    for mistake in mistakes:
        if [mistake.impl(*args) for args in calls] == got:
            raise CheckFailed(f"{name}: {mistake.message}")
    index = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
    shown = ", ".join(repr(a) for a in calls[index])
    symptom = _sequence_symptom(got[index], expected[index], calls[index][0])
    raise CheckFailed(f"{name}({shown}) returned {got[index]!r}; expected {expected[index]!r}"
                      + (f": {symptom}" if symptom else ""))


def _sequence_symptom(got: Any, expected: Any, given: Any) -> str | None:
    """What a wrong list or string has in common with the right one: reversed, one short, unchanged."""
    # Not for pairs: a wrong pair is the reverse of the right one by chance too often to say so.
    if not isinstance(got, (list, tuple, str)) or not isinstance(expected, type(got)) or len(expected) < 3:
        return None
    if got == expected[::-1]:
        return "that is the right result in reverse order"
    if got == expected[:-1]:
        return "the last element is missing (does a loop stop one step early?)"
    if got == expected[1:]:
        return "the first element is missing"
    if isinstance(given, (list, str)) and got == given:
        return "that is the input unchanged: nothing was replaced"
    return None


# ---------------------------------------------------------------------------------------------
# Exercise 1: a character tokenizer
# ---------------------------------------------------------------------------------------------

CHAR_TEXT = "the cat sat on the mat."  # the visible test's text and vocabulary
CHAR_VOCAB = " .acehmnost"


def _encode_right(text: str, vocab: str) -> list[int]:
    return [vocab.index(ch) for ch in text]


CHAR_ENCODE_MISTAKES = (
    Mistake("code_points",
            "the ids are Unicode code points (ord(ch)); a tokenizer's id is the character's position in its "
            "own vocabulary: vocab.index(ch), so the ids run from 0 to len(vocab) - 1",
            lambda text, vocab: [ord(ch) for ch in text]),
    Mistake("one_based",
            "the ids start at 1; the first character of the vocabulary has id 0 (its index in the string)",
            lambda text, vocab: [vocab.index(ch) + 1 for ch in text]),
    Mistake("unique_only",
            "each character is encoded once, in order of first appearance; encode every character of the "
            "text, repeats included, so the text can be decoded again",
            lambda text, vocab: [vocab.index(ch) for ch in dict.fromkeys(text)]),
)

CHAR_DECODE_MISTAKES = (
    Mistake("list_of_characters",
            "decode returns a list of characters; join them into one string: ''.join(...)",
            lambda ids, vocab: [vocab[i] for i in ids]),
    Mistake("space_joined",
            "the characters are joined with spaces; a character tokenizer's pieces join with nothing "
            "between them: ''.join(...)",
            lambda ids, vocab: " ".join(vocab[i] for i in ids)),
    Mistake("code_points",
            "the ids are read as Unicode code points (chr(i)); id i stands for vocab[i]",
            lambda ids, vocab: "".join(chr(i) for i in ids)),
)

_M_SKIPS_UNKNOWN = ("an unknown character was skipped or replaced without an error; a tokenizer that drops "
                    "characters cannot round-trip, so raise an error (e.g. ValueError) instead")


def _char_cases(text: str, vocab: str, seed: int) -> list[tuple[str, str]]:
    gen = torch.Generator().manual_seed(seed)
    random_text = "".join(vocab[i] for i in torch.randint(0, len(vocab), (40,), generator=gen).tolist())
    return [(text, vocab), (random_text, vocab), ("", vocab)]


def check_char_tokenizer(encode: Any, decode: Any, *, text: str = CHAR_TEXT, vocab: str = CHAR_VOCAB,
                         seed: int = 0) -> None:
    """char_encode(text, vocab) -> list of ids; char_decode(ids, vocab) -> text; the round trip."""
    texts = _char_cases(text, vocab, seed)
    calls = [(t, v) for t, v in texts]
    got = _learner_outputs(encode, "char_encode", calls, ("text", "vocab"), lambda out: _as_ids("char_encode", out),
                           FORBIDDEN["ex1"])
    _judge("char_encode", got, calls, _encode_right, CHAR_ENCODE_MISTAKES, ("text", "vocab"))
    calls = [(_encode_right(t, v), v) for t, v in texts]
    back = _learner_outputs(decode, "char_decode", calls, ("ids", "vocab"), lambda out: out, FORBIDDEN["ex1"])
    _judge("char_decode", back, calls, lambda ids, v: "".join(v[i] for i in ids), CHAR_DECODE_MISTAKES,
           ("ids", "vocab"))
    if not all(isinstance(b, str) for b in back):
        raise CheckFailed("char_decode should return a str")
    unknown = next(ch for ch in "!?#@zQ" if ch not in vocab)
    case = Case((text[:3] + unknown, vocab), {}, ("text", "vocab"), f"a character {unknown!r} not in vocab")
    try:
        result = call_learner(encode, "char_encode", case, FORBIDDEN["ex1"])
    except CheckFailed as failure:
        if not str(failure).startswith("char_encode raised "):
            raise
    else:
        raise CheckFailed(f"char_encode({case.args[0]!r}, vocab={vocab!r}) returned {result!r}: {_M_SKIPS_UNKNOWN}")
    print(f"✓ char_encode and char_decode: right ids, exact round trip, unknown characters refused "
          f"({len(texts)} texts)")


# ---------------------------------------------------------------------------------------------
# Exercise 2: one step of BPE training
# ---------------------------------------------------------------------------------------------


def _non_overlapping(ids: Sequence[int], pair: tuple[int, int]) -> int:
    """Occurrences of `pair` counted as str.count does: an occurrence overlapping the previous is skipped."""
    n = i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            n, i = n + 1, i + 2
        else:
            i += 1
    return n


def _most_frequent(ids: Sequence[int], *, tie: str = "smallest", overlapping: bool = True) -> Any:
    counts = Counter(zip(ids, ids[1:]))
    if not overlapping:  # WRONG: [9, 9, 9] holds (9, 9) twice, not once
        counts = Counter({pair: _non_overlapping(ids, pair) for pair in counts})
    if not counts:
        return None
    if tie == "first_seen":
        return counts.most_common(1)[0][0]
    best = max(counts.values())
    tied = [pair for pair in counts if counts[pair] == best]
    return min(tied) if tie == "smallest" else max(tied)


MOST_FREQUENT_MISTAKES = (
    Mistake("first_seen_tie",
            "ties go to the pair seen first (what Counter.most_common returns); the course's rule breaks "
            "ties by the smallest pair: smallest left id, then smallest right id",
            lambda ids: _most_frequent(ids, tie="first_seen")),
    Mistake("largest_tie",
            "ties go to the largest pair; the course's rule breaks ties by the smallest pair: smallest "
            "left id, then smallest right id",
            lambda ids: _most_frequent(ids, tie="largest")),
    Mistake("non_overlapping",
            "overlapping occurrences are not counted ([9, 9, 9] holds the pair (9, 9) twice); count every "
            "adjacent pair: zip(ids, ids[1:])",
            lambda ids: _most_frequent(ids, overlapping=False)),
    Mistake("with_count",
            "the count is returned with the pair; return only the pair, a tuple (left id, right id)",
            lambda ids: (_most_frequent(ids), Counter(zip(ids, ids[1:]))[_most_frequent(ids)]) if len(ids) > 1 else None),
)


def _merge(ids: Sequence[int], pair: tuple[int, int], new_id: int, *, style: str = "right") -> list[int]:
    ids = list(ids)
    if style == "right_to_left":
        return _merge(ids[::-1], pair[::-1], new_id)[::-1]
    out, i = [], 0
    limit = len(ids) - 1 if style == "drops_last" else len(ids)
    merged_once = False
    while i < limit:
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair) and not (style == "first_only" and merged_once):
            out.append(new_id)
            merged_once = True
            i += 1 if style == "no_skip" else 2
        else:
            out.append(ids[i])
            i += 1
    return out


MERGE_MISTAKES = (
    Mistake("no_skip",
            "after a merge the loop moves on by one id, so the pair's second id is used again; skip both "
            "ids of a merged pair (i += 2)",
            lambda ids, pair, new_id: _merge(ids, pair, new_id, style="no_skip")),
    Mistake("drops_last",
            "the last id is lost when it is not part of a merge; the loop must also copy the final id "
            "(loop while i < len(ids), and test i + 1 < len(ids) before looking at a pair)",
            lambda ids, pair, new_id: _merge(ids, pair, new_id, style="drops_last")),
    Mistake("right_to_left",
            "the merges are made from the right; merge left to right: [a, a, a] with the pair (a, a) gives "
            "[new, a], not [a, new]",
            lambda ids, pair, new_id: _merge(ids, pair, new_id, style="right_to_left")),
    Mistake("first_only",
            "only the first occurrence is merged; replace every (non-overlapping) occurrence of the pair",
            lambda ids, pair, new_id: _merge(ids, pair, new_id, style="first_only")),
)


def _bpe_lists(seed: int, n: int = 3, length: int = 30, alphabet: int = 5) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, alphabet, (length,), generator=gen).tolist() for _ in range(n)]


def _as_pair(value: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple) and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in value):
        return tuple(int(i) for i in value)
    return value


MOST_FREQUENT_LISTS = ([1, 2, 1, 2, 3], [1, 2, 1, 2, 5, 6, 5, 6], [5, 6, 5, 6, 1, 2, 1, 2],
                       [9, 9, 9, 9, 9, 1, 2, 1, 2, 1, 2])


def check_most_frequent_pair(fn: Any, *, seed: int = 0) -> None:
    """most_frequent_pair(ids) -> (left, right): most frequent adjacent pair, ties to the smallest pair."""
    calls = [(list(ids),) for ids in (*MOST_FREQUENT_LISTS, *_bpe_lists(seed))]
    got = _learner_outputs(fn, "most_frequent_pair", calls, ("ids",), _as_pair, FORBIDDEN["ex2"])
    _judge("most_frequent_pair", got, calls, _most_frequent, MOST_FREQUENT_MISTAKES, ("ids",))
    print(f"✓ most_frequent_pair: right pair, tie rule respected, on all {len(calls)} lists")


MERGE_CALLS = (([1, 2, 3, 1, 2, 4], (1, 2), 99), ([5, 5, 5], (5, 5), 256), ([5, 5, 5, 5, 7], (5, 5), 256),
               ([3, 1, 2], (1, 2), 300), ([2, 1, 4], (1, 2), 300))


def check_merge_pair(fn: Any, *, seed: int = 0) -> None:
    """merge_pair(ids, pair, new_id) -> a new list: every occurrence replaced, left to right, no overlap."""
    calls = [(list(ids), pair, new_id) for ids, pair, new_id in MERGE_CALLS]
    calls += [(ids, (ids[3], ids[4]), 500 + k) for k, ids in enumerate(_bpe_lists(seed, alphabet=3))]
    names = ("ids", "pair", "new_id")
    got = _learner_outputs(fn, "merge_pair", calls, names, lambda out: _as_ids("merge_pair", out), FORBIDDEN["ex2"])
    _judge("merge_pair", got, calls, _merge, MERGE_MISTAKES, names)
    print(f"✓ merge_pair: every pair merged left to right, on all {len(calls)} lists")


# ---------------------------------------------------------------------------------------------
# Exercise 3: count tokens (numbers)
# ---------------------------------------------------------------------------------------------

COUNT_TEXT = "Tokenizers cut text into pieces; the model only ever sees their ids."


def _count_expected(text: str) -> dict[str, float]:
    bpe = ref_tok.course_bpe()
    val = load_corpus("val")
    return {
        "n_char_tokens": len(ref_tok.course_chars().encode(text)),
        "n_bpe_tokens": len(bpe.encode(text)),
        "val_chars_per_token": len(val) / len(bpe.encode(val)),
    }


def check_count_tokens(*, text: str = COUNT_TEXT, **answers: Any) -> None:
    """Token counts of `text` with the course's tokenizers, and the BPE's compression on the validation split."""
    expected = _count_expected(text)
    missing = [name for name in expected if name not in answers]
    if missing:
        raise CheckFailed(f"check_count_tokens needs an answer for {', '.join(missing)}")
    bpe = ref_tok.course_bpe()
    ids = bpe.encode(text)
    val, train = load_corpus("val"), load_corpus("train")
    n_val_tokens = len(bpe.encode(val))
    mistakes = {
        "n_char_tokens": [(len(text.split()), "that is the number of words; a character tokenizer makes one token "
                                              "per character, spaces and punctuation included"),
                          (len(set(text)), "that counts distinct characters; count every character of the text")],
        "n_bpe_tokens": [(len(text.split()), "that is the number of words (split on spaces); BPE tokens are not "
                                             "words: len(course_bpe().encode(text))"),
                         (len(set(ids)), "that counts distinct token ids; count every token, repeats included"),
                         (len(text), "that is the number of characters; BPE merges characters into longer "
                                     "tokens: len(course_bpe().encode(text))"),
                         (bpe.vocab_size, "that is the vocabulary size; count the tokens of this text")],
        "val_chars_per_token": [(n_val_tokens / len(val), "that is tokens per character; divide the number of "
                                                          "characters by the number of tokens"),
                                (len(train) / len(bpe.encode(train)), "that is the training split; use "
                                                                      "load_corpus('val')")],
    }
    hints = {"n_char_tokens": "len(course_chars().encode(text))", "n_bpe_tokens": "len(course_bpe().encode(text))",
             "val_chars_per_token": "len(val) / len(course_bpe().encode(val)), two decimals are enough"}
    check_numbers(answers, expected, tolerance={"val_chars_per_token": 0.006}, mistakes=mistakes, hints=hints,
                  integers=("n_char_tokens", "n_bpe_tokens"))


# ---------------------------------------------------------------------------------------------
# Exercise 4: the shape map
# ---------------------------------------------------------------------------------------------

SHAPE_CONFIG = (2, 7, 12, 3, 40, 50)  # B, T, d_model, n_heads, d_ff, vocab: d_head = 4, all sizes distinct
SHAPE_CONFIG_2 = (3, 4, 30, 5, 64, 17)  # d_head = 6


def _shape_sizes(B: int, T: int, d_model: int, n_heads: int, d_ff: int, vocab: int) -> dict[str, int]:
    return {"B": B, "T": T, "d_model": d_model, "H": n_heads, "d_head": d_model // n_heads, "d_ff": d_ff,
            "V": vocab}


def _wrong_shapes(**changes: Callable[..., tuple[int, ...]]) -> Callable[..., dict[str, tuple[int, ...]]]:
    """shape_map with some entries computed wrongly: changes maps an entry to f(B, T, d, H, d_head, d_ff, V)."""
    def wrong(B, T, d_model, n_heads, d_ff, vocab):
        shapes = dict(ref.shape_map(B, T, d_model, n_heads, d_ff, vocab))
        for name, f in changes.items():
            shapes[name] = f(B, T, d_model, n_heads, d_model // n_heads, d_ff, vocab)
        return shapes
    return wrong


def _qkv(f: Callable[..., tuple[int, ...]]) -> dict[str, Callable[..., tuple[int, ...]]]:
    return {"Q": f, "K": f, "V": f}


def _sa(f: Callable[..., tuple[int, ...]]) -> dict[str, Callable[..., tuple[int, ...]]]:
    return {"S": f, "A": f}


SHAPE_MAP_MISTAKES = (
    Mistake("no_head_axis",
            "the queries, keys and values have no head axis: the projection (B, T, d_model) is split into H "
            "heads of width d_head = d_model / H, with the head axis before the tokens: (B, H, T, d_head)",
            _wrong_shapes(**_qkv(lambda B, T, d, H, dh, f, V: (B, T, d)))),
    Mistake("d_model_per_head",
            "each head is d_model wide; the heads split d_model between them, so each has width "
            "d_head = d_model / H: (B, H, T, d_head)",
            _wrong_shapes(**_qkv(lambda B, T, d, H, dh, f, V: (B, H, T, d)))),
    Mistake("head_axis_after_tokens",
            "the head axis comes after the token axis; split_heads moves it in front, (B, H, T, d_head), so "
            "that each head is one (T, d_head) matrix",
            _wrong_shapes(**_qkv(lambda B, T, d, H, dh, f, V: (B, T, H, dh)))),
    Mistake("scores_T_by_d",
            "the scores (and the weights, their softmax) are T x d_head; every query is compared with every "
            "key, Q Kᵀ = (T, d_head) @ (d_head, T), so each head has a T x T matrix: (B, H, T, T)",
            _wrong_shapes(**_sa(lambda B, T, d, H, dh, f, V: (B, H, T, dh)))),
    Mistake("scores_no_head_axis",
            "the scores (and the weights) have no head axis; every head computes its own T x T matrix: "
            "(B, H, T, T)",
            _wrong_shapes(**_sa(lambda B, T, d, H, dh, f, V: (B, T, T)))),
    Mistake("output_per_head",
            "O is written per head; the attention output is the heads merged back (concatenated, H * d_head = "
            "d_model) and projected by W_O: (B, T, d_model)",
            _wrong_shapes(O=lambda B, T, d, H, dh, f, V: (B, H, T, dh))),
    Mistake("mlp_hidden_d_model",
            "the FFN's hidden layer is d_model wide; the first linear layer widens each token to d_ff: "
            "(B, T, d_ff)",
            _wrong_shapes(mlp_hidden=lambda B, T, d, H, dh, f, V: (B, T, d))),
    Mistake("mlp_hidden_4d",
            "the FFN's hidden layer is 4 d_model wide; 4 d_model is only a common choice, and this config "
            "gives d_ff: (B, T, d_ff)",
            _wrong_shapes(mlp_hidden=lambda B, T, d, H, dh, f, V: (B, T, 4 * d))),
    Mistake("block_out_d_ff",
            "the block's output is d_ff wide; the FFN projects back to d_model, and a block returns the "
            "shape it received: (B, T, d_model)",
            _wrong_shapes(block_out=lambda B, T, d, H, dh, f, V: (B, T, f))),
    Mistake("logits_no_vocab",
            "the logits are d_model wide; the LM head maps each position to one score per vocabulary "
            "entry: (B, T, V)",
            _wrong_shapes(logits=lambda B, T, d, H, dh, f, V: (B, T, d))),
    Mistake("logits_last_only",
            "the logits are given for the last position only; the model scores the next token at every "
            "position (training uses all of them): (B, T, V)",
            _wrong_shapes(logits=lambda B, T, d, H, dh, f, V: (B, V))),
)


def _as_shape(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (tuple, list, torch.Size)) and all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in value):
        return tuple(int(n) for n in value)
    raise CheckFailed(f"shape_map[{key!r}] should be a tuple of ints such as (2, 7, 12); got {value!r}")


def check_shape_map(fn: Any, *, configs: Sequence[tuple[int, ...]] = (SHAPE_CONFIG, SHAPE_CONFIG_2)) -> None:
    """shape_map(B, T, d_model, n_heads, d_ff, vocab) -> {name: shape tuple} for every key of SHAPE_MAP."""
    names = ("B", "T", "d_model", "n_heads", "d_ff", "vocab")
    for config in configs:
        sizes = _shape_sizes(*config)
        case = Case(tuple(config), sizes, names, ", ".join(f"{n}={v}" for n, v in zip(names, config)))
        got = call_learner(fn, "shape_map", case, FORBIDDEN["ex4"])
        if not isinstance(got, dict):
            raise CheckFailed(f"shape_map should return a dict {{name: shape}}; it returned a {type(got).__name__}")
        missing = [key for key in ref.SHAPE_MAP if key not in got]
        if missing:
            raise CheckFailed(f"shape_map has no entry for {', '.join(repr(k) for k in missing)}; the keys are "
                              f"{', '.join(repr(k) for k in ref.SHAPE_MAP)}")
        expected = ref.shape_map(*config)
        for key, (what, layout) in ref.SHAPE_MAP.items():
            shape = _as_shape(key, got[key])
            if shape == expected[key]:
                continue
            for mistake in SHAPE_MAP_MISTAKES:
                if mistake.impl(*config)[key] == shape:
                    raise CheckFailed(f"shape_map[{key!r}] = {named_shape(shape, sizes)} ({case.note}): "
                                      f"{mistake.message}")
            raise CheckFailed(f"shape_map[{key!r}] ({what}) is {named_shape(shape, sizes)}; expected {layout} = "
                              f"{expected[key]} ({case.note})")
    print(f"✓ shape_map: all {len(ref.SHAPE_MAP)} shapes right for {len(configs)} configurations")


# ---------------------------------------------------------------------------------------------
# Exercise 5: the tour, ids -> logits
# ---------------------------------------------------------------------------------------------


def _tour(*, positions: str = "right", final: str = "right", blocks_used: bool = True, out: str = "logits"):
    """A complete lm_forward with the given mistakes built in."""
    def wrong(ids, wte, wpe, blocks, final_norm):
        T = ids.shape[1]
        h = wte[ids]  # (B, T, d_model)
        if wpe is not None and positions == "right":
            h = h + wpe[:T]
        elif wpe is not None and positions == "by_token_id":
            h = h + wpe[ids]
        if final == "before_blocks":
            h = final_norm(h)
        for block in blocks if blocks_used else ():
            h = block(h)
        if wpe is not None and positions == "after_blocks":
            h = h + wpe[:T]
        if final == "right":
            h = final_norm(h)
        logits = h @ wte.T  # (B, T, V)
        if out == "softmax":
            return torch.softmax(logits, dim=-1)
        return logits[:, -1] if out == "last" else logits
    return wrong


TOUR_MISTAKES = (
    Mistake("no_positions",
            "the position embeddings are never added; without them the blocks cannot tell the order of "
            "the tokens: h = wte[ids] + wpe[:T] (when wpe is not None)",
            _tour(positions="none")),
    Mistake("positions_by_token_id",
            "the position table is indexed by the token ids (wpe[ids]); it is indexed by the positions "
            "0 .. T-1: wpe[:T], the same rows for every sequence",
            _tour(positions="by_token_id")),
    Mistake("positions_after_blocks",
            "the positions are added after the blocks; they join the token embeddings before the first "
            "block, so that attention can use them",
            _tour(positions="after_blocks")),
    Mistake("no_final_norm",
            "the final norm is missing; a Pre-LN model normalizes the last block's output before the LM "
            "head: final_norm(h) @ wte.T",
            _tour(final="none")),
    Mistake("final_norm_before_blocks",
            "the final norm is applied to the embeddings, before the blocks; it belongs after the last "
            "block, just before the LM head",
            _tour(final="before_blocks")),
    Mistake("blocks_skipped",
            "the blocks are never applied; h goes through every block in order, h = block(h)",
            _tour(blocks_used=False)),
    Mistake("softmax_applied",
            "these are probabilities (a softmax was applied); the model returns logits, the scores before "
            "the softmax: final_norm(h) @ wte.T",
            _tour(out="softmax")),
    Mistake("last_position_only",
            "only the last position's logits are returned, (B, V); return the logits of every position, "
            "(B, T, V): training predicts the next token at each of them",
            _tour(out="last")),
)


def _tour_variant(*, rows: Callable[[int], slice] = lambda T: slice(0, T), embed_scale: bool = False,
                  final_norms: int = 1, order: Callable[[list], list] = lambda b: b, pos_each_block: bool = False):
    """A complete lm_forward with one probe's mistake built in."""
    def wrong(ids, wte, wpe, blocks, final_norm):
        T = ids.shape[1]
        h = wte[ids] * (math.sqrt(wte.shape[1]) if embed_scale else 1.0)  # (B, T, d_model)
        if wpe is not None and not pos_each_block:
            h = h + wpe[rows(T)]
        for block in order(list(blocks)):
            if wpe is not None and pos_each_block:
                h = h + wpe[:T]
            h = block(h)
        for _ in range(final_norms):
            h = final_norm(h)
        return h @ wte.T  # (B, T, V)
    return wrong


TOUR_PROBES = _probes.probes({
    "positions_shifted": ("the position rows are shifted by one (wpe[1:T+1]); position t uses row t, so add "
                          "wpe[:T], starting at row 0", _tour_variant(rows=lambda T: slice(1, T + 1))),
    "positions_from_the_end": ("the position rows are taken from the end of the table (wpe[-T:]); position t "
                               "uses row t: wpe[:T]", _tour_variant(rows=lambda T: slice(-T, None))),
    "embeddings_scaled": ("the token embeddings are multiplied by sqrt(d_model) (the original Transformer's "
                          "convention); this model adds wte[ids] and wpe[:T] as they are",
                          _tour_variant(embed_scale=True)),
    "final_norm_twice": ("the final norm is applied twice; apply it once, after the last block",
                         _tour_variant(final_norms=2)),
    "blocks_reversed": ("the blocks run in reverse order; blocks[0] comes first, then blocks[1], and so on",
                        _tour_variant(order=lambda b: b[::-1])),
    "first_block_only": ("only the first block is applied; h goes through every block in order",
                         _tour_variant(order=lambda b: b[:1])),
    "last_block_only": ("only the last block is applied; h goes through every block in order",
                        _tour_variant(order=lambda b: b[-1:])),
    "positions_each_block": ("the positions are added before every block; add them once, to the token "
                             "embeddings, before the first block", _tour_variant(pos_each_block=True)),
})


class _Blocks(tuple):
    """The blocks handed to lm_forward: a tuple of DecoderBlocks with a short description."""

    def __repr__(self) -> str:
        return f"[{len(self)} DecoderBlocks]"


def _tour_case(gen: torch.Generator, dtype: torch.dtype, *, B: int, T: int, d_model: int, H: int, V: int,
               n_layers: int, T_max: int, positions: bool) -> Case:
    config = ref_blocks.ModelConfig(vocab_size=V, d_model=d_model, n_heads=H, n_layers=max(n_layers, 1),
                                    max_seq_len=T_max)
    with torch.random.fork_rng(devices=[]):  # module construction draws from the global generator
        blocks = _Blocks(ref_blocks.DecoderBlock(config).to(dtype).eval() for _ in range(n_layers))
        final_norm = LayerNorm(d_model).to(dtype)
    with torch.no_grad():
        for module in (*blocks, final_norm):
            for name, p in module.named_parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
                p.copy_(1 + 0.2 * noise if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                        or module is final_norm and name == "weight" else noise / math.sqrt(p.shape[-1]))
    wte = torch.randn(V, d_model, generator=gen, dtype=torch.float64).to(dtype)  # (V, d_model)
    wpe = torch.randn(T_max, d_model, generator=gen, dtype=torch.float64).to(dtype) if positions else None
    ids = torch.randint(0, min(V, T_max), (B, T), generator=gen)  # (B, T), also valid rows of wpe
    sizes = {"B": B, "T": T, "d_model": d_model, "V": V, "T_max": T_max}
    note = "with learned positions" if positions else "wpe=None (a model without positions)"
    return Case((ids, wte, wpe, blocks, final_norm), sizes, ("ids", "wte", "wpe", "blocks", "final_norm"), note)


def check_lm_forward(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2, T: int = 5,
                     d_model: int = 12, H: int = 3, V: int = 23, n_layers: int = 2, T_max: int = 32) -> None:
    """lm_forward(ids, wte, wpe, blocks, final_norm) -> logits (B, T, V), tied LM head."""
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(B=B, T=T, d_model=d_model, H=H, V=V, n_layers=n_layers, T_max=T_max)
    cases = [_tour_case(gen, dtype, positions=True, **kwargs), _tour_case(gen, dtype, positions=False, **kwargs)]
    with torch.no_grad():
        check_function(fn, name="lm_forward", reference=ref_blocks.decoder_forward, cases=cases,
                       outputs=("logits",), mistakes=TOUR_MISTAKES, forbidden=FORBIDDEN["ex5"],
                       probes=TOUR_PROBES)


# ---------------------------------------------------------------------------------------------
# Exercise 6: a permutation-equivariance test
# ---------------------------------------------------------------------------------------------


def _perm(T: int) -> torch.Tensor:
    """The catalogued answers' permutation: a fixed cyclic shift, which moves every token."""
    return torch.roll(torch.arange(T), 1)


def _equivariance_test(*, perm: str = "shift", output: str = "permuted", compare: str = "close",
                       axis: int = 1, tokens: str = "all") -> Callable[[Any, torch.Tensor], bool]:
    """A complete is_permutation_equivariant with the given mistakes built in."""
    def wrong(f, x):
        n = x.shape[axis]
        p = torch.arange(n) if perm == "identity" else _perm(n)
        moved = x.index_select(axis, p)
        with torch.no_grad():
            out, out_moved = f(x), f(moved)
        target = out.index_select(axis, p) if output == "permuted" else out
        if tokens == "first":  # WRONG: only the first token of each sequence is compared
            out_moved, target = out_moved[:, :1], target[:, :1]
        if compare == "equal":
            return torch.equal(out_moved, target)
        atol = 0.1 if compare == "loose" else 1e-5
        return torch.allclose(out_moved, target, atol=atol, rtol=1e-5)
    return wrong


PERMUTATION_MISTAKES = (
    Mistake("always_true",
            "your test says True for a model that adds learned positions, which is not permutation "
            "equivariant; permute the token axis (dim 1) with a permutation that moves tokens, then compare "
            "f(x[:, perm]) with f(x)[:, perm]",
            _equivariance_test(perm="identity")),
    Mistake("output_not_permuted",
            "your test says False for a block without positions or mask, which is permutation equivariant; "
            "the outputs come back in the new order, so compare f(x[:, perm]) with f(x)[:, perm], not with "
            "f(x)",
            _equivariance_test(output="unpermuted")),
    Mistake("exact_equality",
            "your test says False for a function that is permutation equivariant up to floating-point "
            "rounding (a token-wise map whose last bits depend on the order its tokens arrive in, as a "
            "matrix multiply's do on some CPUs); compare with a tolerance, torch.allclose(a, b, atol=1e-5), "
            "not torch.equal or ==",
            _equivariance_test(compare="equal")),
    Mistake("loose_tolerance",
            "your test says True for a function that adds 0.01 * t to token t: the tolerance is so loose "
            "that small position effects pass; use atol=1e-5, enough for rounding and nothing more",
            _equivariance_test(compare="loose")),
    Mistake("feature_axis",
            "your test permutes the feature axis (the last one); permutation equivariance is about the "
            "token axis: x[:, perm] reorders the T tokens of every sequence",
            _equivariance_test(axis=2)),
    Mistake("first_token_only",
            "your test compares only some of the output tokens (the first, say): it says True for a function "
            "that mixes one other token with its neighbour, which is not permutation equivariant; compare "
            "every token, f(x[:, perm]) with f(x)[:, perm] over the whole (B, T, d)",
            _equivariance_test(tokens="first")),
)


def _permutation_cases(seed: int, dtype: torch.dtype, B: int, T: int, d: int, H: int
                       ) -> list[tuple[Any, torch.Tensor, bool, str]]:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # module initialization draws from the global generator
        torch.manual_seed(seed)
        free = ref_blocks.DecoderBlock(ref_blocks.ModelConfig(vocab_size=2, d_model=d, n_heads=H, causal=False))
        causal = ref_blocks.DecoderBlock(ref_blocks.ModelConfig(vocab_size=2, d_model=d, n_heads=H, causal=True))
        ffn = FeedForward(d, 4 * d)
        table = torch.randn(T, d, generator=gen, dtype=torch.float64).to(dtype)
        positioned = nn.Sequential(ref.AddPositions(table), ref_blocks.DecoderBlock(
            ref_blocks.ModelConfig(vocab_size=2, d_model=d, n_heads=H, causal=False)))
        ramp = ref.AddPositions(0.01 * torch.arange(T, dtype=dtype)[:, None].expand(T, d))
    x = lambda: torch.randn(B, T, d, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    modules = [free, causal, ffn, positioned, ramp]
    for module in modules:
        module.to(dtype).eval()
    return [
        (free, x(), True, "a decoder block without positions or mask"),
        (positioned, x(), False, "a block that adds learned positions first"),
        (causal, x(), False, "a block with a causal mask"),
        (ffn, x(), True, "a position-wise FFN"),
        (ramp, x(), False, "a function that adds 0.01 * t to token t"),
        (nn.GELU(), x(), True, "an element-wise GELU"),
        (nn.ReLU(), x(), True, "an element-wise ReLU (no rounding at all)"),
        (ref.OrderSensitiveRounding(rounding := x()), rounding, True,
         "a token-wise function whose last bits depend on the order of its tokens"),
    ] + [  # a test that compares one output token i sees only positions i and perm[i]: two of each
        (ref.MixOneToken(t), x(), False, f"a function that mixes token {t} (only) with token {t - 1}")
        for t in range(1, T) for _ in range(2)
    ]


def check_permutation_test(fn: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32, B: int = 2,
                           T: int = 6, d: int = 8, H: int = 2) -> None:
    """is_permutation_equivariant(f, x) -> bool, on equivariant functions and on traps that are not."""
    cases = _permutation_cases(seed, dtype, B, T, d, H)
    sizes = {"B": B, "T": T, "d": d}

    def answers(test: Callable, learner: bool) -> list[Any]:
        out = []
        for f, x, _, what in cases:
            case = Case((f, x), sizes, ("f", "x"), what)
            result = call_learner(test, "is_permutation_equivariant", case, FORBIDDEN["ex6"]) \
                if learner else test(f, x)
            if isinstance(result, torch.Tensor) and result.numel() == 1 and result.dtype == torch.bool:
                result = bool(result.item())
            if learner and not isinstance(result, (bool, np.bool_)):
                raise CheckFailed(f"is_permutation_equivariant should return True or False; it returned "
                                  f"{type(result).__name__} {result!r} for {what}")
            out.append(bool(result))
        return out

    got = answers(fn, learner=True)
    expected = [answer for _, _, answer, _ in cases]
    if got == expected:
        print(f"✓ is_permutation_equivariant: right on all {len(cases)} functions, traps included")
        return
    for mistake in PERMUTATION_MISTAKES:
        if answers(mistake.impl, learner=False) == got:
            raise CheckFailed(f"is_permutation_equivariant: {mistake.message}")
    wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    if all(isinstance(cases[i][0], ref.MixOneToken) for i in wrong):  # another permutation than the catalogue's
        raise CheckFailed(f"is_permutation_equivariant returned True for {cases[wrong[0]][3]}: "
                          + next(m.message for m in PERMUTATION_MISTAKES if m.key == "first_token_only"))
    index = wrong[0]
    what = cases[index][3]
    if expected[index]:
        raise CheckFailed(f"is_permutation_equivariant returned False for {what}, which is permutation "
                          f"equivariant (f(x[:, perm]) equals f(x)[:, perm] up to rounding)")
    raise CheckFailed(f"is_permutation_equivariant returned True for {what}, which is not permutation "
                      f"equivariant (reordering its tokens changes more than the order of its outputs)")


# ---------------------------------------------------------------------------------------------
# Exercise 7: token budgets (numbers)
# ---------------------------------------------------------------------------------------------

BUDGET_QUESTIONS = {
    "margin_8k": 192,  # 8192 - (600 + 6000 + 400 + 1000)
    "margin_4k": -216,  # 4096 - (350 + 3200 + 250 + 512): it does not fit
    "max_retrieved": 6192,  # 8192 - 600 - 400 - 1000
    "max_chunks": 11,  # floor(6192 / (512 + 8)) = 11; 12 chunks need 6240
}

_BUDGET_MISTAKES = {
    "margin_8k": [(1192, "the output cap is part of the budget: the answer is written into the same 8192-token "
                         "window, so reserve its 1000 tokens too"),
                  (8000, "8000 is what the request uses; the margin is what is left of the 8192-token window"),
                  (-192, "the sign is flipped: the margin is window - used = 8192 - 8000")],
    "margin_4k": [(216, "the request needs 4312 tokens and the window holds 4096: it does not fit, so the "
                        "margin is negative, 4096 - 4312"),
                  (296, "the output cap is part of the budget: reserve its 512 tokens too"),
                  (0, "a request that does not fit has a negative margin: 4096 - 4312")],
    "max_retrieved": [(6191, "off by one: a request that fills the window exactly still fits (a margin of 0 "
                             "is allowed), so 8192 - 600 - 400 - 1000 = 6192"),
                      (6193, "one token too many: with 6193 retrieved tokens the request needs 8193 > 8192"),
                      (7192, "the output reservation is missing: the answer's 1000 tokens must fit as well"),
                      (6000, "6000 is the retrieved context of the lab; the question asks for the largest "
                             "that fits"),
                      (192, "192 is the margin; the largest retrieved context is 6000 + 192")],
    "max_chunks": [(12, "12 chunks need 12 x 520 = 6240 tokens, more than 6192: round down, and count each "
                        "chunk's 8 separator tokens (520 tokens a chunk)"),
                   (13, "the output reservation is missing: only 6192 tokens are free for retrieved chunks")],
}

_BUDGET_HINTS = {
    "margin_8k": "margin = window - (system + retrieved + user + output)",
    "margin_4k": "the same formula; the answer may be negative",
    "max_retrieved": "everything else is fixed: window - system - user - output",
    "max_chunks": "each chunk costs 512 + 8 tokens; how many whole chunks fit in max_retrieved?",
}


def check_token_budget(**answers: Any) -> None:
    """Margins of two requests, the largest retrieved context that fits, and whole chunks of it."""
    missing = [name for name in BUDGET_QUESTIONS if name not in answers]
    if missing:
        raise CheckFailed(f"check_token_budget needs an answer for {', '.join(missing)}")
    check_numbers(answers, BUDGET_QUESTIONS, mistakes=_BUDGET_MISTAKES, hints=_BUDGET_HINTS, integers=BUDGET_QUESTIONS)


# ---------------------------------------------------------------------------------------------
# Catalogue: every check's mistakes and probes (read by the tests and the site)
# ---------------------------------------------------------------------------------------------

PROBES = {"lm_forward": TOUR_PROBES}

MISTAKES = {
    "char_encode": CHAR_ENCODE_MISTAKES,
    "char_decode": CHAR_DECODE_MISTAKES,
    "most_frequent_pair": MOST_FREQUENT_MISTAKES,
    "merge_pair": MERGE_MISTAKES,
    "shape_map": SHAPE_MAP_MISTAKES,
    "lm_forward": TOUR_MISTAKES,
    "is_permutation_equivariant": PERMUTATION_MISTAKES,
}

protect(ref, ref_tok, ref_blocks, sys.modules[__name__])
