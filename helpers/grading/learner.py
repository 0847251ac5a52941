"""`course-grade`: grade your own exercise notebook the way the instructor's autograder will.

    course-grade exercises/01_attention/01_attention.ipynb

It runs nbgrader's autograde on a copy of your notebook in a temporary course folder, with the
hidden tests restored (their results are shown, their source never is), and prints one row per
exercise: points, passed/failed and the sentence to read. Your notebook is never modified.
Exit status: 0 when graded, 1 when nbgrader could not grade it (the kernel died), 2 when the
notebook cannot be read (not a notebook, not an assignment of this course, cells deleted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

from .course import (
    Assignment,
    GradingError,
    assignments,
    copy_assignment,
    find_course,
    nbgrader_api,
    prepare_gradebook,
)
from .results import by_exercise, read_cells, table

STUDENT = "me"


def read_notebook(path: Path) -> nbformat.NotebookNode:
    if not path.exists():
        raise GradingError(f"{path}: no such file")
    if path.is_dir():
        raise GradingError(f"{path} is a folder; give the path of the .ipynb file inside it")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GradingError(f"{path} is not a Jupyter notebook: it is not valid JSON") from None
    # The layout nbformat needs, checked first so that its internal errors never reach the learner.
    cells = raw.get("cells") if isinstance(raw, dict) else None
    if not isinstance(cells, list):
        got = ("no \"cells\" entry" if isinstance(raw, dict) and "cells" not in raw
               else f"\"cells\" is {_json_kind(cells)}" if isinstance(raw, dict) else f"the file holds {_json_kind(raw)}")
        raise GradingError(f"{path} is not a Jupyter notebook: a notebook is a JSON object whose \"cells\" is a "
                           f"list of cells; here {got}. Give the .ipynb file Jupyter saved")
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise GradingError(f"{path} is not a Jupyter notebook: cell {i} of its \"cells\" list is "
                               f"{_json_kind(cell)}, not a cell (a JSON object with a \"cell_type\")")
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as error:  # noqa: BLE001 (nbformat's own reading errors)
        raise GradingError(f"{path} is not a Jupyter notebook ({type(error).__name__}: {error})") from None
    if not isinstance(nb.get("cells"), list):
        raise GradingError(f"{path} is not a Jupyter notebook: it has no list of cells")
    return nb


def _json_kind(value) -> str:
    """How a JSON value reads in a message: 'a number (3)', 'an object', 'a string', ..."""
    if isinstance(value, dict):
        return "an object" + (" with a \"cell_type\" that is not a string" if "cell_type" in value else "")
    if isinstance(value, str):
        return f"a string ({value[:20]!r})"
    if isinstance(value, bool) or value is None:
        return f"{json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return "a list"


def _ids(nb: nbformat.NotebookNode) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}


def _matching_cells(nb: nbformat.NotebookNode, assignment: Assignment) -> int:
    """How many of the notebook's locked cells (statements, tests) are exactly the assignment's."""
    locked = {c.metadata["nbgrader"]["grade_id"]: c.source for c in assignment.source.cells
              if c.metadata.get("nbgrader", {}).get("locked")}
    return sum(1 for c in nb.cells
               if locked.get(c.get("metadata", {}).get("nbgrader", {}).get("grade_id")) == c.get("source"))


def identify(nb: nbformat.NotebookNode, path: Path, course: Path, wanted: str | None) -> Assignment:
    """The assignment whose locked cells the notebook holds; `wanted` must agree when given."""
    matches = {name: _matching_cells(nb, Assignment(course, name)) for name in assignments(course)}
    best = max(matches, key=matches.get, default=None)
    if wanted is not None:
        if wanted not in matches:
            raise GradingError(f"no assignment {wanted!r} in this course; assignments: {', '.join(matches)}")
        if matches[wanted] < matches[best]:
            raise GradingError(f"{path} is not a notebook of assignment {wanted}; its cells are those of {best}")
        return Assignment(course, wanted)
    if best is None or matches[best] == 0:
        raise GradingError(f"{path} is not an exercise notebook of this course: none of its cells belongs to "
                           f"an assignment ({', '.join(matches)}); grade the notebook you filled in from exercises/")
    return Assignment(course, best)


def deleted_cells(nb: nbformat.NotebookNode, assignment: Assignment) -> list[str]:
    ids = _ids(nb)
    needed = [*assignment.answer_cells, *assignment.points]
    return [cell for cell in assignment.source_ids if cell in needed and cell not in ids]


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """Kernels inherit file descriptor 2: keep their start-up chatter off the learner's screen."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def grade_notebook(path: Path, *, course: Path, assignment: str | None = None, timeout: int | None = None,
                   verbose: bool = False) -> tuple[Assignment, list, str | None]:
    """Grade `path` in a temporary course; returns (assignment, exercise rows, error or None)."""
    nb = read_notebook(path)
    found = identify(nb, path, course, assignment)
    missing = deleted_cells(nb, found)
    if missing:
        raise GradingError(f"{path}: cells deleted: {', '.join(missing)}. Copy them back from a fresh "
                           f"exercises/{found.name}/{found.name}.ipynb (an answer cell needs its grade id)")
    with tempfile.TemporaryDirectory(prefix="course-grade-") as tmp:
        work = copy_assignment(course, found.name, Path(tmp))
        overrides = {"Execute__timeout": timeout} if timeout else {}
        api = nbgrader_api(work, **overrides)
        with _quiet_stderr(not verbose):
            prepare_gradebook(api, course, found.name, work)
            target = work / "submitted" / STUDENT / found.name / f"{found.name}.ipynb"
            target.parent.mkdir(parents=True)
            shutil.copyfile(path, target)
            result = api.autograde(found.name, STUDENT, force=True, create=True)
        if verbose:
            print(result.get("log", ""), file=sys.stderr)
        error = None
        if not result["success"]:
            log = result.get("log", "") + result.get("error", "")
            error = ("the kernel died while running your notebook (os._exit, a crash or running out of memory)"
                     if "DeadKernelError" in log or "Kernel died" in log else "nbgrader could not grade it:\n" + log[-2000:])
        autograded = work / "autograded" / STUDENT / found.name / f"{found.name}.ipynb"
        cells = read_cells(found, api.coursedir.db_url, STUDENT, autograded)
    return found, by_exercise(cells), error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course-grade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path, help="your filled-in exercise notebook")
    parser.add_argument("--assignment", help="e.g. 01_attention (default: recognised from the notebook's cells)")
    parser.add_argument("--course", help="the course folder (default: the installed course)")
    parser.add_argument("--timeout", type=int, help="seconds per cell (default: the course's, 60)")
    parser.add_argument("--verbose", action="store_true", help="show nbgrader's log")
    args = parser.parse_args(argv)
    try:
        course = find_course(args.course) if args.course else find_course(None)
        path = args.notebook.resolve()
        assignment, rows, error = grade_notebook(path, course=course, assignment=args.assignment,
                                                 timeout=args.timeout, verbose=args.verbose)
    except GradingError as problem:
        print(f"course-grade: {problem}", file=sys.stderr)
        return 2
    print(f"{assignment.name}: {args.notebook}")
    print(table(rows))
    if error:
        print(f"\nnot graded: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
