"""How the grading round trip packs known submissions into notebooks (tests/nbgrader_course.py)."""

from __future__ import annotations

from .nbgrader_course import Submission, merged, pack, packable, put


def _mistake(*cells: str, lost=None) -> Submission:
    return Submission({cell: put("x = 1") for cell in cells}, set(lost or {c.split("-")[0] for c in cells}))


def test_plain_mistakes_in_different_exercises_share_a_notebook():
    students = {"a": _mistake("ex1-answer"), "b": _mistake("ex2-answer"), "c": _mistake("ex1-answer"),
                "d": _mistake("ex3-answer", "ex2-answer")}
    assert pack(students) == {"a__b": ["a", "b"], "c__d": ["c", "d"]}


def test_submissions_that_test_the_grader_are_graded_alone():
    students = {
        "plain": _mistake("ex1-answer"),
        "report": Submission({"ex2-answer": put("")}, {"ex2"}, report="scan: reference_import (ex2)"),
        "files": Submission({"ex3-answer": put("")}, {"ex3"}, files={"helpers.py": ""}),
        "test_cell": Submission({"ex4-test": put("pass")}, {"ex4"}),
        "everything": Submission({"ex5-answer": put("")}, {"all"}),
        "spills": _mistake("ex6-answer", lost={"ex6", "ex7"}),  # another exercise depends on it
        "right": Submission({"ex7-answer": put("")}, ()),
    }
    assert [name for name, s in students.items() if packable(s)] == ["plain"]
    assert pack(students) == {name: [name] for name in students}


def test_a_pack_loses_what_its_members_lose():
    both = merged([_mistake("ex1-answer"), _mistake("ex2-answer", lost={"ex2-hidden"})])
    assert set(both.edits) == {"ex1-answer", "ex2-answer"} and set(both.lost) == {"ex1", "ex2-hidden"}


def test_an_exercise_that_runs_earlier_answers_is_not_packed_beside_their_mistakes():
    """Chapter 09's bug hunt (ex4) runs the learner's ex1 to ex3: a broken ex1 beside a hunt mistake would
    change what the hunt's feedback says."""
    students = {"leak": _mistake("ex1-answer"), "hunt": _mistake("ex4-answer"), "numbers": _mistake("ex5-answer")}
    assert pack(students)["leak__hunt__numbers"] == ["leak", "hunt", "numbers"]
    assert pack(students, {"ex4": ("ex1", "ex2", "ex3")}) == {"leak__numbers": ["leak", "numbers"], "hunt": ["hunt"]}
