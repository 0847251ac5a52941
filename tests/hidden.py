"""The hidden tests' check calls, read from the solution sources: the one place they are written.

Each `### BEGIN HIDDEN TESTS` block of content/solutions/NN_topic.py calls checks such as

    check_causal_mask(causal_mask, sizes=(9, 2, 1))

`hidden_calls("attention")` returns every such call of a learner's function (the names passed
positionally, the keyword arguments evaluated), in the order of the notebook; the catalogue tests
(tests/test_catalogues.py) run every catalogued mistake against each of them, and a chapter's check
tests take the first call of a check as "the hidden inputs". Calls that pass only answers
(`check_mask_names(A=mask_A, ...)`) hold no inputs of the check's own and are left out.
"""

from __future__ import annotations

import ast
import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tools.build import CONTENT

HIDDEN_BLOCK = re.compile(r"^### BEGIN HIDDEN TESTS\n(.*?)^### END HIDDEN TESTS", re.S | re.M)
NAMES = {"torch": torch, "math": math}  # what the hidden tests' arguments may name


@dataclass(frozen=True)
class HiddenCall:
    check: str  # the check's name: check_causal_mask
    answers: tuple[str, ...]  # the learner's functions passed to it: ("causal_mask",)
    kwargs: Mapping[str, Any]  # its inputs: {"sizes": (9, 2, 1)}
    line: int  # where it is in the solution source

    def __str__(self) -> str:
        return f"{self.check}({', '.join(self.answers)}, ...) at line {self.line}"


def chapter_of(topic: str) -> str:
    """attention -> 01_attention."""
    (source,) = CONTENT.joinpath("solutions").glob(f"[0-9][0-9]_{topic}.py")
    return source.stem


@functools.cache
def hidden_calls(topic: str) -> tuple[HiddenCall, ...]:
    path = CONTENT / "solutions" / f"{chapter_of(topic)}.py"
    text = path.read_text()
    calls = []
    for block in HIDDEN_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        for node in ast.walk(ast.parse(block.group(1))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("check_")
                    and node.args and all(isinstance(arg, ast.Name) for arg in node.args)):
                continue
            kwargs = {kw.arg: eval(compile(ast.Expression(kw.value), str(path), "eval"), dict(NAMES))  # noqa: S307
                      for kw in node.keywords}
            calls.append(HiddenCall(node.func.id, tuple(arg.id for arg in node.args), kwargs,
                                    first_line + node.lineno - 1))
    return tuple(sorted(calls, key=lambda call: call.line))


def calls_of(topic: str, name: str, check: Callable) -> list[HiddenCall]:
    """The hidden calls that test the learner's function `name` with `check` (the check a chapter's
    tests call it with: the notebook's own check, or a wrapper that passes other answers too)."""
    return [call for call in hidden_calls(topic)
            if call.check == getattr(check, "__name__", None) or name in call.answers]


def hidden_inputs(topic: str, checks: Mapping[str, Callable], which: int = 0) -> dict[str, dict[str, Any]]:
    """name -> the keyword arguments of hidden call number `which` (0: the first) of each check in
    `checks` that has one."""
    found = {name: calls_of(topic, name, check) for name, check in checks.items()}
    return {name: dict(calls[which].kwargs) for name, calls in found.items() if len(calls) > which}
