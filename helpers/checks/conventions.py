"""Advice about mask shapes that depends on the rank the learner is working in.

Chapter 01 computes scores `(B, T_q, T_k)`, and its key-padding mask is `(B, 1, T_k)`; from
chapter 02 on the scores are per head, `(B, H, T_q, T_k)`, and the same mask needs a head axis,
`(B, 1, 1, T_k)`. Every message that tells a learner a mask's shape takes it from here, with the
rank of the scores in the case that failed, so the chapters never contradict each other.

`helpers.shapes` words its mask error for 3-D scores (it is imported by the theory notebooks and
not changed here); `rank_aware_mask_advice` rewrites that advice, in a check's failure message,
for the rank of the scores named in the error.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

from .core import CheckFailed, protect

__all__ = ["key_padding_advice", "key_padding_shape", "rank_aware_mask_advice", "scores_layout"]


def scores_layout(rank: int, keys: str = "T_k", queries: str = "T_q") -> str:
    """The scores' axes for this rank: (B, T_q, T_k), or per head (B, H, T_q, T_k)."""
    if rank == 4:
        return f"(B, H, {queries}, {keys})"
    if rank == 3:
        return f"(B, {queries}, {keys})"
    return f"(..., {queries}, {keys})"


def key_padding_shape(rank: int, keys: str = "T_k") -> str:
    """The shape of a key-padding mask that broadcasts against scores of this rank."""
    if rank == 4:
        return f"(B, 1, 1, {keys})"
    if rank == 3:
        return f"(B, 1, {keys})"
    raise ValueError(f"no key-padding mask layout for scores of rank {rank}")


def key_padding_advice(rank: int, keys: str = "T_k", queries: str = "T_q", *, from_chapter_01: bool = True) -> str:
    """One clause: which shape a key-padding mask has for scores of this rank (for per-head scores,
    and `from_chapter_01`, how to get it from chapter 01's padding_mask)."""
    advice = (f"a key-padding mask for scores {scores_layout(rank, keys, queries)} has shape "
              f"{key_padding_shape(rank, keys)}")
    if rank == 4 and from_chapter_01:
        advice += (f" (chapter 01's padding_mask gives (B, 1, {keys}), made for scores (B, {queries}, {keys}): "
                   f"add the head axis with [:, None])")
    return advice


# The advice in helpers.shapes.require_bool_mask's error, which is written for 3-D scores.
_SHAPES_ADVICE = "a key-padding mask for (B, T_q, T_k) scores has shape (B, 1, T_k), a causal mask (T_q, T_k)"
_SCORES_SHAPE = re.compile(r"to the scores' shape \(([\d, ]+)\)")


def rewrite_mask_advice(message: str) -> str:
    """`message` with helpers.shapes' 3-D mask advice replaced by the advice for the scores' rank."""
    if _SHAPES_ADVICE not in message:
        return message
    found = _SCORES_SHAPE.search(message)
    if found is None:
        return message
    rank = len([d for d in found.group(1).split(",") if d.strip()])
    if rank != 4:
        return message
    return message.replace(_SHAPES_ADVICE, f"{key_padding_advice(4)}, a causal mask (T_q, T_k)")


@contextlib.contextmanager
def rank_aware_mask_advice() -> Iterator[None]:
    """Around a check: a failure that quotes helpers.shapes' mask advice gets the advice for its rank."""
    try:
        yield
    except CheckFailed as failure:
        rewritten = rewrite_mask_advice(str(failure))
        if rewritten == str(failure):
            raise
        raise CheckFailed(rewritten) from None


protect(sys.modules[__name__])
