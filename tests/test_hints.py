"""Every collapsed hint of an exercise notebook whose title quotes an error quotes one the learner
can actually get: for each such hint, the mistake it is about (written here) is run through the
check or torch, and the error text must contain the title's quoted text.

The hints are read from the notebooks' sources, so a new error-titled hint without a mistake here
fails `test_every_error_titled_hint_has_a_mistake`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helpers.checks import diagnostics as ch09
from helpers.checks import ffn as ch03
from helpers.checks import heads as ch02

SOLUTIONS = Path(__file__).resolve().parent.parent / "content" / "solutions"
SUMMARY = re.compile(r"<details><summary>Hint:\s*(.*?)</summary>")
# A title quotes an error when it names an exception (RuntimeError, CheckFailed, ...) or an error,
# or quotes a message in double quotes ("the test says "in bits"").
ERROR_TITLE = re.compile(r"\b\w+Error\b|\bCheckFailed\b|\berror\b|\"[^\"]+\"", re.IGNORECASE)
EXCEPTION_NAME = re.compile(r"\b(\w+Error|CheckFailed)\b")


def error_titled_hints() -> list[tuple[str, str]]:
    """(chapter, title) for every error-titled hint in content/solutions/*.py."""
    found = []
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.py")):
        for title in SUMMARY.findall(path.read_text()):
            if ERROR_TITLE.search(title):
                found.append((path.stem, title.strip()))
    return found


def error_text(run: Callable[[], object]) -> str:
    """`TypeName: message` of what `run` raises (it must raise)."""
    try:
        run()
    except Exception as error:  # noqa: BLE001 - any error the learner could see
        return f"{type(error).__name__}: {error}"
    raise AssertionError("the mistake raised nothing")


def _normalize(text: str) -> str:
    return " ".join(text.split())


def quoted_parts(title: str) -> list[str]:
    """The text quoted in the title, split at "…" / "..." elisions."""
    quotes = re.findall(r"\"([^\"]+)\"", title)
    return [_normalize(part) for quote in quotes for part in re.split(r"…|\.\.\.(?!,)", quote) if part.strip()]


def contains_in_order(text: str, parts: list[str]) -> bool:
    position = 0
    for part in parts:
        found = text.find(part, position)
        if found < 0:
            return False
        position = found + len(part)
    return True


# ---------------------------------------------------------------------------------------------
# The mistakes: (chapter, hint title) -> a call that makes the mistake the hint is about
# ---------------------------------------------------------------------------------------------


def _merge_heads_with_view(x):
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).view(B, T, H * d_head)  # the mistake: .view after a transpose


def _gqa_without_repeat(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, mask=None):
    from helpers.attention import scaled_dot_product_attention

    B, T, d_model = x.shape
    d_head = d_model // n_heads
    q = (x @ w_q.T).reshape(B, T, n_heads, d_head).transpose(1, 2)
    k = (x @ w_k.T).reshape(B, T, n_kv_heads, d_head).transpose(1, 2)  # the mistake: H_kv heads, not repeated
    v = (x @ w_v.T).reshape(B, T, n_kv_heads, d_head).transpose(1, 2)
    heads, weights = scaled_dot_product_attention(q, k, v, mask)
    return heads.transpose(1, 2).reshape(B, T, d_model) @ w_o.T, weights


def _feed_forward_untransposed(x, w1, b1, w2, b2):
    return torch.nn.functional.gelu(x @ w1 + b1) @ w2 + b2  # the mistake: x @ w instead of x @ w.T


MISTAKES: dict[tuple[str, str], Callable[[], object]] = {
    ("02_heads", "RuntimeError \"view size is not compatible with input tensor's size and stride\""):
        lambda: ch02.check_merge_heads(_merge_heads_with_view),
    ("02_heads", "ShapeError \"k must be (..., T_k, d_k) with the same leading axes\""):
        lambda: ch02.check_grouped_query_attention(_gqa_without_repeat),
    ("03_ffn", "RuntimeError \"mat1 and mat2 shapes cannot be multiplied (… and 11x6)\""):
        lambda: ch03.check_feed_forward(_feed_forward_untransposed),
    ("09_diagnostics", "the test says \"in bits\""):
        lambda: ch09.check_diagnostics_numbers(max_entropy_1024=math.log2(1024), causal_max_query_9=math.log(10),
                                               leak_test_passes=129),
}


def test_the_notebooks_have_error_titled_hints():
    assert len(error_titled_hints()) >= 4


@pytest.mark.parametrize(("chapter", "title"), error_titled_hints())
def test_every_error_titled_hint_has_a_mistake(chapter, title):
    assert (chapter, title) in MISTAKES, (
        f"{chapter}: the hint titled {title!r} quotes an error; add the mistake it is about to MISTAKES in "
        f"{Path(__file__).name}, so that this test can check that the learner can get that error")


@pytest.mark.parametrize(("chapter", "title"), sorted(MISTAKES))
def test_hint_title_quotes_the_error_its_mistake_gives(chapter, title):
    assert (chapter, title) in error_titled_hints(), f"{chapter} has no hint titled {title!r} any more"
    parts = quoted_parts(title)
    assert parts, f"the hint titled {title!r} names an error but quotes none of its text"
    text = _normalize(error_text(MISTAKES[chapter, title]))
    assert contains_in_order(text, parts), f"the hint quotes {parts}, but the mistake gives: {text}"
    for name in EXCEPTION_NAME.findall(title):
        assert name in text, f"the hint names {name}, but the mistake gives: {text}"


def test_quoted_parts_and_matching():
    assert quoted_parts('RuntimeError "mat1 and mat2 (… and 11x6)"') == ["mat1 and mat2 (", "and 11x6)"]
    assert contains_in_order("x mat1 and mat2 (10x6 and 11x6) y", ["mat1 and mat2 (", "and 11x6)"])
    assert not contains_in_order("mat1 and mat2 (10x6 and 12x6)", ["mat1 and mat2 (", "and 11x6)"])
    assert ERROR_TITLE.search("a shape error mentioning (11, 6)")  # error-titled, but quotes nothing
    assert not quoted_parts("a shape error mentioning (11, 6)")
    assert not ERROR_TITLE.search("the weights are right but the output is not")
