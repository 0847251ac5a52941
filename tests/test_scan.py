"""The pre-grading scan: each rule fires on the code it names, and never on the solutions."""

from __future__ import annotations

import importlib
import types

import nbformat
import pytest
import torch

from helpers.grading.course import Assignment, find_course
from helpers.grading.scan import chapter_rules, scan_notebook, scan_source
from tools.build import CONTENT, ROOT, chapters

from .nbgrader_course import solution_answers

RULES = chapter_rules("01_attention").exercise("ex7")
REFERENCE, BUILTINS = RULES.reference, set(RULES.builtins)

CASES = {
    "reference_import": ["from helpers.attention import scaled_dot_product_attention",
                         "import helpers.attention as a",
                         "from helpers import attention",
                         "import helpers\nf = helpers.attention.masked_softmax"],
    "checks_import": ["import helpers.checks.attention as c", "from helpers.checks import core"],
    "torch_builtin": ["import torch.nn.functional as F\ny = F.scaled_dot_product_attention(q, k, v)",
                      "from torch.nn.functional import scaled_dot_product_attention",
                      "import torch\nm = torch.nn.MultiheadAttention(8, 2)",
                      "from torch import nn\nm = nn.MultiheadAttention(8, 2)"],
    "patching": ["torch.allclose = lambda *a, **k: True", "import numpy as np\nnp.allclose = None",
                 "setattr(torch, 'allclose', None)", "import sys\nsys.modules['helpers'] = None",
                 "torch.Tensor.sum = lambda self, *a: 0", "del torch.softmax",
                 "object.__setattr__(torch, 'softmax', None)", "__builtins__.print = None",
                 "import helpers.checks.attention as c\nc.FORBIDDEN['ex7'] = ()",
                 "from helpers.checks.attention import FORBIDDEN\ndel FORBIDDEN['ex7']"],
    "file_access": ["open('../../gradebook.db').read()", "import shutil", "import os\nos.listdir('..')",
                    "from pathlib import Path\nPath('x').write_text('y')", "x = 'submitted/alice'"],
    "process": ["import os\nos._exit(0)", "import sys\nsys.exit(1)", "exit()", "import subprocess",
                "!rm -rf /", "import os\nos.system('ls')", "%%bash"],
    "network": ["import socket", "from urllib.request import urlopen"],
    "dynamic_code": ["exec('x = 1')", "eval('1')", "__import__('os')", "import importlib"],
    "unparsable": ["def f(:\n    pass"],
    "private_name": ["from helpers.bugs import _assignment", "import helpers\nkey = helpers.bugs._assignment(0)",
                     "from helpers import bugs\nkey = bugs._assignment(0)", "import helpers.bugs._secret"],
}


@pytest.mark.parametrize("rule, source", [(rule, s) for rule, sources in CASES.items() for s in sources])
def test_rule_fires(rule, source):
    rules = {finding[0] for finding in scan_source(source, REFERENCE, BUILTINS, {"torch": "torch"})}
    assert rule in rules, rules


@pytest.mark.parametrize("source", [
    "def causal_mask(T):\n    return torch.ones(T, T, dtype=torch.bool).tril()",
    "class M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.w = torch.nn.Parameter(torch.ones(2))",
    "out = torch.softmax(scores, dim=-1)\nout.data = out.data * 1",
    "import math\nscale = 1 / math.sqrt(64)",
    "from helpers.attention import scaled_dot_product_attention as sdpa",  # fine in a later chapter
])
def test_ordinary_code_is_not_flagged(source):
    rules = chapter_rules("02_heads").exercise("ex3")
    assert scan_source(source, rules.reference, set(rules.builtins), {"torch": "torch"}) == []


@pytest.mark.parametrize("chapter", [c for c in chapters() if (CONTENT / "solutions" / f"{c}.py").exists()])
def test_solutions_raise_no_finding(chapter):
    assignment = Assignment(find_course(ROOT), chapter)
    nb = nbformat.read(str(ROOT / "exercises" / chapter / f"{chapter}.ipynb"), as_version=4)
    answers = solution_answers(chapter)
    for cell in nb.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    assert scan_notebook(nb, assignment, "perfect") == []


def test_chapter_rules_come_from_the_checks_module():
    assert REFERENCE == "helpers.attention"
    assert {"scaled_dot_product_attention", "MultiheadAttention"} <= BUILTINS
    heads = chapter_rules("02_heads")  # F.scaled_dot_product_attention is allowed in ex3, not in ex4
    assert "scaled_dot_product_attention" not in heads.exercise("ex3").builtins
    assert {"scaled_dot_product_attention", "MultiheadAttention"} <= heads.exercise("ex4").builtins
    assert heads.exercise("ex1").builtins == set()
    ffn = chapter_rules("03_ffn")
    assert ffn.exercise("ex1").builtins == {"gelu", "GELU"} and ffn.exercise("ex2").builtins == set()
    added = ffn.exercise("-")  # a cell a student added: every exercise's rules at once
    assert {"gelu", "GELU"} <= added.builtins and added.reference == "helpers.ffn"


_PUBLIC = (("torch.nn.functional", torch.nn.functional), ("torch.special", torch.special), ("torch", torch),
           ("torch.Tensor", torch.Tensor))


def _written(item) -> str | None:
    """Source that uses a forbidden item the way an answer would write it: a torch function by its public
    dotted path, a torch module's method through its class, a course function through its module, a
    module by importing it. None for data (an answer dict)."""
    if isinstance(item, types.ModuleType):
        return f"import {item.__name__}"
    if not callable(item):
        return None
    module, qualname = getattr(item, "__module__", "") or "", item.__qualname__
    if module.startswith("helpers."):
        return f"import {module}\ny = {module}.{qualname}"
    if module.startswith("torch.nn.modules"):  # nn.MultiheadAttention.forward
        return f"import torch\nm = torch.nn.{qualname.split('.')[0]}(8, 2)"
    for prefix, space in _PUBLIC:
        for name in dir(space):
            if not name.startswith("_") and getattr(space, name, None) is item:
                return f"import torch\ny = {prefix}.{name}(x)"
    raise AssertionError(f"no public name for {item!r}")


def _declared():
    for chapter in chapters():
        topic = chapter.split("_", 1)[1]
        forbidden = getattr(importlib.import_module(f"helpers.checks.{topic}"), "FORBIDDEN", {})
        for ex, items in forbidden.items():
            for index, item in enumerate(items):
                if _written(item):
                    yield pytest.param(chapter, ex, index, id=f"{chapter}-{ex}-{index}")


@pytest.mark.parametrize("chapter, ex, index", list(_declared()))
def test_every_item_an_exercise_declares_forbidden_is_flagged_there(chapter, ex, index):
    """The checks module's FORBIDDEN[ex] is the one declaration: what the check refuses at run time, the
    scan flags in that exercise's answer cells."""
    topic = chapter.split("_", 1)[1]
    item = importlib.import_module(f"helpers.checks.{topic}").FORBIDDEN[ex][index]
    rules = chapter_rules(chapter).exercise(ex)
    found = {f[0] for f in scan_source(_written(item), rules.references, set(rules.builtins), {}, rules.allowed,
                                       rules.forbidden_helpers)}
    assert found & {"torch_builtin", "reference_import"}, (_written(item), found)


def test_a_torch_builtin_is_flagged_only_where_its_exercise_forbids_it():
    ffn = chapter_rules("03_ffn")
    source = "import torch.nn.functional as F\ny = F.gelu(x)"

    def rules_of(ex):
        rules = ffn.exercise(ex)
        return {f[0] for f in scan_source(source, rules.references, set(rules.builtins), {}, rules.allowed)}
    assert rules_of("ex1") == {"torch_builtin"} and rules_of("ex2") == set()


def test_a_reference_function_an_exercise_allows_is_not_flagged():
    ffn = chapter_rules("03_ffn")
    source = "from helpers.ffn import top_k_route"
    ex7, ex6 = ffn.exercise("ex7"), ffn.exercise("ex6")
    assert scan_source(source, ex7.references, set(), {}, ex7.allowed) == []
    assert scan_source(source, ex6.references, set(), {}, ex6.allowed)[0][0] == "reference_import"


def test_course_functions_a_chapter_forbids_are_flagged_by_name():
    overview = chapter_rules("00_overview").exercise("ex5")
    assert "helpers.blocks.decoder_forward" in overview.forbidden_helpers

    def rules_of(source):
        return {f[0] for f in scan_source(source, overview.references, set(), {}, (), overview.forbidden_helpers)}
    assert rules_of("from helpers.blocks import decoder_forward") == {"reference_import"}
    assert rules_of("import helpers.blocks\nlogits = helpers.blocks.decoder_forward(model, ids)") == {"reference_import"}
    assert rules_of("from helpers.blocks import DecoderBlock") == set()


def test_the_bug_hunt_flags_checkup_and_the_builders_but_not_the_plumbing():
    """Chapter 09 ex4: find_bug runs on the learner's diagnostics; the scan names what the check refuses."""
    rules = chapter_rules("09_diagnostics").exercise("ex4")

    def rules_of(source):
        return {f[0] for f in scan_source(source, rules.references, set(), {"bugs": "helpers.bugs"},
                                          rules.allowed, rules.forbidden_helpers)}
    assert rules_of("card = bugs.checkup(model)") == {"reference_import"}
    assert rules_of("twin = bugs.broken_model('mask_leak')") == {"reference_import"}
    assert rules_of("from helpers.diagnostics import leak_test") == {"reference_import"}
    assert rules_of("stream = helpers.diagnostics.residual_stream(model, ids)") == set()
    assert rules_of("from helpers.diagnostics import residual_stream") == set()
