"""Every chapter's checks module has one layout, and declares once what each exercise forbids.

The layout (CONTRIBUTING.md, "Checks modules"), in banner sections of three comment lines:

    # Forbidden: ...        FORBIDDEN = {"ex1": (...), ...}, and ALLOWED_REFERENCE_BY_EXERCISE if any
    # Shared: ...           zero or more: pieces several exercises' mistakes or checks use
    # Exercise 1: ...       one per exercise the solution's test cells check with this module, in order:
    # Exercise 2: ...       that exercise's mistakes, probes, inputs and checks
    # Catalogue: ...        MISTAKES and PROBES, read by the tests and the site

`FORBIDDEN[ex]` is the one declared set of what exercise `ex` may not call or be: every check of
that exercise passes it (and nothing else) as its `forbidden` argument, and course-scan reads the
same dict (tests/test_scan.py).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import types
from collections.abc import Mapping

import pytest

from helpers.checks import CheckFailed
from helpers.grading.course import exercise_of
from tools.build import CONTENT

CELL = re.compile(r'^# %%(?: \[markdown\])? id="([^"]+)"([^\n]*)\n(.*?)(?=^# %%|\Z)', re.S | re.M)
IMPORT = re.compile(r"from helpers\.checks\.(\w+) import \(?([\w,\s]+)\)?")
DASHES = re.compile(r"^# -{20,}$")
TITLE = re.compile(r"^(Forbidden|Shared|Exercise (\d+[a-z]?)|Catalogue): \S")


def _chapters() -> dict[str, str]:
    """topic -> chapter (attention -> 01_attention), for every solution source."""
    return {p.stem.split("_", 1)[1]: p.stem for p in sorted(CONTENT.joinpath("solutions").glob("[0-9][0-9]_*.py"))}


TOPICS = _chapters()


@functools.cache
def exercise_checks(topic: str) -> dict[str, set[str]]:
    """exercise -> the names its test cells import from helpers.checks.<topic> (check_*, recheck_*)."""
    text = CONTENT.joinpath("solutions", f"{TOPICS[topic]}.py").read_text()
    found: dict[str, set[str]] = {}
    for cell_id, header, body in CELL.findall(text):
        if 'kind="test"' not in header:
            continue
        for module, names in IMPORT.findall(body):
            if module == topic:
                checks = {n for n in re.split(r"[\s,]+", names) if re.match(r"(re)?check_", n)}
                found.setdefault(exercise_of(cell_id), set()).update(checks)
    return {ex: names for ex, names in found.items() if names}


def _exercise_key(ex: str) -> tuple[int, str]:
    number = re.match(r"ex(\d+)([a-z]?)", ex)
    return int(number.group(1)), number.group(2)


@functools.cache
def sections(topic: str) -> list[tuple[str, int, int]]:
    """(title, first line, last line) of each banner section of helpers/checks/<topic>.py."""
    lines = inspect.getsource(importlib.import_module(f"helpers.checks.{topic}")).splitlines()
    starts = [(lines[i + 1][2:], i + 1) for i in range(len(lines) - 2)
              if DASHES.match(lines[i]) and DASHES.match(lines[i + 2]) and lines[i + 1].startswith("# ")]
    return [(title, start, (starts[k + 1][1] - 1 if k + 1 < len(starts) else len(lines)))
            for k, (title, start) in enumerate(starts)]


def section_of(topic: str, line: int) -> str | None:
    for title, first, last in sections(topic):
        if first <= line <= last:
            return title
    return None


def exercise_of_section(title: str | None) -> str | None:
    match = TITLE.match(title or "")
    return f"ex{match.group(2)}" if match and match.group(2) else None


def _module(topic):
    return importlib.import_module(f"helpers.checks.{topic}")


@functools.cache
def _tree(topic) -> ast.Module:
    return ast.parse(inspect.getsource(_module(topic)))


@pytest.mark.parametrize("topic", TOPICS)
def test_sections_come_in_the_one_order(topic):
    titles = [title for title, _, _ in sections(topic)]
    assert titles, f"helpers/checks/{topic}.py has no banner sections"
    bad = [t for t in titles if not TITLE.match(t)]
    assert not bad, f"section titles must start with Forbidden:, Shared:, Exercise N: or Catalogue:; got {bad}"
    kinds = [TITLE.match(t).group(1).split()[0] for t in titles]
    assert kinds[0] == "Forbidden" and kinds.count("Forbidden") == 1, titles
    assert kinds[-1] == "Catalogue" and kinds.count("Catalogue") == 1, titles
    middle = kinds[1:-1]
    shared = middle.count("Shared")
    assert middle[:shared] == ["Shared"] * shared and "Shared" not in middle[shared:], \
        f"Shared sections come before the exercises: {titles}"
    exercises = [exercise_of_section(t) for t in titles[1 + shared:-1]]
    assert exercises == sorted(exercises, key=_exercise_key) and len(set(exercises)) == len(exercises), titles
    assert set(exercises) == set(exercise_checks(topic)), \
        f"one Exercise section per exercise that the solution checks with this module: " \
        f"expected {sorted(exercise_checks(topic), key=_exercise_key)}, got {exercises}"


@pytest.mark.parametrize("topic", TOPICS)
def test_each_check_is_defined_in_its_exercise_section(topic):
    where = {node.name: section_of(topic, node.lineno) for node in _tree(topic).body
             if isinstance(node, ast.FunctionDef)}
    misplaced = {name: where.get(name) for ex, names in exercise_checks(topic).items() for name in names
                 if exercise_of_section(where.get(name)) != ex}
    assert not misplaced, f"checks outside their exercise's section: {misplaced}"
    loose = [name for name, title in where.items()
             if re.match(r"(re)?check_", name) and exercise_of_section(title) is None]
    assert not loose, f"public checks outside every Exercise section: {loose}"


@pytest.mark.parametrize("topic", TOPICS)
def test_forbidden_declares_every_exercise_once(topic):
    module = _module(topic)
    assert isinstance(getattr(module, "FORBIDDEN", None), Mapping), f"helpers.checks.{topic} declares no FORBIDDEN dict"
    assert set(module.FORBIDDEN) == set(exercise_checks(topic)), \
        f"FORBIDDEN's keys: expected {sorted(exercise_checks(topic))}, got {sorted(module.FORBIDDEN)}"
    assert all(isinstance(items, tuple) for items in module.FORBIDDEN.values())
    assert set(getattr(module, "ALLOWED_REFERENCE_BY_EXERCISE", {})) <= set(module.FORBIDDEN)
    declared = [node for node in _tree(topic).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                and any(isinstance(t, ast.Name) and t.id in {"FORBIDDEN", "ALLOWED_REFERENCE_BY_EXERCISE"}
                        for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))]
    assert all(section_of(topic, node.lineno).startswith("Forbidden:") for node in declared)
    # no second declaration: the old per-exercise dict and module-level forbidden tuples are gone
    others = [name for name in vars(module) if name != "FORBIDDEN" and
              (name == "FORBIDDEN_BY_EXERCISE" or re.search(r"FORBIDDEN$|^_?REFERENCE$", name))]
    assert not others, f"forbidden sets declared outside FORBIDDEN: {others}"


def _forbidden_takers(module) -> set[str]:
    """Module-level names (functions imported or defined in the module) that take a `forbidden` argument."""
    takers = set()
    for name, value in vars(module).items():
        if callable(value) and not isinstance(value, type):
            try:
                if "forbidden" in inspect.signature(value).parameters:
                    takers.add(name)
            except (TypeError, ValueError):
                pass
    return takers


def _forbidden_argument(call: ast.Call, fn) -> ast.AST | None:
    """The expression a call passes as `fn`'s `forbidden` parameter (None when it uses the default)."""
    for keyword in call.keywords:
        if keyword.arg == "forbidden":
            return keyword.value
    params = list(inspect.signature(fn).parameters)
    index = params.index("forbidden")
    return call.args[index] if index < len(call.args) else None


def _subscript_key(node: ast.AST) -> str | None:
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "FORBIDDEN" \
            and isinstance(node.slice, ast.Constant):
        return node.slice.value
    return None


@pytest.mark.parametrize("topic", TOPICS)
def test_every_forbidden_argument_is_its_exercises_declared_set(topic):
    """Each call that hands a `forbidden` set to the core passes FORBIDDEN["exN"] from inside exercise N's
    section (plus answer dicts, which are data, not code), or passes on its own `forbidden` parameter."""
    module = _module(topic)
    takers = _forbidden_takers(module)
    tree = _tree(topic)
    problems = []

    def visit(node: ast.AST, params: set[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            params = {a.arg for a in node.args.args + node.args.kwonlyargs}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in takers:
            arg = _forbidden_argument(node, getattr(module, node.func.id))
            ex = exercise_of_section(section_of(topic, node.lineno))
            where = f"line {node.lineno} ({node.func.id})"
            if arg is None:
                problems.append(f"{where}: passes no forbidden set")
            elif isinstance(arg, ast.Name) and arg.id == "forbidden" and "forbidden" in params:
                pass  # passed on: the caller's call is checked in its turn
            else:
                extra = []
                if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add) and isinstance(arg.right, ast.Tuple):
                    extra, arg = arg.right.elts, arg.left
                key = _subscript_key(arg)
                if key is None or key != ex:
                    problems.append(f"{where}: passes {ast.unparse(arg)} in section {ex or 'outside an exercise'}")
                for element in extra:
                    value = getattr(module, element.id, None) if isinstance(element, ast.Name) else None
                    if value is None or callable(value) or isinstance(value, types.ModuleType):
                        problems.append(f"{where}: adds {ast.unparse(element)} to FORBIDDEN[{key!r}]; declare "
                                        f"code to forbid in FORBIDDEN itself")
        for child in ast.iter_child_nodes(node):
            visit(child, params)

    visit(tree, set())
    stray = [(node.lineno, _subscript_key(node)) for node in ast.walk(tree) if _subscript_key(node)
             and _subscript_key(node) != exercise_of_section(section_of(topic, node.lineno))]
    assert not stray, f"FORBIDDEN[ex] used outside exercise ex's section (line, ex): {stray}"
    assert not problems, "\n".join(problems)


def _stand_in(item):
    """A function that *is* the forbidden item (for a module: its first public function defined there)."""
    if isinstance(item, types.ModuleType):
        for name in sorted(getattr(item, "__all__", None) or dir(item)):
            value = getattr(item, name)
            if inspect.isfunction(value) and value.__module__.startswith(item.__name__) and not name.startswith("_"):
                return value
        return None
    return item if callable(item) else None


def _refusals():
    for topic in TOPICS:
        module = _module(topic)
        for ex, names in exercise_checks(topic).items():
            for name in sorted(names):
                check = getattr(module, name)
                first = next(iter(inspect.signature(check).parameters.values()))
                if first.kind is inspect.Parameter.VAR_KEYWORD or first.default is not inspect.Parameter.empty:
                    continue  # a check of answers (numbers, names), not of a function
                for index, item in enumerate(getattr(module, "FORBIDDEN", {}).get(ex, ())):
                    if _stand_in(item) is not None:
                        yield pytest.param(topic, name, ex, index, id=f"{topic}-{ex}-{name}-{index}")


@pytest.mark.parametrize("topic, name, ex, index", list(_refusals()))
def test_each_declared_item_is_refused_by_its_exercises_checks(topic, name, ex, index):
    """Handing a check exercise ex's forbidden item itself as the answer is refused: the declared set is
    the one the check enforces."""
    module = _module(topic)
    check = getattr(module, name)
    answer = _stand_in(module.FORBIDDEN[ex][index])
    positional = [p for p in inspect.signature(check).parameters.values()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty]
    with pytest.raises(CheckFailed, match="not your own function"):
        check(*[answer] * len(positional))
