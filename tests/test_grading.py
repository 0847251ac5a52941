"""A real grading round trip, the instructor's way, in a temporary copy of the course.

For every chapter, one run of `course-grade-class` (pre-grading scan, autograde of every student
on two workers, feedback, CSV files, report) grades a class: the solution ("perfect"), the
untouched exercise ("blank"), and the known submissions of `tests/grading/ch<chapter>.py`
(catalogued mistakes, loops, crashes, floods, tampered and deleted test cells, cheats, noise);
plain mistakes in different exercises share a notebook (`pack` in tests/nbgrader_course.py).
Each grade cell must get exactly the points listed there, the feedback must name the problem
without showing hidden tests, and the report must say what happened to whom. Chapter 01's class
is graded with kernels sandboxed (another user, no network) when this machine allows it.
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from helpers.grading.sandbox import sandbox_problem
from tools.build import CONTENT, chapters

from .nbgrader_course import PENDING, GradedClass

pytestmark = pytest.mark.slow

GRADED_CHAPTERS = [c for c in chapters() if (CONTENT / "solutions" / f"{c}.py").exists()]
SANDBOXED = "01_attention" if sandbox_problem("nobody") is None else None


def _cases(chapter: str):
    try:
        return importlib.import_module(f"tests.grading.ch{chapter}")
    except ModuleNotFoundError as error:
        if error.name != f"tests.grading.ch{chapter}":
            raise
        return None


ALL_CASES = {chapter: _cases(chapter) for chapter in GRADED_CHAPTERS}
CASES = {chapter: cases for chapter, cases in ALL_CASES.items() if cases is not None}
SUBMISSIONS = [(chapter, student) for chapter in CASES for student in CASES[chapter].STUDENTS]


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    classes: dict[str, GradedClass] = {}

    def get(chapter: str) -> GradedClass:
        if chapter not in classes:
            cases = CASES[chapter]
            args = (*getattr(cases, "GRADE_ARGS", ()), "--workers", "2")
            if chapter == SANDBOXED:
                args += ("--sandbox", "nobody")
            classes[chapter] = GradedClass(tmp_path_factory.mktemp(chapter), chapter, cases.STUDENTS, args,
                                           getattr(cases, "USES", None))
        return classes[chapter]
    return get


@pytest.mark.parametrize("chapter", GRADED_CHAPTERS)
def test_every_chapter_has_known_submissions(chapter):
    assert ALL_CASES[chapter] is not None, f"write tests/grading/ch{chapter}.py"
    assert len(ALL_CASES[chapter].STUDENTS) >= 5


@pytest.mark.parametrize("chapter", CASES)
def test_the_run_completes(graded, chapter):
    run = graded(chapter)
    assert run.run.returncode == 0, run.run.stdout[-3000:] + run.run.stderr[-3000:]
    assert run.export.returncode == 0, run.export.stderr[-3000:]


@pytest.mark.parametrize("chapter", CASES)
def test_solution_gets_full_marks_and_blank_gets_zero(graded, chapter):
    run = graded(chapter)
    assert run.scores("perfect") == run.expected("perfect")  # every point, written answers pending
    assert all(v == points or (v == PENDING and cell in run.manual)
               for (cell, points), v in zip(run.points.items(), run.scores("perfect").values()))
    assert sum(run.scores("blank").values()) == 0


@pytest.mark.parametrize("chapter, student", SUBMISSIONS)
def test_each_submission_gets_exactly_its_points(graded, chapter, student):
    run = graded(chapter)
    assert run.scores(student) == run.expected(student)


@pytest.mark.parametrize("chapter", CASES)
def test_each_packed_notebook_gets_exactly_its_points(graded, chapter):
    """A notebook holding several plain mistakes (tests/nbgrader_course.py, `pack`) loses the
    points of each and keeps every other grade cell: no mistake spills into another exercise."""
    run = graded(chapter)
    packed = [name for name, members in run.packs.items() if len(members) > 1]
    for name in packed:
        assert run.scores(name) == run.expected(name), name
        assert len(run.scores(name)) == len(run.points)


@pytest.mark.parametrize("chapter, student",
                         [(c, s) for c, s in SUBMISSIONS if CASES[c].STUDENTS[s].feedback])
def test_feedback_names_the_problem(graded, chapter, student):
    run = graded(chapter)
    page = run.feedback_page(student)
    assert page is not None and CASES[chapter].STUDENTS[student].feedback in page


@pytest.mark.parametrize("chapter, student",
                         [(c, s) for c, s in SUBMISSIONS if CASES[c].STUDENTS[s].report])
def test_report_says_what_happened(graded, chapter, student):
    run = graded(chapter)
    assert CASES[chapter].STUDENTS[student].report in run.report_line(student)


@pytest.mark.parametrize("chapter", CASES)
def test_the_blank_notebook_is_told_what_is_missing(graded, chapter):
    """Every test cell of the untouched exercise, hidden ones included, fails with the sentence that
    names the missing answer, never with the error a hidden test's arithmetic on None raises."""
    with open(run_root := graded(chapter).root / f"grades-{chapter}-cells.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["student"] == "blank" and row["message"]]
    assert rows, run_root
    for row in rows:
        assert "not implemented yet" in row["message"] or "no answer yet" in row["message"], row


@pytest.mark.parametrize("chapter", CASES)
def test_correct_answers_raise_no_scan_finding(graded, chapter):
    run = graded(chapter)
    assert run.report_line("perfect").endswith("ok")
    with open(run.root / f"scan-{chapter}.csv") as handle:
        flagged = {row["student"] for row in csv.DictReader(handle)}
    assert "perfect" not in flagged and "blank" not in flagged


@pytest.mark.parametrize("chapter", CASES)
def test_feedback_hides_hidden_tests(graded, chapter):
    run = graded(chapter)
    pages = [run.feedback_page(student) for student in ["perfect", "blank", *run.students]]
    assert pages[0] is not None
    for page in filter(None, pages):
        assert "BEGIN HIDDEN TESTS" not in page and "seed=5" not in page


@pytest.mark.parametrize("chapter", CASES)
def test_gradebook_is_consistent_after_parallel_grading(graded, chapter):
    """One submission per student, every grade cell scored, totals equal to the per-exercise CSV."""
    run = graded(chapter)
    with open(run.root / f"grades-{chapter}.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(run.students) | {"perfect", "blank"}
    with Gradebook(f"sqlite:///{run.root / 'gradebook.db'}") as gb:
        for student, row in rows.items():
            if "kernel died" in row["status"]:
                continue
            submission = gb.find_submission(chapter, student)
            scores = run.scores(student)
            assert all(score is not None for score in scores.values())
            scored = sum(v for v in scores.values() if v != PENDING)  # pending counts 0 until graded
            assert float(row["total"]) == submission.score == scored


@pytest.mark.parametrize("chapter", CASES)
def test_export_has_every_student(graded, chapter):
    run = graded(chapter)
    rows = run.exported()
    perfect = sum(v for v in run.expected("perfect").values() if v != PENDING)
    assert rows["perfect"] == perfect and rows["blank"] == 0
    assert set(rows) == set(run.students) | {"perfect", "blank"}


def test_tampered_cells_were_restored(graded):
    test = next(c for c in graded("01_attention").autograded("tampered").cells if c.id == "ex7-test")
    assert "check_scaled_dot_product_attention(scaled_dot_product_attention)" in test.source


def _answer_output(run: GradedClass, student: str, cell_id: str) -> str:
    cell = next(c for c in run.autograded(student).cells if c.id == cell_id)
    return "".join(o.get("text", "") for o in cell.outputs)


def test_sandbox_keeps_kernels_away_from_the_course(graded):
    """Sandboxed, the kernel can neither write the course nor read the gradebook nor reach the
    network; without the sandbox the report at least names the file that changed."""
    run = graded("01_attention")
    planted = Path(run.root / "planted.txt")
    if SANDBOXED:
        assert not planted.exists()
        assert "blocked: [Errno 13] Permission denied" in _answer_output(run, "writes_elsewhere", "ex2-answer")
        assert "blocked: [Errno 13] Permission denied" in _answer_output(run, "reads_gradebook", "ex2-answer")
        assert "no network" in _answer_output(run, "uses_network", "ex2-answer")
    else:
        assert planted.exists() and str(planted) in run.report
