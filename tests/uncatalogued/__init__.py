"""Wrong answers that no chapter's catalogue lists: plausible learner bugs, each tagged with what a good
message must mention (the mistake, or the first intermediate that goes wrong), as a regex.

`tests/test_uncatalogued.py` asserts that every one of them fails its check, and that the message
matches for every one not marked `named=False` (a known gap). `tools/coverage.py` counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Wrong:
    check: str  # a key of the chapter suite's CHECKS
    key: str
    impl: Callable[..., Any]
    expect: str  # regex a message naming this mistake (or its first wrong intermediate) matches
    named: bool = True  # False: a known gap, the message is generic today


CHAPTERS = tuple(sorted(p.stem for p in Path(__file__).parent.glob("ch[0-9][0-9]_*.py")))
