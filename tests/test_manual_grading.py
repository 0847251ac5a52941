"""Written answers graded by a person (nbgrader's manually graded cells): the course's grading
reports them as pending for the instructor, never as failed and never as a silent 0, and scores
the rest. (The nbgrader round trip of chapter 09 in tests/test_grading.py runs the same code on a
real gradebook.)"""

from __future__ import annotations

from helpers.grading.course import Assignment, find_course
from helpers.grading.results import PENDING, UNANSWERED, CellResult, by_exercise, pending_note, table


def _cells(manual: CellResult) -> list[CellResult]:
    return [CellResult("ex1-test", 2.0, 2.0, "✓ fine"), CellResult("ex1-hidden", 0.0, 1.0, "CheckFailed: wrong"),
            CellResult("ex2-test", 3.0, 3.0, "✓ fine"), manual]


def test_a_pending_written_answer_is_neither_failed_nor_zero():
    rows = by_exercise(_cells(CellResult("ex5-answer", None, 4.0, PENDING, pending=True)))
    ex5 = rows[-1]
    assert (ex5.score, ex5.status, ex5.pending, ex5.message) == (None, "pending", True, PENDING)
    assert [r.status for r in rows[:2]] == ["partial", "passed"]
    text = table(rows)
    assert text.splitlines()[-1].split() == ["total", "5", "/", "10", "+", "4", "pending", "manual", "grading", "(ex5)"]
    assert "failed" not in text.splitlines()[-3]


def test_a_template_left_unanswered_scores_zero_and_says_so():
    rows = by_exercise(_cells(CellResult("ex5-answer", 0.0, 4.0, UNANSWERED, manual=True)))
    assert (rows[-1].score, rows[-1].status) == (0.0, "failed")
    assert rows[-1].message == f"✗ written answer: {UNANSWERED}"
    assert pending_note(rows) == ""
    assert "no answer yet" in table(rows)


def test_a_graded_written_answer_counts_like_any_other():
    rows = by_exercise(_cells(CellResult("ex5-answer", 3.0, 4.0, "")))
    assert rows[-1].status == "partial" and table(rows).splitlines()[-1].split() == ["total", "8", "/", "10"]


def test_the_chapter_09_checklist_is_the_only_manual_cell_of_the_course():
    course = find_course(None)
    manual = {name: Assignment(course, name).manual_cells
              for name in sorted(p.name for p in (course / "solutions").iterdir() if p.is_dir())}
    assert manual["09_diagnostics"] == {"ex6-answer"}
    assert all(not cells for name, cells in manual.items() if name != "09_diagnostics")


def test_a_long_message_is_shown_whole_in_the_grade_report():
    """Issue 31: hidden-test messages were cut at 300 characters, mid-word ("... Autograd must see the co…").
    The message keeps every word; the table wraps it under the feedback column."""
    import nbformat

    from helpers.grading.results import cell_message

    sentence = ("update_ratios (a stream that each block edits): your output is cut off from autograd: " * 6
                + "compute it with torch operations on the input tensors")
    cell = nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output("error", ename="CheckFailed", evalue=sentence,
                                                                      traceback=[])])
    message = cell_message(cell)
    assert message == f"CheckFailed: {sentence}" and len(message) > 300
    text = table(by_exercise([CellResult("ex2-hidden", 0.0, 1.0, message)]))
    lines = text.splitlines()[2:-2]  # the exercise's rows, between the rules
    assert len(lines) > 1 and all(len(line) <= 100 for line in lines)
    assert " ".join(line[32:].strip() for line in lines) == f"✗ hidden test: {message}"
