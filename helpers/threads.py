"""torch's intra-op thread count: for a block of code, and chosen by measurement.

    with torch_threads(1):                      # one thread inside, the old count restored after
        ...
    with fastest_threads(probe) as n:           # n = the count under which probe() ran fastest
        ...                                     # (the learner's count is restored after, even on error)

**Why one thread often wins for the course's models.** torch runs an operation on several threads
by opening an OpenMP parallel region: the calling thread hands slices of the work to the others and
waits at a barrier until all are done. That hand-off costs a few microseconds when the other cores
are idle, and a whole scheduler time slice (milliseconds) when another process holds the core the
helper thread needs. A training step of a small model is hundreds of small operations (tools/
bench_training.py counts them), each too small to gain much from a second core, so on a busy 2-core
machine the waits dominate and two threads run several times slower than one; on idle cores, two
threads pay off only for the larger operations. Which count is faster depends on the model and on the
machine's load at that moment, so `train` and `generate` measure it (`choose_threads`) instead of guessing,
and stay on one thread without measuring when the load average already reaches the CPU count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["choose_threads", "fastest_threads", "machine_is_busy", "thread_candidates", "torch_threads"]


def _require_count(fn: str, n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{fn}: n must be a positive int; got {n!r}")
    return n


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with torch using `n` intra-op threads, then restore the previous count.

    Tiny models (a few thousand parameters) run several times faster on one thread than on two
    that share a busy 2-core CPU (chapter 08 measured 4 s against 53 s); results do not depend on it.
    """
    _require_count("torch_threads", n)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_is_busy() -> bool:
    """True when the 1-minute load average (runnable threads, this process's included) reaches the CPU
    count: other programs already keep every core busy, and a second torch thread would wait for one."""
    if not hasattr(os, "getloadavg"):
        return False
    return os.getloadavg()[0] >= (os.cpu_count() or 1)


def thread_candidates(current: int | None = None) -> list[int]:
    """The counts worth trying: one thread, two, and the current setting (never more than it); only
    one thread when the machine is busy (`machine_is_busy`), where a timing probe is mostly noise."""
    n = torch.get_num_threads() if current is None else _require_count("thread_candidates", current)
    if machine_is_busy():
        return [1]
    return sorted({1, min(2, n), n})


def choose_threads(probe: Callable[[], object], candidates: list[int] | None = None, *, rounds: int = 3,
                   margin: float = 0.9) -> int:
    """The thread count under which probe() runs fastest; the current count is restored afterwards.

    probe: a short, representative piece of the work (one forward and backward pass, one decoding
    step); it runs once untimed, then `rounds` times per candidate in interleaved order (1, 2, 1, 2),
    so a change in the machine's load hits every candidate alike; each candidate keeps its fastest
    time. More threads are chosen only when they beat one thread by `margin` (10 % by default):
    one thread is the safer choice on a shared machine, and a run on one thread does not depend on
    how a parallel reduction splits its work.
    """
    candidates = thread_candidates() if candidates is None else sorted({_require_count("choose_threads", n)
                                                                        for n in candidates})
    if candidates == [1]:
        return 1
    before = torch.get_num_threads()
    best = {n: float("inf") for n in candidates}
    try:
        probe()  # warm-up: first-call allocations and kernel selection
        for _ in range(rounds):
            for n in candidates:
                torch.set_num_threads(n)
                start = time.perf_counter()
                probe()
                best[n] = min(best[n], time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    fastest = min(candidates, key=lambda n: best[n])
    if fastest != 1 and 1 in best and best[fastest] > margin * best[1]:
        return 1
    return fastest


@contextmanager
def fastest_threads(probe: Callable[[], object] | None, threads: int | None = None) -> Iterator[int]:
    """Run a block on the thread count `choose_threads(probe)` measures (or on `threads` when given);
    yields the count; the learner's own setting is restored afterwards, also when the block raises.

    probe None (work on a GPU, where the CPU's thread count does not matter) keeps the current count.
    """
    before = torch.get_num_threads()
    try:
        if threads is not None:
            n = _require_count("fastest_threads", threads)
        else:
            n = before if probe is None else choose_threads(probe)
        torch.set_num_threads(n)
        yield n
    finally:
        torch.set_num_threads(before)
