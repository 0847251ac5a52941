"""Derived notebooks are what the build makes from their sources; notebooks ship clean or executed."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from tools.build import CONTENT, ROOT, chapters, notebook_from_source

pytestmark = pytest.mark.slow


def test_no_derived_notebook_is_stale():
    """exercises/ is byte-for-byte what nbgrader generates now; solutions/ and notebooks/ match content/."""
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "build.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("chapter", chapters())
def test_every_chapter_has_all_three_notebooks(chapter):
    assert (CONTENT / "solutions" / f"{chapter}.py").exists()
    assert (CONTENT / "notebooks" / f"{chapter}.py").exists()
    for path in [ROOT / "notebooks" / f"{chapter}.ipynb", ROOT / "solutions" / chapter / f"{chapter}.ipynb",
                 ROOT / "exercises" / chapter / f"{chapter}.ipynb"]:
        assert path.exists(), path


@pytest.mark.parametrize("chapter", chapters())
def test_exercise_hides_solutions_and_hidden_tests(chapter):
    text = (ROOT / "exercises" / chapter / f"{chapter}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "seed=5"):
        assert marker not in text
    nb = nbformat.read(str(ROOT / "exercises" / chapter / f"{chapter}.ipynb"), as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("chapter", chapters())
def test_every_exercise_has_statement_hint_answer_visible_and_hidden_test(chapter):
    nb = notebook_from_source(CONTENT / "solutions" / f"{chapter}.py", graded=True)
    cells = {c.id: c for c in nb.cells}
    answers = [cid for cid, c in cells.items() if c.metadata["nbgrader"]["solution"]]
    assert len(answers) >= 6
    for answer in answers:
        exercise = answer.removesuffix("-answer")
        statement = cells[exercise].source
        assert "*Difficulty*" in statement and "*Time*" in statement and "<details>" in statement, exercise
        assert cells[f"{exercise}-test"].metadata["nbgrader"]["points"] > 0
        assert "### BEGIN HIDDEN TESTS" in cells[f"{exercise}-hidden"].source


@pytest.mark.parametrize("chapter", chapters())
def test_theory_notebook_is_executed_with_outputs(chapter):
    nb = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code)
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), "no plots"
    assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") for c in code)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
