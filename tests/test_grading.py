"""A real grading round trip with nbgrader, in a temporary copy of the course.

For every chapter, one autograde run grades a class: the solution ("perfect"), the untouched
exercise ("blank"), and the known submissions of `tests/grading/ch<chapter>.py` (catalogued
mistakes, loops, tampered test cells, cheats, noise). Each grade cell must get exactly the points
listed there, the feedback must name the problem, and hidden tests must stay out of the feedback.
"""

from __future__ import annotations

import importlib

import pytest

from tools.build import CONTENT, chapters

from .nbgrader_course import GradedClass

pytestmark = pytest.mark.slow

GRADED_CHAPTERS = [c for c in chapters() if (CONTENT / "solutions" / f"{c}.py").exists()]


def _cases(chapter: str):
    return importlib.import_module(f"tests.grading.ch{chapter}")


CASES = {chapter: _cases(chapter) for chapter in GRADED_CHAPTERS}
SUBMISSIONS = [(chapter, student) for chapter in GRADED_CHAPTERS for student in CASES[chapter].STUDENTS]


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    classes: dict[str, GradedClass] = {}

    def get(chapter: str) -> GradedClass:
        if chapter not in classes:
            cases = CASES[chapter]
            classes[chapter] = GradedClass(tmp_path_factory.mktemp(chapter), chapter, cases.STUDENTS,
                                           getattr(cases, "AUTOGRADE_ARGS", ()))
        return classes[chapter]
    return get


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_every_chapter_has_known_submissions(chapter):
    assert len(CASES[chapter].STUDENTS) >= 5


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_the_run_completes(graded, chapter):
    run = graded(chapter)
    assert run.autograde.returncode == 0, run.autograde.stdout[-3000:] + run.autograde.stderr[-3000:]
    assert run.feedback.returncode == 0, run.feedback.stderr[-3000:]
    assert run.export.returncode == 0, run.export.stderr[-3000:]


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_solution_gets_full_marks_and_blank_gets_zero(graded, chapter):
    run = graded(chapter)
    assert run.scores("perfect") == run.points
    assert sum(run.scores("blank").values()) == 0


@pytest.mark.parametrize("chapter, student", SUBMISSIONS)
def test_each_submission_gets_exactly_its_points(graded, chapter, student):
    run = graded(chapter)
    assert run.scores(student) == run.expected(student)


@pytest.mark.parametrize("chapter, student",
                         [(c, s) for c, s in SUBMISSIONS if CASES[c].STUDENTS[s].feedback])
def test_feedback_names_the_problem(graded, chapter, student):
    run = graded(chapter)
    assert CASES[chapter].STUDENTS[student].feedback in run.feedback_page(student)


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_feedback_hides_hidden_tests(graded, chapter):
    run = graded(chapter)
    for student in ["perfect", *run.students]:
        page = run.feedback_page(student)
        assert "BEGIN HIDDEN TESTS" not in page and "seed=5" not in page


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_export_has_every_student(graded, chapter):
    run = graded(chapter)
    rows = run.exported()
    assert rows["perfect"] == sum(run.points.values()) and rows["blank"] == 0
    assert set(rows) == set(run.students) | {"perfect", "blank"}


def test_tampered_cells_were_restored(graded):
    test = next(c for c in graded("01_attention").autograded("tampered").cells if c.id == "ex7-test")
    assert "check_scaled_dot_product_attention(scaled_dot_product_attention)" in test.source
