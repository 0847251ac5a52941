"""`course-grade`, the learner's own grader: nbgrader's autograde with the hidden tests, in a
temporary course, from any working directory, never touching the learner's file."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.grading.course import alembic_head, copy_assignment, nbgrader_api, prepare_gradebook
from tools.build import ROOT, chapters, nbgrader_env

from .nbgrader_course import filled_in, put, replace, solution_answers

pytestmark = pytest.mark.slow

CHAPTER = "01_attention"
RELEASED = ROOT / "exercises" / CHAPTER / f"{CHAPTER}.ipynb"


@pytest.fixture(autouse=True)
def _gradebook_cache(tmp_path_factory, monkeypatch):
    """Prepared gradebooks go to a folder of this test session, never to the user's cache."""
    monkeypatch.setenv("COURSE_GRADE_CACHE", str(tmp_path_factory.getbasetemp() / "gradebooks"))


def course_grade(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.grading.learner", *map(str, args)], cwd=cwd,
                          env=nbgrader_env(), capture_output=True, text=True, check=False)


def test_the_gradebook_is_stamped_with_the_revision_alembic_prints():
    """nbgrader's own `alembic heads` subprocess, replaced in-process, must give the same revision."""
    from nbgrader.dbutil import _temp_alembic_ini

    with _temp_alembic_ini("sqlite:////tmp/unused.db") as ini:
        heads = subprocess.run([str(Path(sys.executable).parent / "alembic"), "-c", ini, "heads"],
                               capture_output=True, text=True, check=True).stdout
    assert alembic_head() == heads.split()[0]


def test_a_prepared_gradebook_is_reused_only_for_the_same_source(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_GRADE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no `alembic` command: the stamp is read in-process
    from nbgrader.api import Gradebook

    def prepare(name):
        work = copy_assignment(ROOT, CHAPTER, tmp_path / name)
        if name == "edited":
            source = work / "solutions" / CHAPTER / f"{CHAPTER}.ipynb"
            source.write_text(source.read_text().replace("math.sqrt(d_k)", "math.sqrt(d_k) "))
        api = nbgrader_api(work)
        cached = prepare_gradebook(api, work, CHAPTER, work)
        with Gradebook(api.coursedir.db_url, api.coursedir.course_id) as gb:
            grade_cells = {c.name for c in gb.find_notebook(CHAPTER, CHAPTER).grade_cells}
        return cached, grade_cells, sorted(p.name for p in (tmp_path / "cache").iterdir())

    first, cells, files = prepare("first")
    assert not first and len(files) == 1 and {"ex1-test", "ex3-hidden"} <= cells
    again, cells_again, files_again = prepare("again")
    assert again and cells_again == cells and files_again == files
    edited, _, files_edited = prepare("edited")
    assert not edited and len(files_edited) == 2  # another source, another gradebook


def notebook(tmp_path, edits=None, name=f"{CHAPTER}.ipynb"):
    nb = filled_in(nbformat.read(str(RELEASED), as_version=4), solution_answers(CHAPTER), edits)
    path = tmp_path / "work" / name
    path.parent.mkdir(exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def row(output: str, exercise: str) -> str:
    """An exercise's row of the report, its wrapped feedback (lines under the feedback column) joined."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(exercise + " "))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * 32) and lines[end].strip():
        end += 1
    return " ".join(line.strip() if i else line for i, line in enumerate(lines[start:end]))


def test_a_solved_notebook_gets_every_point(tmp_path):
    path = notebook(tmp_path)
    run = course_grade(path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "total       23 / 23" in run.stdout
    assert all(" passed " in row(run.stdout, f"ex{i}") for i in range(1, 9))


def test_mistakes_and_hidden_failures_are_reported_without_hidden_source(tmp_path):
    path = notebook(tmp_path, {
        "ex2-answer": replace(" / math.sqrt(d_k)", ""),
        "ex3-answer": put("def causal_mask(T):\n"
                          "    table = {6: torch.ones(6, 6, dtype=torch.bool).tril(), 1: torch.ones(1, 1, dtype=torch.bool)}\n"
                          "    return table[T]\n")})
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    run = course_grade(path.name, cwd=path.parent)  # a relative path, from the notebook's folder
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert "0 / 3  failed" in row(run.stdout, "ex2") and "not divided by sqrt(d_k)" in row(run.stdout, "ex2")
    assert "1 / 2  partial    ✗ hidden test: CheckFailed: causal_mask raised KeyError: 9" in row(run.stdout, "ex3")
    assert "total       19 / 23" in run.stdout
    assert "BEGIN HIDDEN" not in run.stdout and "seed=5" not in run.stdout and "_weights" not in run.stdout


def test_a_crashing_kernel_is_reported(tmp_path):
    path = notebook(tmp_path, {"ex4-answer": put("import os\nos._exit(3)")})
    run = course_grade(path, cwd=tmp_path)
    assert run.returncode == 1
    assert "not graded: the kernel died" in run.stdout


def _written(text):
    def make(path):
        path.write_text(text)
        return path
    return make


def _foreign_notebook(path):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), str(path))
    return path


@pytest.mark.parametrize("make, message", [
    (_written("print('hello')\n"), "is not a Jupyter notebook: it is not valid JSON"),
    # Valid JSON in the wrong layout: named in the course's words, never as nbformat's internal errors.
    (_written('{"cells": 3}'), 'is not a Jupyter notebook: a notebook is a JSON object whose "cells" is a list of '
                               'cells; here "cells" is a number (3)'),
    (_foreign_notebook, "is not an exercise notebook of this course"),
    (lambda p: p.parent, "is a folder"),
    (lambda p: p.parent / "missing.ipynb", "no such file"),
])
def test_unreadable_input_is_named(tmp_path, make, message):
    path = make(tmp_path / "mine.ipynb")
    run = course_grade(path, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert "Error" not in run.stderr and "Traceback" not in run.stderr, run.stderr  # no library internals


@pytest.mark.parametrize("text, message", [
    ('{"cells": {"source": "x"}}', 'here "cells" is an object'),
    ('{"metadata": {}}', 'here no "cells" entry'),
    ("[1, 2]", "here the file holds a list"),
    ('{"cells": ["print(1)"]}', "cell 0 of its \"cells\" list is a string ('print(1)'), not a cell"),
    ('{"cells": [{"source": "1"}]}', 'cell 0 of its "cells" list is an object, not a cell'),
])
def test_other_wrong_layouts_are_named_in_the_courses_words(tmp_path, text, message):
    # In-process (the console script's handling is covered above): the same reader course-grade calls.
    from helpers.grading.learner import GradingError, read_notebook

    path = tmp_path / "mine.ipynb"
    path.write_text(text)
    with pytest.raises(GradingError) as error:
        read_notebook(path)
    assert str(error.value).startswith(f"{path} is not a Jupyter notebook: ") and message in str(error.value)
    assert "Error" not in str(error.value)


def test_deleted_cells_are_named(tmp_path):
    path = notebook(tmp_path, {"ex3-test": lambda s: None, "ex4-answer": lambda s: None})
    run = course_grade(path, cwd=tmp_path)
    assert run.returncode == 2
    assert "cells deleted: ex3-test, ex4-answer" in run.stderr


def test_wrong_assignment_is_named(tmp_path):
    path = notebook(tmp_path)
    run = course_grade(path, "--assignment", "99_nothing", cwd=tmp_path)
    assert run.returncode == 2 and "no assignment '99_nothing'" in run.stderr
    others = [c for c in chapters() if c != CHAPTER and (ROOT / "solutions" / c).exists()]
    if others:
        run = course_grade(path, "--assignment", others[0], cwd=tmp_path)
        assert run.returncode == 2
        assert f"is not a notebook of assignment {others[0]}; its cells are those of {CHAPTER}" in run.stderr


def test_the_console_script_works_by_path_without_an_activated_environment(tmp_path):
    """`.venv/bin/course-grade NB` with the environment's bin/ off PATH (nbgrader needs `alembic`)."""
    script = Path(sys.executable).parent / "course-grade"
    path = notebook(tmp_path)
    bare = {"HOME": str(tmp_path), "PATH": os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).exists())}
    run = subprocess.run([str(script), str(path)], cwd=tmp_path, env=bare, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "total       23 / 23" in run.stdout


def test_a_written_answer_is_left_pending_and_the_rest_is_scored(tmp_path):
    """Chapter 09's checklist (a manually graded cell): answered, it is pending for the instructor;
    left as the template, it scores 0 and says 'no answer yet'."""
    chapter = "09_diagnostics"
    released = nbformat.read(str(ROOT / "exercises" / chapter / f"{chapter}.ipynb"), as_version=4)
    answered = filled_in(released, solution_answers(chapter),
                         {"ex6-answer": put("1. Shapes: compare every tensor with the shape map.\n"
                                            "2. Masks: perturb each token; earlier outputs must not move.\n")})
    blank = filled_in(released, {cell: answer for cell, answer in solution_answers(chapter).items()
                                 if cell != "ex6-answer"})  # the checklist left as the template
    for name, nb in (("answered", answered), ("blank", blank)):
        path = tmp_path / name / f"{chapter}.ipynb"
        path.parent.mkdir()
        nbformat.write(nb, str(path))
    run = course_grade(tmp_path / "answered" / f"{chapter}.ipynb", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "- / 4  pending    pending: your instructor grades this answer by hand" in row(run.stdout, "ex6")
    assert "total       20 / 24 + 4 pending manual grading (ex6)" in run.stdout
    run = course_grade(tmp_path / "blank" / f"{chapter}.ipynb", cwd=tmp_path)
    assert "0 / 4  failed     ✗ written answer: no answer yet" in row(run.stdout, "ex6")
    assert "total       20 / 24\n" in run.stdout + "\n"
