"""Reading a graded submission back: points per grade cell and exercise, and the sentence a
learner should read for each (the check's message, the error, or the ✓ line)."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .course import Assignment, exercise_of

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


PENDING = "pending: your instructor grades this answer by hand (formgrader, Manual Grading)"
UNANSWERED = "no answer yet: the cell still holds the template"


@dataclass
class CellResult:
    cell: str
    score: float | None  # None: not graded (the kernel died, or manual grading pending)
    points: float
    message: str
    pending: bool = False  # a written answer waiting for the instructor (score None)
    manual: bool = False  # a written answer (graded by hand), not a test cell


@dataclass
class ExerciseResult:
    exercise: str
    score: float | None
    points: float
    message: str
    pending: bool = False  # it holds a written answer the instructor has not graded yet

    @property
    def status(self) -> str:
        if self.score is None:
            return "pending" if self.pending else "not graded"
        return "passed" if self.score == self.points else ("partial" if self.score else "failed")


def _one_line(text: str) -> str:
    """The whole message on one line (never cut: a learner must read the sentence to its end)."""
    return " ".join(_ANSI.sub("", text).split())


def cell_message(cell: nbformat.NotebookNode | None) -> str:
    """The error a test cell raised (one line), else its ✓ line, else ''."""
    if cell is None:
        return ""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            ename, evalue = output.get("ename", "Error"), output.get("evalue", "")
            return _one_line(f"{ename}: {evalue}" if evalue else ename)
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            ticks = [line for line in output.get("text", "").splitlines() if line.startswith("✓")]
            if ticks:
                return _one_line(ticks[-1])
    return ""


def read_cells(assignment: Assignment, gradebook_url: str, student: str,
               autograded: Path | None) -> list[CellResult]:
    """Scores from the gradebook, messages from the autograded notebook (if it exists).

    A written answer (a manually graded cell) that nbgrader marked for manual grading and that has
    no manual score yet is pending: score None, not 0 (nbgrader itself reports it as 0). One left
    as the template was scored 0 by nbgrader and says so.
    """
    from nbgrader.api import Gradebook, MissingEntry

    cells = {}
    if autograded is not None and autograded.is_file():
        nb = nbformat.read(str(autograded), as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id", c.get("id")): c for c in nb.cells}
    results = []
    with Gradebook(gradebook_url) as gb:
        for cell_id, points in assignment.points.items():
            pending = False
            try:
                grade = gb.find_grade(cell_id, assignment.name, assignment.name, student)
                score = grade.score
                if cell_id in assignment.manual_cells:
                    pending = bool(grade.needs_manual_grade) and grade.manual_score is None
            except MissingEntry:
                score = None
            if autograded is None or not autograded.is_file():
                score, pending = None, False
            message = cell_message(cells.get(cell_id))
            if cell_id in assignment.hidden_cells and not message.startswith("✓") and score == points:
                message = "hidden tests passed"
            if pending:
                score, message = None, PENDING
            elif cell_id in assignment.manual_cells and score == 0:
                message = UNANSWERED
            results.append(CellResult(cell_id, score, points, message, pending, cell_id in assignment.manual_cells))
    return results


def by_exercise(cells: list[CellResult]) -> list[ExerciseResult]:
    """One row per exercise: the sum of its cells, and the first failing cell's message."""
    rows: dict[str, ExerciseResult] = {}
    for cell in cells:
        name = exercise_of(cell.cell)
        row = rows.setdefault(name, ExerciseResult(name, 0.0, 0.0, ""))
        row.points += cell.points
        row.score = None if (row.score is None or cell.score is None) else row.score + cell.score
        row.pending = row.pending or cell.pending
        failed = cell.score is not None and cell.score < cell.points
        if failed and not row.message.startswith("✗"):
            where = "hidden test" if cell.cell.endswith("hidden") else ("written answer" if cell.manual else "test")
            row.message = f"✗ {where}: {cell.message or 'failed'}"
        elif not row.message:
            row.message = cell.message
    return list(rows.values())


def table(rows: list[ExerciseResult], width: int = 100) -> str:
    """A plain-text table: exercise, points, status, message; then the total. A long message wraps
    onto the next lines, under the feedback column, whole words only."""
    lines = [f"{'exercise':<9} {'points':>9}  {'status':<10} feedback", "-" * width]
    indent = " " * 32  # where the feedback column starts
    for row in rows:
        score = "-" if row.score is None else f"{row.score:g}"
        message = textwrap.wrap(row.message, width=max(width - len(indent), 40), break_long_words=False,
                                break_on_hyphens=False) or [""]
        lines.append(f"{row.exercise:<9} {score + ' / ' + format(row.points, 'g'):>9}  {row.status:<10} {message[0]}")
        lines += [indent + part for part in message[1:]]
    total = sum(r.points for r in rows)
    got = sum(r.score or 0 for r in rows)
    lines += ["-" * width, f"{'total':<9} {format(got, 'g') + ' / ' + format(total, 'g'):>9}{pending_note(rows)}"]
    return "\n".join(lines)


def pending_note(rows: list[ExerciseResult]) -> str:
    """' + 4 pending (ex5)' when written answers wait for the instructor, else ''."""
    waiting = [r for r in rows if r.pending]
    if not waiting:
        return ""
    return (f" + {format(sum(r.points for r in waiting), 'g')} pending manual grading "
            f"({', '.join(r.exercise for r in waiting)})")
