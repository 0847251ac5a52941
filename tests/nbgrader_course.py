"""A throwaway copy of the course for grading round trips: generate, submit, autograde, feedback."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import nbformat

from tools.build import ROOT, nbgrader_env

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


class Course:
    def __init__(self, folder: Path) -> None:
        self.root = folder
        shutil.copy(ROOT / "nbgrader_config.py", folder)
        shutil.copytree(ROOT / "solutions", folder / "solutions")

    def nbgrader(self, *args: str) -> subprocess.CompletedProcess:
        run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=self.root, env=nbgrader_env(),
                             capture_output=True, text=True)
        return run

    def release(self, assignment: str) -> nbformat.NotebookNode:
        run = self.nbgrader("generate_assignment", assignment, "--force")
        assert run.returncode == 0, run.stderr
        return nbformat.read(str(self.root / "exercises" / assignment / f"{assignment}.ipynb"), as_version=4)

    def submit(self, student: str, assignment: str, nb: nbformat.NotebookNode) -> None:
        target = self.root / "submitted" / student / assignment / f"{assignment}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))


def solution_answers(assignment: str) -> dict[str, str]:
    """Each answer cell's code as a learner who solved it would write it: the markers removed."""
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    answers = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            lines = [line for line in cell.source.splitlines() if line.strip() not in (BEGIN, END)]
            answers[cell.id] = "\n".join(lines)
    return answers


def filled_in(released: nbformat.NotebookNode, answers: dict[str, str],
              edits: dict[str, Callable[[str], str]] | None = None) -> nbformat.NotebookNode:
    """The released notebook with answer cells replaced by `answers`, then `edits` applied (any cell)."""
    nb = copy.deepcopy(released)
    for cell in nb.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    for cell_id, edit in (edits or {}).items():
        cell = next(c for c in nb.cells if c.id == cell_id)
        cell.source = edit(cell.source)
    return nb


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(source: str) -> str:
        assert old in source, f"{old!r} not found in {source!r}"
        return source.replace(old, new)
    return edit
