"""A throwaway copy of the course for grading round trips: generate, submit, grade, export.

Each chapter's known submissions live in `tests/grading/ch<chapter>.py` as a dict `STUDENTS` of
`Submission`s; `tests/test_grading.py` grades each chapter's class with one run of the instructor's
command, `course-grade-class` (scan, parallel autograde, feedback), then `nbgrader export`.

Grading one notebook costs a kernel start and `import torch` (about 5 of its 7 seconds), whatever
the notebook holds, so `pack` puts plain mistakes that touch different exercises into one notebook
(see `pack`); submissions that test the grader itself (crashes, tampering, files, cheats the report
must name) are graded alone.
"""

from __future__ import annotations

import copy
import csv
import html
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Mapping

import nbformat
from nbgrader.api import Gradebook, MissingEntry

from helpers.grading.fastimport import nbgrader_command
from tools.build import ROOT, nbgrader_env

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
# A written answer (a manually graded cell) that waits for the instructor: nbgrader stores score 0
# and needs_manual_grade until someone grades it in formgrader.
PENDING = "pending"


@dataclass(frozen=True)
class Submission:
    """A filled-in exercise notebook: the solution's answers, then `edits` (cell id -> edit).

    `lost` names what must score 0: an exercise ("ex3", all its grade cells) or one grade cell
    ("ex3-hidden"), or "all"; every other grade cell must get full points. An edit that returns
    None deletes the cell. `feedback` is text the feedback page must show (None: no page is
    expected to name anything); `report` is text the class report must show on the student's
    line; `files` are extra files submitted beside the notebook (path -> text). "{COURSE}" in a
    cell stands for the course folder's absolute path.
    """
    edits: Mapping[str, Callable[[str], str]] = field(default_factory=dict)
    lost: Collection[str] = ()
    feedback: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    report: str | None = None


def exercise(cell_or_exercise: str) -> str:
    return cell_or_exercise.split("-")[0]


def packable(submission: Submission) -> bool:
    """A plain mistake: it edits answer cells only and loses points only in the exercises it edits
    (so, graded alone, no other exercise depended on it), with no files and nothing in the report."""
    edited = {exercise(cell) for cell in submission.edits}
    return (bool(submission.lost) and "all" not in submission.lost and not submission.files
            and submission.report is None and all(cell.endswith("-answer") for cell in submission.edits)
            and {exercise(name) for name in submission.lost} == edited)


def pack(students: Mapping[str, Submission], uses: Mapping[str, Collection[str]] | None = None
         ) -> dict[str, list[str]]:
    """Graded notebook -> the submissions it holds. Plain mistakes (`packable`) go, first fit in the
    order given, into the first notebook whose exercises they do not touch; each notebook is named
    after its submissions joined by "__". Every other submission is a notebook of its own.

    `uses` maps an exercise to the earlier exercises whose answers it runs (chapter 09's bug hunt runs
    the learner's exercises 1 to 3): a mistake in one of those touches the exercise that uses it too,
    so a mistake of the bug hunt is never graded beside a broken exercise 1."""
    packs: list[tuple[list[str], set[str]]] = []
    alone = []
    for name, submission in students.items():
        if not packable(submission):
            alone.append(name)
            continue
        edited = {exercise(cell) for cell in submission.edits}
        edited |= {user for user, used in (uses or {}).items() if set(used) & edited}
        target = next((p for p in packs if not p[1] & edited), None)
        if target is None:
            packs.append(([name], set(edited)))
        else:
            target[0].append(name)
            target[1].update(edited)
    graded = {"__".join(names): names for names, _ in packs}
    graded.update({name: [name] for name in alone})
    return graded


def merged(submissions: Collection[Submission]) -> Submission:
    edits: dict[str, Callable[[str], str]] = {}
    lost: set[str] = set()
    for submission in submissions:
        assert not edits.keys() & submission.edits.keys()
        edits.update(submission.edits)
        lost.update(submission.lost)
    return Submission(edits, lost)


class Course:
    def __init__(self, folder: Path) -> None:
        self.root = folder
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "nbgrader_config.py", folder)
        shutil.copytree(ROOT / "solutions", folder / "solutions")

    def nbgrader(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(nbgrader_command(*args), cwd=self.root, env=nbgrader_env(),
                              capture_output=True, text=True)

    def release(self, assignment: str) -> nbformat.NotebookNode:
        run = self.nbgrader("generate_assignment", assignment, "--force")
        assert run.returncode == 0, run.stderr
        return nbformat.read(str(self.root / "exercises" / assignment / f"{assignment}.ipynb"), as_version=4)

    def submit(self, student: str, assignment: str, nb: nbformat.NotebookNode,
               files: Mapping[str, str] | None = None) -> None:
        folder = self.root / "submitted" / student / assignment
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(folder / f"{assignment}.ipynb"))
        for name, text in (files or {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)


def grade_points(assignment: str) -> dict[str, float]:
    """Points per grade cell id, read from the solution notebook."""
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    return {c.id: c.metadata["nbgrader"]["points"] for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def manual_cells(assignment: str) -> set[str]:
    """Grade cells graded by a person: written answers (answer cells that are also grade cells)."""
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    return {c.id for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and c.metadata["nbgrader"].get("solution")}


def solution_answers(assignment: str) -> dict[str, str]:
    """Each answer cell (code, or a written answer) as a learner who solved it would write it: the
    markers removed."""
    nb = nbformat.read(str(ROOT / "solutions" / assignment / f"{assignment}.ipynb"), as_version=4)
    answers = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            lines = [line for line in cell.source.splitlines() if line.strip() not in (BEGIN, END)]
            answers[cell.id] = "\n".join(lines)
    return answers


def filled_in(released: nbformat.NotebookNode, answers: dict[str, str],
              edits: Mapping[str, Callable[[str], str]] | None = None) -> nbformat.NotebookNode:
    """The released notebook with answer cells replaced by `answers`, then `edits` applied (any cell)."""
    nb = copy.deepcopy(released)
    for cell in nb.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    for cell_id, edit in (edits or {}).items():
        cell = next(c for c in nb.cells if c.id == cell_id)
        cell.source = edit(cell.source)
        if cell.source is None:
            nb.cells.remove(cell)
    return nb


def replace(old: str, new: str) -> Callable[[str], str]:
    """An edit that replaces `old` (which must occur) by `new`."""
    def edit(source: str) -> str:
        assert old in source, f"{old!r} not found in {source!r}"
        return source.replace(old, new)
    return edit


def put(source: str) -> Callable[[str], str]:
    """An edit that replaces the whole cell by `source`."""
    return lambda _: source


class GradedClass:
    """One chapter's class: released, submitted (blank + `students`, packed by `pack`), autograded,
    feedback, export.

    `students` are the notebooks graded (a pack is one student); `submissions` the known
    submissions. `scores`, `expected`, `feedback_page`, `report_line` and `autograded` take either
    name: for a submission graded inside a pack, `scores` and `expected` cover the grade cells of
    the exercises it edits, and the pack's own name covers them all."""

    def __init__(self, folder: Path, assignment: str, students: Mapping[str, Submission],
                 grade_args: Collection[str] = (), uses: Mapping[str, Collection[str]] | None = None) -> None:
        self.assignment = assignment
        self.submissions = dict(students)
        self.packs = pack(self.submissions, uses)
        self.students = {name: (self.submissions[members[0]] if len(members) == 1 and name == members[0]
                                else merged([self.submissions[m] for m in members]))
                         for name, members in self.packs.items()}
        self.graded_as = {member: name for name, members in self.packs.items() for member in members}
        self.points = grade_points(assignment)
        self.manual = manual_cells(assignment)
        self.course = Course(folder)
        released = self.course.release(assignment)
        answers = solution_answers(assignment)
        self.course.submit("blank", assignment, released)
        self.course.submit("perfect", assignment, filled_in(released, answers))
        for student, submission in self.students.items():
            nb = filled_in(released, answers, submission.edits)
            for cell in nb.cells:
                cell.source = cell.source.replace("{COURSE}", str(folder))
            self.course.submit(student, assignment, nb, submission.files)
        self.grade_args = tuple(grade_args)
        self.run = subprocess.run([sys.executable, "-m", "helpers.grading.classroom", assignment, "--course",
                                   str(folder), *grade_args], cwd=folder, env=nbgrader_env(),
                                  capture_output=True, text=True)
        self.export = self.course.nbgrader("export", "--to", str(folder / "grades.csv"))

    @property
    def report(self) -> str:
        return (self.root / f"report-{self.assignment}.txt").read_text()

    def report_line(self, student: str) -> str:
        student = self.graded_as.get(student, student)
        return next(line for line in self.report.splitlines() if line.split(" ")[0] == student)

    def _own_cells(self, student: str) -> Callable[[str], bool]:
        """For a submission graded inside a pack: its own exercises' grade cells; else every cell."""
        if self.graded_as.get(student, student) == student:
            return lambda cell: True
        edited = {exercise(cell) for cell in self.submissions[student].edits}
        return lambda cell: exercise(cell) in edited

    @property
    def root(self) -> Path:
        return self.course.root

    def scores(self, student: str) -> dict[str, float | str]:
        """Each grade cell's score in the gradebook (0 for a submission nbgrader could not grade),
        PENDING for a written answer that waits for manual grading."""
        own, graded = self._own_cells(student), self.graded_as.get(student, student)
        cells = [cell for cell in self.points if own(cell)]
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}") as gb:
            try:
                grades = {cell: gb.find_grade(cell, self.assignment, self.assignment, graded) for cell in cells}
            except MissingEntry:
                return dict.fromkeys(cells, 0)
            return {cell: PENDING if (cell in self.manual and grade.needs_manual_grade and grade.manual_score is None)
                    else grade.score for cell, grade in grades.items()}

    def expected(self, student: str) -> dict[str, float]:
        known = self.students.get(student) or self.submissions.get(student)
        lost = set(known.lost) if known else set()
        unknown = {name for name in lost - {"all"} if not any(cell == name or exercise(cell) == name
                                                     for cell in self.points)}
        assert not unknown, f"{student}: no grade cells named {sorted(unknown)}"
        own = self._own_cells(student)
        return {cell: 0 if ("all" in lost or cell in lost or exercise(cell) in lost)
                else (PENDING if cell in self.manual else points) for cell, points in self.points.items() if own(cell)}

    def feedback_page(self, student: str) -> str | None:
        student = self.graded_as.get(student, student)
        path = self.root / "feedback" / student / self.assignment / f"{self.assignment}.html"
        return html.unescape(path.read_text()) if path.exists() else None

    def exported(self) -> dict[str, float]:
        with open(self.root / "grades.csv") as handle:
            return {row["student_id"]: float(row["score"]) for row in csv.DictReader(handle)
                    if row["assignment"] == self.assignment}

    def autograded(self, student: str) -> nbformat.NotebookNode:
        student = self.graded_as.get(student, student)
        path = self.root / "autograded" / student / self.assignment / f"{self.assignment}.ipynb"
        return nbformat.read(str(path), as_version=4)
