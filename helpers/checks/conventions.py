"""Advice about mask shapes that depends on the rank the learner is working in.

Chapter 01 computes scores `(B, T_q, T_k)`, and its key-padding mask is `(B, 1, T_k)`; from
chapter 02 on the scores are per head, `(B, H, T_q, T_k)`, and the same mask needs a head axis,
`(B, 1, 1, T_k)`. Every message that tells a learner a mask's shape takes it from here, with the
rank of the scores in the case that failed, so the chapters never contradict each other.

The layouts themselves are `helpers.shapes`' (its mask error already gives the advice for the
scores' rank); `rank_aware_mask_advice` adds, in a check's failure message about per-head scores,
how to get that mask from chapter 01's `padding_mask`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from ..shapes import key_padding_shape, mask_advice, scores_layout
from .core import CheckFailed, protect

__all__ = ["key_padding_advice", "key_padding_shape", "rank_aware_mask_advice", "scores_layout"]


def key_padding_advice(rank: int, keys: str = "T_k", queries: str = "T_q", *, from_chapter_01: bool = True) -> str:
    """One clause: which shape a key-padding mask has for scores of this rank (for per-head scores,
    and `from_chapter_01`, how to get it from chapter 01's padding_mask)."""
    advice = (f"a key-padding mask for scores {scores_layout(rank, keys, queries)} has shape "
              f"{key_padding_shape(rank, keys)}")
    if rank == 4 and from_chapter_01:
        advice += (f" (chapter 01's padding_mask gives (B, 1, {keys}), made for scores (B, {queries}, {keys}): "
                   f"add the head axis with [:, None])")
    return advice


# helpers.shapes.require_bool_mask's advice for per-head scores.
_SHAPES_ADVICE = mask_advice(4)


def rewrite_mask_advice(message: str) -> str:
    """`message` with helpers.shapes' advice for per-head scores completed by how to get that mask
    from chapter 01's padding_mask."""
    if _SHAPES_ADVICE not in message or key_padding_advice(4) in message:
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
