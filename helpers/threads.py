"""torch's intra-op thread count for a block of code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with torch using `n` intra-op threads, then restore the previous count.

    Tiny models (a few thousand parameters) run several times faster on one thread than on two
    that share a busy 2-core CPU (chapter 08 measured 4 s against 53 s); results do not depend on it.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"torch_threads: n must be a positive int; got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
