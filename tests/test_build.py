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
        if cells[answer].metadata["nbgrader"]["grade"]:  # a written answer, graded by hand: no test cells
            assert cells[answer].metadata["nbgrader"]["points"] > 0
            continue
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


def test_executed_notebooks_record_the_helpers_they_import():
    """The record follows imports through helpers' own modules: chapter 00 imports helpers.overview,
    which imports helpers.blocks, which imports chapter 01-04's modules."""
    from tools.build import DEPENDS_KEY, dependency_record

    nb = nbformat.read(str(ROOT / "notebooks" / "00_overview.ipynb"), as_version=4)
    record = dependency_record(nb)
    assert {"helpers/__init__.py", "helpers/overview.py", "helpers/blocks.py", "helpers/attention.py",
            "helpers/norms.py"} <= set(record["helpers"])
    assert "helpers/checks/core.py" not in record["helpers"]  # theory notebooks run no checks
    for chapter in chapters():
        executed = nbformat.read(str(ROOT / "notebooks" / f"{chapter}.ipynb"), as_version=4)
        assert executed.metadata[DEPENDS_KEY]["helpers"] == dependency_record(executed)["helpers"], chapter


def test_a_changed_helper_or_pin_makes_the_executed_notebook_stale():
    from tools.build import DEPENDS_KEY, _dependencies_changed, dependency_record

    nb = nbformat.read(str(ROOT / "notebooks" / "01_attention.ipynb"), as_version=4)
    nb.metadata[DEPENDS_KEY] = dependency_record(nb)
    assert _dependencies_changed(nb) is None
    nb.metadata[DEPENDS_KEY] = {**dependency_record(nb), "helpers_sha256": "0" * 64}
    assert "a helpers module it imports changed" in _dependencies_changed(nb)
    assert "helpers/attention.py" in _dependencies_changed(nb)
    nb.metadata[DEPENDS_KEY] = {**dependency_record(nb), "pins_sha256": "0" * 64}
    assert "pinned dependencies" in _dependencies_changed(nb)
    del nb.metadata[DEPENDS_KEY]
    assert "records no dependencies" in _dependencies_changed(nb)
