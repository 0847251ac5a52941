"""Numeric answers the exercise says to compute from given variables: re-run the learner's cells
with other values of those variables and require the answers that follow from them.

A hidden test calls `recheck_with_other_sizes` after the visible check has accepted the answers.
In a notebook (nbgrader runs it top to bottom in one IPython kernel) the executed cell sources are
in IPython's history; the cells after the last run of the read-only sizes cell (found by its first
line), up to the current cell, are run again in a *copy* of the learner's namespace in which the
sizes variables hold other, consistent values, without the statements that call the visible check
and without the cells that call the hidden test (that is, the current cell). Functions defined before the sizes cell (the
learner's helpers from earlier exercises) stay available; those defined in the re-run cells read
the new sizes. The learner's namespace, the printed output and the random generators are left as
they were. The cells come from the record `core` keeps from the checks' import on (IPython's history is
empty when cells run with store_history=False, as nbval runs them), else from the history. Outside
IPython (plain pytest) pass the cell sources as `cells=`.
"""

from __future__ import annotations

import ast
import contextlib
import io
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .core import CELLS, CheckFailed, protect, verify_environment

__all__ = ["recheck_with_other_sizes"]


def _plain(value: Any) -> Any:
    """Mappings (the chapters keep their sizes in read-only MappingProxyType) as the dicts the notebook has."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    else:
        yield prefix


def _get(value: Any, path: tuple) -> Any:
    for k in path:
        value = value[k]
    return value


def _with(value: Any, path: tuple, new: Any) -> Any:
    """A plain copy of `value` with the entry at `path` replaced."""
    if not path:
        return new
    out = _plain(value)
    out[path[0]] = _with(value[path[0]], path[1:], new)
    return out


def _label(path: tuple) -> str:
    return path[0] + "".join(f"[{k!r}]" for k in path[1:])


def _number(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _matches(value: Any, target: float, tol: float) -> bool:
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return abs(float(value) - target) <= tol


def _show(value: Any) -> str:
    value = _number(value)
    return repr(value) if isinstance(value, str) else str(value)


def _depends(name: str, path: tuple, original: Mapping, variant: Mapping,
             expected_for: Callable[[Mapping[str, Any]], Mapping[str, float]], tol: float) -> bool:
    """Whether answer `name` depends on the size at `path`: changing that size alone, in the variant
    (back to the notebook's value) or in the notebook's sizes (to the variant's), changes the answer.
    One size alone may make the sizes inconsistent (d_model no longer divisible by n_heads): such a
    change tells nothing; if neither can be computed, the size counts as used."""
    old, new = _get(original, path), _get(variant, path)
    if old == new:
        return False
    decided = False
    for base, changed in ((variant, _with(variant, path, old)), (original, _with(original, path, new))):
        try:
            before, after = expected_for(base)[name], expected_for(changed)[name]
        except Exception:  # noqa: BLE001 - the reference refuses inconsistent sizes
            continue
        if abs(after - before) > tol:
            return True
        decided = True
    return not decided


_CELLS = CELLS  # the cells run since the checks were imported (core records them)


def _history_cells(marker: str) -> list[str]:
    """The cells run after the last run of the sizes cell (the current cell last): from this module's
    record of the cells, else from IPython's history."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the course
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    histories = [_CELLS, list(shell.user_ns.get("In") or ())] if shell is not None else []
    if not any(histories):
        raise CheckFailed("this test re-runs your cells and needs the notebook's cell history: run the notebook "
                          "in Jupyter (an IPython kernel), from the top")
    for history in histories:
        starts = [i for i, source in enumerate(history) if source.lstrip().startswith(marker)]
        if starts:
            return list(history[starts[-1] + 1:])
    raise CheckFailed(f"the read-only sizes cell (it starts with {marker!r}) has not been run in this kernel: "
                      "run the notebook from the top")


def _user_namespace() -> dict:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise CheckFailed("this test re-runs your cells and needs the notebook's namespace: run the notebook in "
                          "Jupyter (an IPython kernel), from the top")
    return shell.user_ns


@contextlib.contextmanager
def _quiet_and_restored() -> Iterator[None]:
    """No printed output or warnings; the random generators as they were."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _calls(node: ast.AST, names: Sequence[str]) -> bool:
    """Whether `node` calls a function named in `names` (as a name or an attribute) anywhere."""
    return any(isinstance(n, ast.Call) and (getattr(n.func, "id", None) in names or getattr(n.func, "attr", None)
                                            in names) for n in ast.walk(node))


def _without_calls(source: str, checks: Sequence[str], tests: Sequence[str]) -> Any:
    """The cell compiled without its top-level statements that call one of `checks`; None for a cell
    that calls one of `tests`. A cell that does not parse is compiled as it is (and raises)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source  # exec raises the SyntaxError, reported as the cell's error
    if _calls(tree, tests):
        return None
    tree.body = [statement for statement in tree.body if not _calls(statement, checks)]
    return compile(tree, "<your cell>", "exec")


def _and(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _first_line(source: str) -> str:
    lines = [line.strip() for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    return lines[0] if lines else source.strip()[:60]


def _run(rerun: Sequence[tuple[str, Any]], namespace: Mapping[str, Any], sizes: Mapping[str, Any],
         scope: dict | None = None) -> list[tuple[int, Exception]]:
    """Run the cells in `scope` (a copy of `namespace` with the `sizes`), quietly; the errors, by cell."""
    scope = dict(namespace) if scope is None else scope
    scope.update({key: _plain(value) for key, value in sizes.items()})
    errors = []
    with _quiet_and_restored():
        for i, (_, code) in enumerate(rerun):
            try:
                exec(code, scope)  # noqa: S102 - the learner's own cell
            except Exception as error:  # noqa: BLE001 - any error of the learner's code is reported
                errors.append((i, error))
    return errors


def _cells_to_rerun(cells: Sequence[str], checks: Sequence[str], tests: Sequence[str]) -> list[tuple[str, Any]]:
    """(source, code) of each cell to re-run: the visible check's calls left out, a cell that calls a
    hidden test's function left out whole (see _without_calls), empty cells skipped."""
    return [(source, code) for source in cells if source.strip()
            for code in [_without_calls(source, checks, tests)] if code is not None]


def _variant_problems(names: Sequence[str], rerun: Sequence[tuple[str, Any]], namespace: Mapping[str, Any], *,
                      original: Mapping[str, Any], variant: Mapping[str, Any],
                      expected_for: Callable[[Mapping[str, Any]], Mapping[str, float]],
                      expected_here: Mapping[str, float], failed_at_home: set[int],
                      tolerance: Mapping[str, float]) -> list[str]:
    """Re-run the cells with the sizes of one variant: CheckFailed for a cell that raises there (and not
    with the notebook's own sizes); else one sentence per answer in `names` that does not follow."""
    scope = dict(namespace)
    errors = [(i, e) for i, e in _run(rerun, namespace, variant, scope) if i not in failed_at_home]
    sizes_text = ", ".join(f"{_label(p)} = {_show(_get(variant, p))}" for p in _paths(variant)
                           if _get(variant, p) != _get(original, p))
    if errors:
        i, error = errors[0]
        raise CheckFailed(
            f"with other sizes ({sizes_text}) your cell that starts `{_first_line(rerun[i][0])}` raises "
            f"{type(error).__name__}: {error}. The hidden test re-runs your cells after the sizes cell "
            "with other sizes: compute each answer from the variables, without assuming the notebook's "
            "numbers")
    expected = expected_for(variant)
    problems = []
    for name in names:
        tol = tolerance.get(name, 0.0)
        got = scope.get(name)
        if _matches(got, expected[name], tol):
            continue
        uses = [p for p in _paths(original) if _depends(name, p, original, variant, expected_for, tol)]
        which = _and([f"{_label(p)} = {_show(_get(variant, p))} (not {_show(_get(original, p))})"
                      for p in uses]) or "other sizes"
        typed = " (the answer for the notebook's sizes)" if _matches(got, expected_here[name], tol) else ""
        problems.append(f"`{name}` does not follow from the sizes: with {which} it should be "
                        f"{_show(expected[name])}, and your code gives {_show(got)}{typed}.")
    return problems


def _restore(namespace: dict, before: Mapping[str, Any]) -> None:
    """Undo what a magic in a re-run cell (%time, %%capture), which runs in the real namespace, changed."""
    if namespace.keys() != before.keys() or any(namespace[k] is not v for k, v in before.items()):
        namespace.clear()
        namespace.update(before)


def recheck_with_other_sizes(
    names: Sequence[str],
    *,
    sizes_marker: str,
    original: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    expected_for: Callable[[Mapping[str, Any]], Mapping[str, float]],
    checks: Sequence[str] = (),
    tests: Sequence[str] = (),
    tolerance: Mapping[str, float] | None = None,
    cells: Sequence[str] | None = None,
    namespace: Mapping[str, Any] | None = None,
) -> None:
    """Re-run the learner's cells with each of `variants` as the sizes and check `names` against
    `expected_for(variant)`; raise CheckFailed naming every answer that does not follow.

    `original` holds the sizes the notebook's read-only cell sets (variable name -> value; a value
    may be a dict of sizes); each variant has the same variables with other values. Statements that
    call one of `checks` (the visible check) are left out of the re-run cells, and cells that call one
    of `tests` (the hidden test's function: this cell, and earlier runs of it) are left out whole.
    `cells` and `namespace` replace IPython's history and user namespace (for tests).
    """
    tolerance = tolerance or {}
    verify_environment()
    if namespace is None:
        namespace = _user_namespace()
    if cells is None:
        cells = _history_cells(sizes_marker)
    rerun = _cells_to_rerun(cells, checks, tests)
    for variant in variants:
        if set(variant) != set(original):
            raise ValueError(f"a variant must set the same variables as the sizes cell: {sorted(original)}")
    before = dict(namespace)
    expected_here = expected_for(original)
    problems: list[str] = []
    try:
        # First with the notebook's own sizes: a cell that raises there raised in the notebook too (a
        # scratch cell with a typo): its error is not the other sizes' doing and does not count.
        failed_at_home = {i for i, _ in _run(rerun, namespace, original)}
        for variant in variants:
            problems = _variant_problems(names, rerun, namespace, original=original, variant=variant,
                                         expected_for=expected_for, expected_here=expected_here,
                                         failed_at_home=failed_at_home, tolerance=tolerance)
            if problems:
                break
    finally:
        _restore(namespace, before)
    verify_environment()
    if problems:
        raise CheckFailed(" ".join(problems) + " Compute each answer from the variables rather than typing the "
                          "number: the hidden test re-runs your cells after the sizes cell with other sizes.")


protect(sys.modules[__name__])
