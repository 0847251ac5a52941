"""Mask-shape advice agrees across chapters: it depends on the rank of the scores the learner is in.

Scores (B, T_q, T_k) (chapter 01) take a key-padding mask (B, 1, T_k); per-head scores
(B, H, T_q, T_k) (chapter 02 on) take (B, 1, 1, T_k). Every check message and every exercise
notebook text that states a key-padding mask's shape also states the scores' layout it is for, and
the two agree.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
import torch

import helpers.checks
from helpers.attention import padding_mask, scaled_dot_product_attention
from helpers.checks import heads as ch02
from helpers.checks.conventions import (
    _SHAPES_ADVICE,
    key_padding_advice,
    key_padding_shape,
    rewrite_mask_advice,
)
from helpers.checks.core import CheckFailed, Mistake

SOLUTIONS = Path(__file__).resolve().parent.parent / "content" / "solutions"

PAD3 = re.compile(r"\(B, 1, T\w*\)")  # a key-padding mask for 3-D scores
PAD4 = re.compile(r"\(B, 1, 1, T\w*\)")  # ... for per-head scores
SCORES3 = re.compile(r"\(B, T\w*, T\w*\)")
SCORES4 = re.compile(r"\(B, H, T\w*, T\w*\)")


def disagreement(text: str) -> str | None:
    """Why `text` states a key-padding mask's shape without the scores' layout it is for."""
    if PAD3.search(text) and not SCORES3.search(text):
        return f"{PAD3.search(text).group()} without the scores (B, T_q, T_k) it is for"
    if PAD4.search(text) and not SCORES4.search(text):
        return f"{PAD4.search(text).group()} without the per-head scores (B, H, T_q, T_k) it is for"
    return None


def test_rank_decides_the_key_padding_shape():
    assert key_padding_shape(3) == "(B, 1, T_k)"
    assert key_padding_shape(4) == "(B, 1, 1, T_k)"
    assert key_padding_shape(4, keys="T_src") == "(B, 1, 1, T_src)"
    assert disagreement(key_padding_advice(3)) is None and disagreement(key_padding_advice(4)) is None
    with pytest.raises(ValueError):
        key_padding_shape(2)


def _shapes_error(q: torch.Tensor, mask: torch.Tensor) -> str:
    with pytest.raises(Exception) as info:
        scaled_dot_product_attention(q, q, q, mask)
    return str(info.value)


def test_helpers_shapes_gives_the_advice_for_the_rank_of_the_scores():
    """The reference functions' own error (a learner calling helpers directly, a theory notebook)."""
    mask3 = padding_mask(torch.tensor([3, 5]), 5)  # (B, 1, T_k): right for 3-D scores, not per head
    four = _shapes_error(torch.zeros(2, 3, 5, 4), mask3)
    assert "(B, H, T_q, T_k); a key-padding mask for scores (B, H, T_q, T_k) has shape (B, 1, 1, T_k)" in four
    assert disagreement(four) is None and not PAD3.search(four)
    three = _shapes_error(torch.zeros(2, 5, 4), torch.ones(3, 5, 5, dtype=torch.bool))
    assert "(B, T_q, T_k); a key-padding mask for scores (B, T_q, T_k) has shape (B, 1, T_k)" in three
    assert disagreement(three) is None and not PAD4.search(three)
    five = _shapes_error(torch.zeros(2, 2, 3, 5, 4), mask3)  # no layout of the course: both are named
    assert PAD3.search(five) and PAD4.search(five) and disagreement(five) is None
    assert _SHAPES_ADVICE in four  # what rank_aware_mask_advice completes


def test_per_head_advice_in_a_check_also_says_how_to_get_it_from_chapter_01():
    four = _shapes_error(torch.zeros(2, 3, 5, 4), padding_mask(torch.tensor([3, 5]), 5))
    rewritten = rewrite_mask_advice(four)
    assert "has shape (B, 1, 1, T_k) (chapter 01's padding_mask gives (B, 1, T_k)" in rewritten
    assert rewrite_mask_advice(rewritten) == rewritten  # once only
    three = _shapes_error(torch.zeros(2, 5, 4), torch.ones(3, 5, 5, dtype=torch.bool))
    assert rewrite_mask_advice(three) == three


def test_chapter_02_learner_who_reshapes_the_mask_reads_per_head_advice():
    """A learner who adds a head axis to a mask that has one already (chapter 01's habit)."""
    namespace: dict = {}
    exec(textwrap.dedent("""
        from helpers.attention import scaled_dot_product_attention

        def multi_head_attention(x, w_q, w_k, w_v, w_o, n_heads, mask=None):
            B, T, d_model = x.shape
            q, k, v = ((x @ w.T).reshape(B, T, n_heads, -1).transpose(1, 2) for w in (w_q, w_k, w_v))
            heads, weights = scaled_dot_product_attention(q, k, v, None if mask is None else mask[:, None])
            return heads.transpose(1, 2).reshape(B, T, d_model) @ w_o.T, weights
    """), namespace)
    with pytest.raises(CheckFailed) as info:
        ch02.check_multi_head_attention(namespace["multi_head_attention"])
    message = str(info.value)
    assert "a key-padding mask for scores (B, H, T_q, T_k) has shape (B, 1, 1, T_k)" in message
    assert "has shape (B, 1, T_k)" not in message


def _catalogued_messages() -> list[tuple[str, str]]:
    found = []
    for info in pkgutil.iter_modules(helpers.checks.__path__):
        module = importlib.import_module(f"helpers.checks.{info.name}")
        for name, value in vars(module).items():
            entries = value.values() if isinstance(value, dict) else [value]
            for entry in entries:
                if isinstance(entry, tuple) and entry and all(isinstance(m, Mistake) for m in entry):
                    found += [(f"{info.name}.{name}.{m.key}", m.message) for m in entry]
    return sorted(set(found))


def test_catalogued_messages_state_mask_shapes_with_their_rank():
    messages = _catalogued_messages()
    assert len(messages) > 100
    assert any(PAD3.search(text) for _, text in messages) and any(PAD4.search(text) for _, text in messages)
    problems = [f"{where}: {disagreement(text)}" for where, text in messages if disagreement(text)]
    assert not problems, "\n".join(problems)


def _notebook_texts() -> list[tuple[str, str]]:
    """Each markdown cell of the exercise notebooks' sources, its hints taken out as texts of their own."""
    texts = []
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.py")):
        for cell in re.split(r"^# %%", path.read_text(), flags=re.M):
            if not cell.startswith(" [markdown]"):
                continue
            text = "\n".join(line[2:] for line in cell.splitlines()[1:] if line.startswith("#"))
            hints = re.findall(r"<details>.*?</details>", text, flags=re.S)
            body = re.sub(r"<details>.*?</details>", "", text, flags=re.S)
            texts += [(f"{path.stem}: {cell.splitlines()[0].strip()}", part) for part in (body, *hints)]
    return texts


def test_exercise_notebooks_state_mask_shapes_with_their_rank():
    texts = _notebook_texts()
    assert any(PAD3.search(text) for _, text in texts) and any(PAD4.search(text) for _, text in texts)
    problems = [f"{where}: {disagreement(text)}" for where, text in texts if disagreement(text)]
    assert not problems, "\n".join(problems)
