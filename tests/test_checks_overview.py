"""Chapter 00's checks: they accept correct answers written independently (and in other correct styles),
name every catalogued mistake with its own message, and refuse the reference and wrappers of it."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

import helpers.blocks as reference_blocks
import helpers.checks.overview as checks
import helpers.overview as reference
import helpers.tokenizers as reference_tok
from helpers.checks import CheckFailed
from helpers.corpus import load_corpus

from . import loops_overview as loops
from .hidden import hidden_inputs

CHECKS = {
    "char_encode": lambda fn, **kw: checks.check_char_tokenizer(fn, loops.char_decode, **kw),
    "char_decode": lambda fn, **kw: checks.check_char_tokenizer(loops.char_encode, fn, **kw),
    "most_frequent_pair": checks.check_most_frequent_pair,
    "merge_pair": checks.check_merge_pair,
    "shape_map": checks.check_shape_map,
    "lm_forward": checks.check_lm_forward,
    "is_permutation_equivariant": checks.check_permutation_test,
}

# The inputs of the first hidden call of each check, read from the solution (tests/hidden.py).
HIDDEN = hidden_inputs("overview", CHECKS)
# The second hidden call of some checks: edge sizes.
HIDDEN_EDGE = hidden_inputs("overview", CHECKS, which=1)
# The mistakes the chapter's issue asked each check's catalogue to name (tests/test_catalogues.py).
ISSUE_LIST = {
    "shape_map": {"no_head_axis", "d_model_per_head", "scores_T_by_d", "logits_no_vocab"},
    "is_permutation_equivariant": {"always_true", "output_not_permuted", "exact_equality"},
}


def _other_correct_styles():
    def encode_with_index(text, vocab):
        return [vocab.index(ch) for ch in text]  # str.index raises ValueError for an unknown character

    def encode_tensor(text, vocab):
        return torch.tensor([vocab.index(ch) for ch in text], dtype=torch.long)

    def decode_join(ids, vocab):
        return "".join(map(vocab.__getitem__, ids))

    def pair_with_counter(ids):
        from collections import Counter
        counts = Counter(zip(ids, ids[1:]))
        return min(counts, key=lambda p: (-counts[p], p)) if counts else None

    def pair_as_list(ids):
        pair = loops.most_frequent_pair(ids)
        return None if pair is None else list(pair)

    def merge_with_while(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if tuple(ids[i:i + 2]) == tuple(pair):
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    def shapes_as_lists_and_sizes(B, T, d_model, n_heads, d_ff, vocab):
        q = torch.empty(B, n_heads, T, d_model // n_heads).shape  # torch.Size is a tuple
        return {"H": [B, T, d_model], "Q": q, "K": q, "V": q, "S": (B, n_heads, T, T), "A": (B, n_heads, T, T),
                "O": (B, T, d_model), "mlp_hidden": (B, T, d_ff), "block_out": (B, T, d_model),
                "logits": (np.int64(B), T, vocab), "extra": "ignored"}

    def tour_with_embedding(ids, wte, wpe, blocks, final_norm):
        h = torch.nn.functional.embedding(ids, wte)
        if wpe is not None:
            h = h + wpe[: ids.shape[1]].unsqueeze(0)
        for block in blocks:
            h = block(h)
        return torch.matmul(final_norm(h), wte.transpose(0, 1))

    def equivariance_global_rng(f, x):
        T = x.shape[1]
        perm = torch.randperm(T)
        while T > 1 and bool((perm == torch.arange(T)).any()):
            perm = torch.randperm(T)
        with torch.no_grad():
            return torch.allclose(f(x[:, perm]), f(x)[:, perm], atol=1e-5)

    def equivariance_tensor_result(f, x):
        perm = torch.roll(torch.arange(x.shape[1]), 2)
        with torch.no_grad():
            return ((f(x[:, perm]) - f(x)[:, perm]).abs().max() < 1e-5)  # a 0-d bool tensor

    yield "char_encode", encode_with_index
    yield "char_encode", encode_tensor
    yield "char_decode", decode_join
    yield "most_frequent_pair", pair_with_counter
    yield "most_frequent_pair", pair_as_list
    yield "merge_pair", merge_with_while
    yield "shape_map", shapes_as_lists_and_sizes
    yield "lm_forward", tour_with_embedding
    yield "is_permutation_equivariant", equivariance_global_rng
    yield "is_permutation_equivariant", equivariance_tensor_result


@pytest.mark.parametrize("name, answer", list(_other_correct_styles()), ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_check_accepts_other_correct_styles(name, answer, variant, capsys):
    CHECKS[name](answer, **(HIDDEN[name] if variant == "hidden" else {}))
    assert "✓" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# The permutation test's traps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer, words", [
    (lambda f, x: True, "says True for a model that adds learned positions"),
    (lambda f, x: False, "says False for a block without positions or mask"),
])
def test_constant_answers_fail(answer, words):
    with pytest.raises(CheckFailed, match=words):
        checks.check_permutation_test(answer)


def test_the_traps_hold_what_they_claim():
    """Each case's expected answer is the truth, measured with several permutations."""
    for variant in ({}, HIDDEN["is_permutation_equivariant"], HIDDEN_EDGE["is_permutation_equivariant"]):
        kwargs = {"seed": 0, "dtype": torch.float32, "B": 2, "T": 6, "d": 8, "H": 2, **variant}
        for f, x, expected, what in checks._permutation_cases(**kwargs):
            assert loops.is_permutation_equivariant(f, x) == expected, what
        # The rounding trap breaks exact equality for every permutation that moves a token, on any CPU,
        # and stays within rounding of the permuted output.
        f, x, _, what = next(c for c in checks._permutation_cases(**kwargs)
                             if c[3].startswith("a token-wise function whose last bits"))
        for perm in (torch.roll(torch.arange(x.shape[1]), 1), torch.tensor([1, 0, *range(2, x.shape[1])])):
            moved, want = f(x[:, perm]), f(x)[:, perm]
            assert not torch.equal(moved, want)
            assert (moved != want).all()
            torch.testing.assert_close(moved, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(f(x), f(x))


def _one_token_test(token: int, perm: str):
    """Compares a single output token: blind to a function that breaks equivariance at another token."""
    def test(f, x):
        T = x.shape[1]
        p = torch.roll(torch.arange(T), 1) if perm == "roll" else torch.randperm(T)
        while perm == "random" and bool((p == torch.arange(T)).any()):
            p = torch.randperm(T)
        with torch.no_grad():
            return torch.allclose(f(x[:, p])[:, token], f(x)[:, p][:, token], atol=1e-5)
    return test


@pytest.mark.parametrize("token", [0, -1], ids=["first", "last"])
@pytest.mark.parametrize("perm", ["roll", "random"])
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_a_test_that_compares_one_token_fails(token, perm, variant):
    """Functions that each mix one token with its neighbour, two at every position: a one-token comparison
    of output i sees position i and where token i came from only, even with a new permutation per call."""
    kwargs = {"visible": {}, "hidden": HIDDEN}[variant].get("is_permutation_equivariant", {})
    for seed in range(2 if perm == "random" else 1):
        torch.manual_seed(seed)
        with pytest.raises(CheckFailed, match=r"returned True for a function that mixes token \d \(only\)|"
                                              r"compares only some of the output tokens"):
            checks.check_permutation_test(_one_token_test(token, perm), **kwargs)


def test_non_boolean_result_is_refused():
    with pytest.raises(CheckFailed, match="should return True or False; it returned float"):
        checks.check_permutation_test(lambda f, x: 1.0)


def test_an_uncatalogued_wrong_answer_is_told_which_function_it_got_wrong():
    def judges_by_parameters(f, x):  # a guess, not a test
        return not any(True for _ in f.parameters())

    with pytest.raises(CheckFailed, match="returned False for a decoder block without positions or mask, which "
                                          "is permutation equivariant"):
        checks.check_permutation_test(judges_by_parameters)


# ------------------------------------------------------------------------------------------------
# Shapes, types, inputs
# ------------------------------------------------------------------------------------------------


def test_wrong_shapes_are_reported_with_axis_names():
    def wrong(B, T, d_model, n_heads, d_ff, vocab):
        shapes = loops.shape_map(B, T, d_model, n_heads, d_ff, vocab)
        shapes["O"] = (B, T, d_ff)
        return shapes

    with pytest.raises(CheckFailed, match=re.escape(
            "shape_map['O'] (attention output, heads merged) is (B, T, d_ff) = (2, 7, 40); expected "
            "(B, T, d_model) = (2, 7, 12)")):
        checks.check_shape_map(wrong)
    with pytest.raises(CheckFailed, match=re.escape(
            "logits has shape (B, T, d_model) = (2, 5, 12); expected (B, T, V) = (2, 5, 23)")):
        checks.check_lm_forward(lambda ids, wte, wpe, blocks, final_norm: wte[ids])


def test_shape_map_answer_format_problems():
    with pytest.raises(CheckFailed, match="should return a dict"):
        checks.check_shape_map(lambda *config: [(2, 7, 12)])
    with pytest.raises(CheckFailed, match="shape_map has no entry for 'A', 'logits'"):
        checks.check_shape_map(lambda *c: {k: v for k, v in loops.shape_map(*c).items() if k not in ("A", "logits")})
    with pytest.raises(CheckFailed, match=r"shape_map\['H'\] should be a tuple of ints"):
        checks.check_shape_map(lambda *c: {**loops.shape_map(*c), "H": "(B, T, d_model)"})


def test_char_tokenizer_must_refuse_unknown_characters():
    def skips(text, vocab):
        return [vocab.index(ch) for ch in text if ch in vocab]

    with pytest.raises(CheckFailed, match="unknown character was skipped or replaced without an error"):
        checks.check_char_tokenizer(skips, loops.char_decode)


def test_char_tokenizer_not_implemented_is_not_mistaken_for_raising():
    def blank(text, vocab):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not implemented yet"):
        checks.check_char_tokenizer(blank, loops.char_decode)


def test_in_place_list_changes_are_caught():
    def merge_in_place(ids, pair, new_id):
        out = loops.merge_pair(ids, pair, new_id)
        ids[:] = out
        return ids

    with pytest.raises(CheckFailed, match="merge_pair changed its input list ids"):
        checks.check_merge_pair(merge_in_place)


def test_hard_coded_visible_output_fails_hidden_inputs():
    memory = {}

    def record(B, T, d_model, n_heads, d_ff, vocab):
        return memory.setdefault("visible", loops.shape_map(B, T, d_model, n_heads, d_ff, vocab))

    with pytest.raises(CheckFailed):  # even the visible check uses two configurations
        checks.check_shape_map(record)
    frozen = loops.shape_map(*checks.SHAPE_CONFIG)
    with pytest.raises(CheckFailed):
        checks.check_shape_map(lambda *config: frozen, **HIDDEN["shape_map"])


# ------------------------------------------------------------------------------------------------
# Cheats: the reference, wrappers of it
# ------------------------------------------------------------------------------------------------


# The reference answers a check must refuse as not the learner's own (tests/test_catalogues.py).
REFERENCES = [
    ("shape_map", reference.shape_map),
    ("lm_forward", reference_blocks.decoder_forward),
    ("most_frequent_pair", reference_tok.most_frequent_pair),
    ("merge_pair", reference_tok.merge_pair),
    ("is_permutation_equivariant", reference.is_permutation_equivariant),
]


@pytest.mark.parametrize("name, answer", [
    ("shape_map", lambda *config: reference.shape_map(*config)),
    ("shape_map", functools.partial(reference.shape_map)),
    ("char_encode", lambda text, vocab: reference_tok.CharTokenizer(vocab).encode(text)),
    ("char_decode", lambda ids, vocab: reference_tok.CharTokenizer(vocab).decode(ids)),
    ("most_frequent_pair", lambda ids: reference_tok.most_frequent_pair(ids)),
    ("merge_pair", lambda ids, pair, new_id: reference_tok.merge_pair(ids, pair, new_id)),
    ("lm_forward", lambda *args: reference_blocks.decoder_forward(*args)),
    ("is_permutation_equivariant", lambda f, x: reference.is_permutation_equivariant(f, x)),
    ("shape_map", lambda *config: checks._wrong_shapes()(*config)),
], ids=["shape-ref", "shape-partial", "char-encode-ref", "char-decode-ref", "pair-ref", "merge-ref", "tour-ref",
        "perm-ref", "checks-internals"])
def test_answers_calling_the_reference_are_refused(name, answer):
    with pytest.raises(CheckFailed, match="calls|not your own function"):
        CHECKS[name](answer)


def test_patched_library_function_makes_checks_refuse():
    original = torch.allclose
    try:
        torch.allclose = lambda *a, **k: True
        with pytest.raises(CheckFailed, match="allclose was replaced"):
            checks.check_permutation_test(loops.is_permutation_equivariant)
    finally:
        torch.allclose = original


# ------------------------------------------------------------------------------------------------
# Numeric answers
# ------------------------------------------------------------------------------------------------


def _right_counts(text=checks.COUNT_TEXT):
    bpe, val = reference_tok.course_bpe(), load_corpus("val")
    return {"n_char_tokens": len(text), "n_bpe_tokens": len(bpe.encode(text)),
            "val_chars_per_token": round(len(val) / len(bpe.encode(val)), 2)}


def test_count_tokens_right_as_python_or_numpy_integers(capsys):
    right = _right_counts()
    checks.check_count_tokens(**right)
    checks.check_count_tokens(**{k: np.int64(v) if k.startswith("n_") else np.float64(v) for k, v in right.items()})
    assert capsys.readouterr().out.count("✓") == 2
    with pytest.raises(CheckFailed, match=r"^n_bpe_tokens is a 0-d tensor \(\d+\); a count is a Python int"):
        checks.check_count_tokens(**{**right, "n_bpe_tokens": torch.tensor(right["n_bpe_tokens"])})
    with pytest.raises(CheckFailed, match=r"^n_char_tokens is a float \(\d+\.0\); a count is an int"):
        checks.check_count_tokens(**{**right, "n_char_tokens": float(right["n_char_tokens"])})


def test_count_tokens_names_each_wrong_count():
    text, right = checks.COUNT_TEXT, _right_counts()
    bpe = reference_tok.course_bpe()
    val, train = load_corpus("val"), load_corpus("train")
    for key, value, words in [
        ("n_bpe_tokens", len(text.split()), "number of words"),
        ("n_bpe_tokens", len(set(bpe.encode(text))), "distinct token ids"),
        ("n_bpe_tokens", len(text), "number of characters"),
        ("n_bpe_tokens", 512, "vocabulary size"),
        ("n_char_tokens", len(text.split()), "number of words"),
        ("val_chars_per_token", len(bpe.encode(val)) / len(val), "tokens per character"),
        ("val_chars_per_token", len(train) / len(bpe.encode(train)), "training split"),
        ("n_bpe_tokens", right["n_bpe_tokens"] + 1, "is not right; len(course_bpe().encode(text))"),
    ]:
        with pytest.raises(CheckFailed, match=re.escape(words)):
            checks.check_count_tokens(**{**right, key: value})
    with pytest.raises(CheckFailed, match="needs an answer for val_chars_per_token"):
        checks.check_count_tokens(n_char_tokens=1, n_bpe_tokens=1)


RIGHT_BUDGET = {"margin_8k": 192, "margin_4k": -216, "max_retrieved": 6192, "max_chunks": 11}


def test_token_budget_right_and_each_known_wrong_value(capsys):
    checks.check_token_budget(**RIGHT_BUDGET)
    checks.check_token_budget(**{k: np.int64(v) for k, v in RIGHT_BUDGET.items()})
    assert capsys.readouterr().out.count("✓") == 2
    with pytest.raises(CheckFailed, match=r"^max_chunks is a float \(11.0\); a count is an int: use //"):
        checks.check_token_budget(**{**RIGHT_BUDGET, "max_chunks": 11.0})
    for key, wrongs in checks._BUDGET_MISTAKES.items():
        for value, message in wrongs:
            with pytest.raises(CheckFailed, match=re.escape(message)):
                checks.check_token_budget(**{**RIGHT_BUDGET, key: value})
    with pytest.raises(CheckFailed, match="needs an answer for max_chunks"):
        checks.check_token_budget(margin_8k=192, margin_4k=-216, max_retrieved=6192)


def test_budget_answers_agree_with_the_reference_arithmetic():
    assert RIGHT_BUDGET == checks.BUDGET_QUESTIONS == {
        "margin_8k": reference.remaining_tokens(8192, system=600, retrieved=6000, user=400, output=1000),
        "margin_4k": reference.remaining_tokens(4096, system=350, retrieved=3200, user=250, output=512),
        "max_retrieved": reference.largest_retrieved_context(8192, system=600, user=400, output=1000),
        "max_chunks": reference.largest_retrieved_context(8192, chunk_tokens=520, system=600, user=400,
                                                          output=1000) // 520,
    }


def test_a_list_result_says_what_it_has_in_common_with_the_right_one():
    with pytest.raises(CheckFailed, match="that is the right result in reverse order"):
        checks.check_char_tokenizer(lambda text, vocab: [vocab.index(c) for c in reversed(text)], loops.char_decode)
    with pytest.raises(CheckFailed, match="the last element is missing"):
        checks.check_char_tokenizer(lambda text, vocab: [vocab.index(c) for c in text[:-1]], loops.char_decode)


def test_a_wrong_pair_is_not_called_reversed():
    """(2, 1) for (1, 2) is what the least frequent pair gives on the first list: no 'reverse order' there."""
    def least_frequent(ids):
        counts = {}
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + 1
        return min(counts, key=lambda p: (counts[p], p))

    with pytest.raises(CheckFailed) as info:
        checks.check_most_frequent_pair(least_frequent)
    assert "returned (2, 1)" in str(info.value) and "reverse" not in str(info.value)


def test_lm_forward_probes_name_the_tour_step():
    with pytest.raises(CheckFailed, match=r"position rows are shifted by one"):
        checks.check_lm_forward(lambda ids, wte, wpe, blocks, final_norm: loops.lm_forward(
            ids, wte, None if wpe is None else wpe[1:], blocks, final_norm))
