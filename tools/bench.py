"""Measure the budgets (pyproject.toml [tool.course.budgets]; a benchmark, not a test: nothing here asserts a time).

    python tools/bench.py                # every chapter
    python tools/bench.py 01_attention   # one chapter

For each chapter it prints the seconds to execute the theory notebook and the solution notebook
(a fresh kernel each, as a learner's "Restart and run all"), and the seconds `nbgrader autograde`
takes to grade the solution as one submission in a temporary copy of the course, followed by the
machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import tomllib
import torch
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.grading.fastimport import nbgrader_command  # noqa: E402
from tools.build import ROOT, chapters, nbgrader_env  # noqa: E402

BUDGETS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["course"]["budgets"]  # seconds


def budget(chapter: str) -> int:
    """The budget of each of a chapter's notebooks: its own, else every notebook's."""
    return BUDGETS.get(chapter, BUDGETS["notebook"])


def execute_seconds(path: Path) -> float:
    nb = nbformat.read(str(path), as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def autograde_seconds(chapter: str) -> tuple[float, float]:
    """(seconds for `nbgrader autograde` of one submission, its score out of the maximum)."""
    from nbgrader.api import Gradebook

    with tempfile.TemporaryDirectory() as tmp:
        course = Path(tmp)
        shutil.copy(ROOT / "nbgrader_config.py", course)
        shutil.copytree(ROOT / "solutions" / chapter, course / "solutions" / chapter)
        run = lambda *args: subprocess.run(nbgrader_command(*args), cwd=course,  # noqa: E731
                                           env=nbgrader_env(), capture_output=True, text=True, check=True)
        run("generate_assignment", chapter, "--force")
        submitted = course / "submitted" / "bench" / chapter
        submitted.mkdir(parents=True)
        shutil.copy(ROOT / "solutions" / chapter / f"{chapter}.ipynb", submitted)
        start = time.perf_counter()
        run("autograde", chapter, "--force")
        seconds = time.perf_counter() - start
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
            submission = gb.find_submission(chapter, "bench")
            return seconds, f"{submission.score:g}/{submission.max_score:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*")
    selected = parser.parse_args().chapters or chapters()
    rows = []
    for chapter in selected:
        theory = ROOT / "notebooks" / f"{chapter}.ipynb"
        solution = ROOT / "solutions" / chapter / f"{chapter}.ipynb"
        t_theory = execute_seconds(theory) if theory.exists() else float("nan")
        t_solution = execute_seconds(solution) if solution.exists() else float("nan")
        t_grade, score = autograde_seconds(chapter) if solution.exists() else (float("nan"), "-")
        rows.append((chapter, t_theory, t_solution, t_grade, score))
    print("| chapter | theory notebook (s) | solution notebook (s) | autograde one submission (s) | score | budget (s) |")
    print("|---|---|---|---|---|---|")
    for chapter, t_theory, t_solution, t_grade, score in rows:
        print(f"| {chapter} | {t_theory:.1f} | {t_solution:.1f} | {t_grade:.1f} | {score} | {budget(chapter)} |")
    total = sum(r[1] + r[2] for r in rows)
    print(f"\nwhole course, theory + solution notebooks: {total:.1f} s (budget {BUDGETS['course']} s)")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
