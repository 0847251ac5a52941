"""`course-grade-class`: grade a class safely, on every core, from the repository root.

    course-grade-class 01_attention                 # submitted/<student>/01_attention/01_attention.ipynb
    course-grade-class 01_attention --zip-collect   # first unpack downloaded/01_attention/archive/*.zip

It runs, in order: `nbgrader generate_assignment` (only if the gradebook lacks the assignment),
optionally `nbgrader zip_collect`, the pre-grading scan (`course-scan`), `nbgrader autograde` for
every student in parallel worker processes (one nbgrader import per worker; each kernel limited in
memory and time), each followed by `nbgrader generate_feedback` for that student in the same worker,
and writes

    grades-<assignment>.csv           one row per student: every exercise's points, the total, the status
    grades-<assignment>-cells.csv     one row per student and grade cell
    scan-<assignment>.csv             the scan's findings
    report-<assignment>.txt           what happened to whom: timeouts, dead kernels, edited or deleted
                                      test cells, files changed outside the student's folder, findings

A submission that loops, crashes its kernel, floods its output or allocates too much memory is
reported and does not stop the others. `nbgrader export` still works on the same gradebook.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .course import (
    INSTALLED_COURSE,
    Assignment,
    GradingError,
    find_course,
    nbgrader_api,
)
from .fastimport import nbgrader_command
from .results import by_exercise, pending_note, read_cells
from .sandbox import lock_down, sandbox_problem
from .scan import Finding, scan_class, submitted_notebooks, write_csv
from .scan import report as scan_report
from .zygote import start_zygote

SKIP_DIRS = {"autograded", "feedback", "exchange", "__pycache__", ".ipynb_checkpoints", "node_modules"}


@dataclass
class Outcome:
    student: str
    seconds: float = 0.0
    graded: bool = False
    feedback: bool = False  # its feedback page was written
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------

_API = None
_ASSIGNMENT = ""
_ZYGOTE = None


def kernel_threads(workers: int) -> int:
    """torch threads per grading kernel: the cores shared out among the workers' kernels. Two
    workers' kernels with two threads each on 2 cores made the checks several times slower."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _init_worker(course: str, assignment: str, timeout: int | None, memory_gb: float | None,
                 sandbox: str | None, zygote: bool = True, threads: int | None = None) -> None:
    """Each worker imports nbgrader once. Its kernels inherit its address-space limit, so a
    submission that allocates too much gets a MemoryError in its own cell instead of taking the
    machine down. With `zygote`, each kernel is forked from a process of this worker that has
    imported torch and ipykernel once (see zygote.py); still one new kernel per notebook."""
    global _API, _ASSIGNMENT, _ZYGOTE
    if threads and "OMP_NUM_THREADS" not in os.environ:  # the instructor's own setting wins
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernels inherit it
    if memory_gb:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    overrides: dict = {"Execute__timeout": timeout} if timeout else {}
    if sandbox:
        overrides.update(Execute__kernel_manager_class="helpers.grading.sandbox.SandboxKernelManager",
                         SandboxKernelManager__sandbox_user=sandbox)
    elif zygote:
        overrides.update(Execute__kernel_manager_class="helpers.grading.zygote.ZygoteKernelManager")
    _API, _ASSIGNMENT = nbgrader_api(Path(course), **overrides), assignment
    if zygote and not sandbox:
        _ZYGOTE = start_zygote()  # after nbgrader_config.py set the kernels' environment
    devnull = os.open(os.devnull, os.O_WRONLY)  # kernels' start-up chatter
    os.dup2(devnull, 2)


def _retrying(step, *args) -> tuple[dict, str]:
    """Run an nbgrader API step, again when another worker's write had the gradebook locked."""
    for _attempt in range(3):
        result = step(*args, force=True)
        log = result.get("log", "") + result.get("error", "")
        if result["success"] or "database is locked" not in log:
            break
        time.sleep(0.5)
    return result, log


def _grade_one(student: str, hidden: frozenset[str]) -> Outcome:
    """Autograde one student, then write their feedback page in the same worker (feedback is an
    HTML export per student; done here it runs on every core instead of after all grading)."""
    outcome = Outcome(student)
    start = time.perf_counter()
    result, log = _retrying(_API.autograde, _ASSIGNMENT, student)
    outcome.graded = bool(result["success"])
    outcome.problems = problems_in_log(log, hidden, outcome.graded)
    if outcome.graded:
        feedback, _ = _retrying(_API.generate_feedback, _ASSIGNMENT, student)
        outcome.feedback = bool(feedback["success"])
    outcome.seconds = time.perf_counter() - start
    return outcome


_CHANGED = re.compile(r"Attribute '(?:checksum|source)' for cell (\S+) has changed")
_MISSING = re.compile(r"Missing grade cell (\S+) encountered")


def problems_in_log(log: str, hidden: frozenset[str], graded: bool) -> list[str]:
    problems = []
    if "DeadKernelError" in log or "Kernel died" in log:
        problems.append("kernel died (os._exit, a crash or out of memory): nbgrader recorded no grades")
    elif not graded:
        tail = [line for line in log.splitlines() if line.strip()][-1:] or ["unknown error"]
        problems.append(f"not graded: {tail[0][:200]}")
    edited = sorted({c for c in _CHANGED.findall(log) if c not in hidden})
    if edited:
        problems.append(f"locked cells edited, restored before grading: {', '.join(edited)}")
    missing = sorted(set(_MISSING.findall(log)))
    if missing:
        problems.append(f"test cells deleted, restored before grading: {', '.join(missing)}")
    return problems


def problems_in_notebook(path: Path) -> list[str]:
    """What the autograded notebook shows: cells that timed out, ran out of memory or flooded."""
    import nbformat

    if not path.is_file():
        return []
    problems = []
    for cell in nbformat.read(str(path), as_version=4).cells:
        where = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", cell.get("id"))
        for output in cell.get("outputs", []):
            text = f"{output.get('ename', '')} {output.get('evalue', '')}"
            if output.get("output_type") == "error" and "CellTimeoutError" in text:
                problems.append(f"{where} ran past the time limit and was stopped")
            elif output.get("output_type") == "error" and ("MemoryError" in text or "allocate memory" in text):
                problems.append(f"{where} ran out of memory (the per-kernel limit)")
            elif output.get("output_type") == "stream" and "... Output truncated ..." in output.get("text", ""):
                problems.append(f"{where} printed too much; its output was truncated")
    return list(dict.fromkeys(problems))


def _pool(workers: int, args: tuple) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=args)


def autograde_all(course: Path, assignment: Assignment, students: list[str], *, workers: int,
                  timeout: int | None, memory_gb: float | None, sandbox: str | None = None,
                  zygote: bool = True, log=print) -> dict[str, Outcome]:
    """Autograde every student, `workers` at a time. A worker that dies (a flood of output that
    exhausts it) is replaced and its students are retried once."""
    args = (str(course), assignment.name, timeout, memory_gb, sandbox, zygote, kernel_threads(workers))
    hidden = frozenset(assignment.hidden_cells)
    outcomes: dict[str, Outcome] = {}
    pending, attempts = list(students), {s: 0 for s in students}
    while pending:
        with _pool(min(workers, len(pending)), args) as pool:
            futures = {pool.submit(_grade_one, s, hidden): s for s in pending}
            pending = []
            for future in as_completed(futures):
                student = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    attempts[student] += 1
                    if attempts[student] < 2:
                        pending.append(student)
                        continue
                    outcome = Outcome(student, problems=[
                        "the grading process died twice on this notebook (a flood of output or memory): not graded"])
                outcomes[student] = outcome
                log(f"  {student:<24} {outcome.seconds:5.1f} s  {'; '.join(outcome.problems) or 'ok'}")
    return outcomes


# ---------------------------------------------------------------------------------------------
# Around grading
# ---------------------------------------------------------------------------------------------


def snapshot(course: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file a submission has no business writing: all of the course (and
    of the installed course package, if elsewhere) except the autograde output, hidden folders,
    and the gradebook itself."""
    state = {}
    for root in dict.fromkeys([course, INSTALLED_COURSE]):
        state.update(_files(root))
    return state


def _files(course: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for folder, dirs, files in os.walk(course):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        for name in files:
            if name.startswith(("gradebook.db", "grades-", "report-", "scan-")):
                continue
            path = Path(folder) / name
            try:
                info = path.stat()
            except OSError:
                continue
            state[str(path)] = (info.st_size, info.st_mtime_ns)
    return state


def changed_files(before: dict, after: dict) -> list[str]:
    return sorted({p for p in before.keys() | after.keys() if before.get(p) != after.get(p)})


def ensure_released(api, course: Path, assignment: Assignment) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(api.coursedir.db_url) as gb:
        try:
            gb.find_assignment(assignment.name)
            return
        except MissingEntry:
            pass
    made = api.generate_assignment(assignment.name, force=True)
    if not made["success"]:
        raise GradingError(f"nbgrader generate_assignment {assignment.name} failed:\n{made.get('log', '')[-2000:]}")


def register_students(api, students: list[str]) -> None:
    from nbgrader.api import Gradebook

    with Gradebook(api.coursedir.db_url) as gb:
        for student in students:
            gb.update_or_create_student(student)


def write_grades(course: Path, api, assignment: Assignment, students: list[str],
                 outcomes: dict[str, Outcome]) -> dict[str, tuple[float, list]]:
    """grades-<a>.csv (per exercise and total) and grades-<a>-cells.csv (per grade cell)."""
    results = {}
    for student in students:
        autograded = course / "autograded" / student / assignment.name / f"{assignment.name}.ipynb"
        cells = read_cells(assignment, api.coursedir.db_url, student, autograded)
        if student in outcomes:
            outcomes[student].problems += problems_in_notebook(autograded)
        results[student] = (cells, by_exercise(cells))
    exercises = [row.exercise for row in next(iter(results.values()))[1]] if results else []
    with open(course / f"grades-{assignment.name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", *exercises, "total", "max", "status"])
        for student, (_, rows) in results.items():
            outcome = outcomes.get(student, Outcome(student))
            status = "; ".join(outcome.problems) or "ok"
            writer.writerow([student, *[("" if r.score is None else f"{r.score:g}") for r in rows],
                             f"{sum(r.score or 0 for r in rows):g}", f"{assignment.total:g}", status])
    with open(course / f"grades-{assignment.name}-cells.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "exercise", "cell", "score", "max", "message"])
        for student, (cells, _) in results.items():
            for cell in cells:
                writer.writerow([student, cell.cell.split("-")[0], cell.cell,
                                 "" if cell.score is None else f"{cell.score:g}", f"{cell.points:g}", cell.message])
    return results


def _parser() -> argparse.ArgumentParser:
    """course-grade-class's command line."""
    parser = argparse.ArgumentParser(prog="course-grade-class", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assignment", help="e.g. 01_attention")
    parser.add_argument("--course", help="the course folder (default: the working directory, else the installed course)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel graders (default: CPU count)")
    parser.add_argument("--timeout", type=int, help="seconds per cell (default: nbgrader_config.py's)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit per kernel (default 4; 0 = none)")
    parser.add_argument("--zip-collect", action="store_true", help="run `nbgrader zip_collect` first (LMS download)")
    parser.add_argument("--student", action="append", help="grade only these students (repeatable)")
    parser.add_argument("--sandbox", metavar="USER", help="run kernels as USER with no network and no access to "
                        "the gradebook or other students' files (needs root on Linux; see helpers/grading/sandbox.py)")
    parser.add_argument("--no-zygote", action="store_true", help="start every kernel as a new Python process "
                        "(slower) instead of forking it from a worker's pre-imported one (see helpers/grading/zygote.py)")
    return parser


def _prepare_class(args: argparse.Namespace) -> tuple[Path, Assignment, Any, list[str]]:
    """Everything grading needs before it starts: (the course, the assignment, released, nbgrader's API,
    the students with a submission, after --zip-collect and --student); GradingError for what stops it."""
    course = find_course(args.course)
    assignment = Assignment(course, args.assignment)
    assignment.source  # noqa: B018 (raises GradingError for an unknown assignment)
    if args.sandbox and (problem := sandbox_problem(args.sandbox)):
        raise GradingError(problem)
    api = nbgrader_api(course)
    ensure_released(api, course, assignment)
    if args.zip_collect:
        run = subprocess.run(nbgrader_command("zip_collect", assignment.name, "--force"),
                             cwd=course, capture_output=True, text=True, check=False)
        if run.returncode:
            raise GradingError(f"nbgrader zip_collect failed:\n{run.stderr[-2000:]}")
    students = sorted(submitted_notebooks(course, assignment.name))
    if args.student:
        students = [s for s in students if s in set(args.student)]
    if not students:
        raise GradingError(f"no submissions in {course / 'submitted'}/<student>/{assignment.name}/")
    return course, assignment, api, students


def _scan_submissions(course: Path, assignment: Assignment, students: list[str]
                      ) -> tuple[list[Finding], dict[str, str]]:
    """course-scan's findings in the students' answer cells (also written to scan-<a>.csv), and the
    notebooks it could not read."""
    print(f"scanning {len(students)} submissions of {assignment.name}")
    findings, unreadable = scan_class(course, assignment)
    findings = [f for f in findings if f.student in students]
    write_csv(findings, course / f"scan-{assignment.name}.csv")
    return findings, unreadable


def _autograde_class(args: argparse.Namespace, course: Path, api: Any, assignment: Assignment, students: list[str]
                     ) -> tuple[dict[str, Outcome], list[str]]:
    """Every student autograded (sandboxed with --sandbox): (the outcomes by student, the files of the
    course the grading changed)."""
    print(f"autograding with {args.workers} workers" + (f", kernels sandboxed as {args.sandbox}" if args.sandbox else ""))
    register_students(api, students)
    if args.sandbox:
        lock_down(course)
    before = snapshot(course)
    outcomes = autograde_all(course, assignment, students, workers=args.workers, timeout=args.timeout,
                             memory_gb=args.memory_gb or None, sandbox=args.sandbox, zygote=not args.no_zygote)
    return outcomes, changed_files(before, snapshot(course))


def main(argv: list[str] | None = None) -> int:
    """course-grade-class: prepare, scan, autograde, then write the grades and the report; the exit
    status (2, with the reason on stderr, when grading cannot start)."""
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        course, assignment, api, students = _prepare_class(args)
    except GradingError as problem:
        print(f"course-grade-class: {problem}", file=sys.stderr)
        return 2

    findings, unreadable = _scan_submissions(course, assignment, students)
    outcomes, changed = _autograde_class(args, course, api, assignment, students)
    results = write_grades(course, api, assignment, students, outcomes)
    feedback_ok = all(o.feedback for o in outcomes.values() if o.graded)
    text = class_report(assignment, students, results, outcomes, findings, unreadable, changed,
                        feedback_ok=feedback_ok, seconds=time.perf_counter() - started,
                        workers=args.workers, sandbox=args.sandbox)
    (course / f"report-{assignment.name}.txt").write_text(text)
    print(text)
    return 0


def class_report(assignment: Assignment, students: list[str], results: dict, outcomes: dict[str, Outcome],
                 findings: list[Finding], unreadable: dict[str, str], changed: list[str], *,
                 feedback_ok: bool, seconds: float, workers: int, sandbox: str | None = None) -> str:
    isolation = (f"kernels ran as {sandbox}, without network" if sandbox else
                 "kernels ran with the grader's permissions (no --sandbox)")
    title = f"# {assignment.name}: {len(students)} submissions graded in {seconds:.1f} s with {workers} workers"
    lines = [f"{title}; {isolation}",
             "", f"{'student':<24} {'score':>9}  status"]
    by_student: dict[str, list[Finding]] = {}
    for finding in findings:
        by_student.setdefault(finding.student, []).append(finding)
    for student in students:
        _, rows = results[student]
        score = sum(r.score or 0 for r in rows)
        notes = list(outcomes[student].problems) if student in outcomes else ["not graded"]
        if student in by_student:
            rules = sorted({f"{f.rule} ({f.exercise})" for f in by_student[student]})
            notes.append("scan: " + ", ".join(rules))
        if student in unreadable:
            notes.append(f"unreadable notebook: {unreadable[student]}")
        lines.append(f"{student:<24} {format(score, 'g') + ' / ' + format(assignment.total, 'g'):>9}"
                     f"{pending_note(rows)}  {'; '.join(notes) or 'ok'}")
    if changed:
        lines += ["", ("files changed outside autograded/ while grading (see the students the scan flags "
                       "for file_access):")]
        lines += [f"  {path}" for path in changed]
    if findings:
        lines += ["", "scan findings (grades are not changed by the scan):", scan_report(findings, {})]
    if not feedback_ok:
        lines += ["", "nbgrader generate_feedback reported an error: run it again with --debug"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
