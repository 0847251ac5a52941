"""A real grading round trip with nbgrader, in a temporary copy of the course.

One autograde run grades a class of submissions of chapter 01: the solution, the untouched
exercise, known mistakes, an infinite loop, tampered and deleted test cells, an answer that
imports the reference, patched checks, a patched allclose, noise on stderr, a hard-coded
answer and a fake `helpers` package beside the notebook. Each must get exactly the points listed here, and feedback must name the mistake
without showing hidden tests.
"""

from __future__ import annotations

import csv
import html

import nbformat
import pytest
from nbgrader.api import Gradebook

from helpers.checks import attention as checks
from tools.build import ROOT

from .nbgrader_course import Course, filled_in, replace, solution_answers

pytestmark = pytest.mark.slow

ASSIGNMENT = "01_attention"
TOTAL = 23
# points per grade cell, from the solution notebook
POINTS = {
    "ex1-test": 2, "ex1-hidden": 1, "ex2-test": 1, "ex2-hidden": 2, "ex3-test": 1, "ex3-hidden": 1,
    "ex4-test": 1, "ex4-hidden": 1, "ex5-test": 1, "ex5-hidden": 1, "ex6-test": 1, "ex6-hidden": 2,
    "ex7-test": 2, "ex7-hidden": 3, "ex8-test": 2, "ex8-hidden": 1,
}
TIMEOUT = 15  # per cell, for this test only: the infinite loop costs this much


def _lost(*exercises: str) -> set[str]:
    return {cell for cell in POINTS if cell.split("-")[0] in exercises}


def _msg(catalogue, key):
    return next(m.message for m in catalogue if m.key == key)


NO_SCALE_SDPA = replace("/ math.sqrt(d_k)  # (..., T_q, T_k)\n    if mask", "  # (..., T_q, T_k)\n    if mask")

# student -> (edits to the filled-in notebook, grade cells that must score 0, text the feedback must show)
STUDENTS = {
    "perfect": ({}, set(), None),
    "no_scale": ({"ex2-answer": replace(" / math.sqrt(d_k)", "")}, _lost("ex2"),
                 _msg(checks.SCORES_MISTAKES, "no_scale")),
    "query_axis": ({"ex6-answer": replace("torch.softmax(masked, dim=-1)", "torch.softmax(masked, dim=-2)")},
                   _lost("ex6"), _msg(checks.SOFTMAX_MISTAKES, "softmax_query_axis")),
    "diagonal": ({"ex3-answer": replace(".tril()", ".tril(-1)")}, _lost("ex3"),
                 _msg(checks.CAUSAL_MISTAKES, "diagonal_blocked")),
    "tampered": (
        {"ex7-answer": replace('torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)',
                               "torch.softmax(scores, dim=-1) * mask"),
         "ex7-test": lambda source: "pass  # tests removed",
         "ex7-hidden": lambda source: "# nothing to see"},
        _lost("ex7"), _msg(checks.SDPA_MISTAKES, "mask_after_softmax")),
    "loop": ({"ex5-answer": lambda source: "while True:\n    pass\n" + source}, _lost("ex5"), "CellTimeoutError"),
    "reference_import": (
        {"ex7-answer": lambda source: "from helpers.attention import scaled_dot_product_attention"},
        _lost("ex7"), "not your own function"),
    "builtin_wrapper": (
        {"ex7-answer": lambda source: (
            "import torch.nn.functional as F\n"
            "def scaled_dot_product_attention(q, k, v, mask=None):\n"
            "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
            "    return out, None\n")},
        _lost("ex7"), "calls torch"),
    "patched_check": (
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport helpers.checks.attention as _c\n"
            "_c.check_scaled_dot_product_attention = lambda *a, **k: print('all good')\n")},
        _lost("ex7"), _msg(checks.SDPA_MISTAKES, "no_scale")),
    # A patched library makes every later check refuse to run: exercise 7 and exercise 8's visible test.
    "patched_allclose": (
        {"ex7-answer": lambda source: NO_SCALE_SDPA(source) + (
            "\nimport numpy\n"
            "torch.allclose = lambda *a, **k: True\n"
            "numpy.allclose = lambda *a, **k: True\n")},
        _lost("ex7") | {"ex8-test"}, "was replaced after the notebook"),
    "noisy_but_right": (
        {"ex2-answer": lambda source: (
            "import sys, warnings\n"
            "warnings.warn('this answer cell is noisy', DeprecationWarning)\n"
            + source.replace("    d_k = q.shape[-1]",
                             "    warnings.warn('noisy inside', UserWarning)\n"
                             "    print('debug: shapes', q.shape, k.shape, file=sys.stderr)\n"
                             "    d_k = q.shape[-1]"))},
        set(), None),
    "hard_coded": (
        {"ex3-answer": lambda source: (
            "def causal_mask(T):\n"
            "    table = {6: torch.ones(6, 6, dtype=torch.bool).tril(), 1: torch.ones(1, 1, dtype=torch.bool)}\n"
            "    return table[T]\n")},
        {"ex3-hidden"}, "KeyError"),
    # A package named `helpers` beside the notebook whose checks pass everything: it must not be imported.
    "shadowing_helpers": (
        {"ex7-answer": lambda source: "def scaled_dot_product_attention(q, k, v, mask=None):\n    return q, q\n"},
        _lost("ex7"), "output has shape (B, T_q, d_k) = (2, 5, 11); expected (B, T_q, d_v) = (2, 5, 13)"),
}
FILES = {
    "shadowing_helpers": {
        "helpers/__init__.py": "def seed_everything(seed):\n    pass\n",
        "helpers/checks/__init__.py": "",
        "helpers/checks/attention.py": "def __getattr__(name):\n    return lambda *args, **kwargs: print('ok')\n",
    },
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = Course(tmp_path_factory.mktemp("course"))
    released = course.release(ASSIGNMENT)
    answers = solution_answers(ASSIGNMENT)
    assert set(answers) == {f"ex{i}-answer" for i in range(1, 9)}
    course.submit("blank", ASSIGNMENT, released)
    for student, (edits, _, _) in STUDENTS.items():
        course.submit(student, ASSIGNMENT, filled_in(released, answers, edits))
        for name, text in FILES.get(student, {}).items():
            path = course.root / "submitted" / student / ASSIGNMENT / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    autograde = course.nbgrader("autograde", ASSIGNMENT, "--force", f"--Execute.timeout={TIMEOUT}")
    feedback = course.nbgrader("generate_feedback", ASSIGNMENT, "--force")
    export = course.nbgrader("export", "--to", str(course.root / "grades.csv"))
    return course, autograde, feedback, export


def _scores(course: Course, student: str) -> dict[str, float]:
    with Gradebook(f"sqlite:///{course.root / 'gradebook.db'}") as gb:
        return {cell: gb.find_grade(cell, ASSIGNMENT, ASSIGNMENT, student).score for cell in POINTS}


def test_points_total_matches_the_notebook():
    nb = nbformat.read(str(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"), as_version=4)
    points = {c.id: c.metadata["nbgrader"]["points"] for c in nb.cells if c.metadata["nbgrader"].get("grade")}
    assert points == POINTS and sum(points.values()) == TOTAL


def test_the_run_completes(graded):
    _, autograde, feedback, export = graded
    assert autograde.returncode == 0, autograde.stdout[-3000:] + autograde.stderr[-3000:]
    assert feedback.returncode == 0, feedback.stderr[-3000:]
    assert export.returncode == 0, export.stderr[-3000:]


def test_solution_gets_full_marks_and_blank_gets_zero(graded):
    course = graded[0]
    assert _scores(course, "perfect") == POINTS
    assert sum(_scores(course, "blank").values()) == 0


@pytest.mark.parametrize("student", [s for s in STUDENTS if s != "perfect"])
def test_each_submission_gets_exactly_its_points(graded, student):
    course = graded[0]
    _, lost, _ = STUDENTS[student]
    expected = {cell: (0 if cell in lost else points) for cell, points in POINTS.items()}
    assert _scores(course, student) == expected


@pytest.mark.parametrize("student", [s for s, (_, _, text) in STUDENTS.items() if text])
def test_feedback_names_the_problem(graded, student):
    course = graded[0]
    page = (course.root / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert STUDENTS[student][2] in html.unescape(page)


def test_feedback_hides_hidden_tests(graded):
    course = graded[0]
    for student in ["perfect", "no_scale"]:
        page = html.unescape((course.root / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
        assert "BEGIN HIDDEN TESTS" not in page and "seed=5" not in page


def test_tampered_cells_were_restored(graded):
    course = graded[0]
    nb = nbformat.read(str(course.root / "autograded" / "tampered" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"), as_version=4)
    test = next(c for c in nb.cells if c.id == "ex7-test")
    assert "check_scaled_dot_product_attention(scaled_dot_product_attention)" in test.source


def test_export_has_every_student(graded):
    course = graded[0]
    with open(course.root / "grades.csv") as handle:
        rows = {row["student_id"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert rows["perfect"] == TOTAL and rows["blank"] == 0
    assert set(rows) == set(STUDENTS) | {"blank"}
