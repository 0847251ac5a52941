"""Benchmark grading a class (issue: grading that instructors can trust). Nothing here asserts a time.

    python tools/bench_class.py            # 30 submissions spread over the chapters
    python tools/bench_class.py --size 60
    python tools/bench_class.py --chapter 01_attention   # the whole class on one chapter
    python tools/bench_class.py --size 60 --chapter 01_attention --chapter 02_heads --parallel-only
    python tools/bench_class.py --exchange --parallel-only   # submitted and collected through nbgrader's exchange

It builds a synthetic class in a temporary copy of the course: for each chapter, submissions
cycle through the solution, the known wrong submissions of tests/grading/ch<chapter>.py (partial
credit, cheats, a crashing kernel) and the blank notebook (broken: every answer raises), leaving
out the ones that only burn a timeout or the network. Then, per chapter, it times

    plain execution   every submitted notebook run once in a fresh kernel (nbclient), serially
    serial grading    course-grade-class --workers 1   (scan, autograde, feedback, CSVs)
    parallel grading  course-grade-class --workers N   (N = CPU count)

With --exchange, each submission first goes the way it goes on a hub: the instructor releases the
chapter to an exchange folder, each student submits (nbgrader's ExchangeSubmit, one per student) and
the instructor runs `nbgrader collect`; the collect's time is printed, and grading reads the collected
submitted/ folder. Then it prints seconds per notebook and the ratio of grading to plain execution (`--parallel-only`: only
the last, the instructor's real case; the other columns then read nan), with the load averages
before and after (the machine may be shared: compare runs made back to back).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.grading.fastimport import nbgrader_command
from tests.nbgrader_course import Course, filled_in, solution_answers
from tools.build import CONTENT, chapters, nbgrader_env

SKIP = {"loop", "uses_network", "memory_hog"}  # a timeout, the network, a 4 GiB allocation


def make_class(folder: Path, chapter: str, size: int) -> list[str]:
    course = Course(folder)
    released = course.release(chapter)
    answers = solution_answers(chapter)
    cases = importlib.import_module(f"tests.grading.ch{chapter}").STUDENTS
    kinds = [("perfect", None), *[(name, sub) for name, sub in cases.items() if name not in SKIP], ("blank", "blank")]
    students = []
    for index in range(size):
        kind, submission = kinds[index % len(kinds)]
        student = f"s{index:02d}_{kind}"
        if submission == "blank":
            nb = released
        else:
            nb = filled_in(released, answers, submission.edits if submission else {})
            for cell in nb.cells:
                cell.source = cell.source.replace("{COURSE}", str(folder))
        course.submit(student, chapter, nb, submission.files if submission not in (None, "blank") else None)
        students.append(student)
    return students


def through_exchange(folder: Path, chapter: str, students: list[str]) -> float:
    """Release `chapter` to an exchange in `folder`, submit each student's notebook from a folder of their
    own, and collect: submitted/ then holds what nbgrader collected. Returns the collect's seconds."""
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.exchange import ExchangeFactory

    from helpers.grading.course import load_config

    os.environ["COURSE_EXCHANGE"] = str(folder / "exchange")  # nbgrader_config.py's hub setting
    env = nbgrader_env()
    (folder / "exchange").mkdir(exist_ok=True)
    subprocess.run(nbgrader_command("release_assignment", chapter, "--force"), cwd=folder, env=env, check=True,
                   capture_output=True)
    for student in students:
        work = folder / "students" / student
        work.mkdir(parents=True)
        shutil.move(folder / "submitted" / student / chapter, work / chapter)
        config = load_config(folder)
        config.CourseDirectory.assignment_id, config.CourseDirectory.student_id = chapter, student
        config.Exchange.assignment_dir, config.Exchange.cache = str(work), str(folder / "cache" / student)
        ExchangeFactory(config=config).Submit(coursedir=CourseDirectory(config=config), config=config,
                                              authenticator=Authenticator(config=config)).start()
    shutil.rmtree(folder / "submitted")
    start = time.perf_counter()
    run = subprocess.run(nbgrader_command("collect", chapter, "--update"), cwd=folder, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    seconds = time.perf_counter() - start
    collected = sorted(p.parent.parent.name for p in (folder / "submitted").glob(f"*/{chapter}/{chapter}.ipynb"))
    assert collected == sorted(students), f"collected {len(collected)} of {len(students)} submissions"
    return seconds


def plain_execution(folder: Path, chapter: str, students: list[str]) -> float:
    start = time.perf_counter()
    for student in students:
        path = folder / "submitted" / student / chapter / f"{chapter}.ipynb"
        nb = nbformat.read(str(path), as_version=4)
        client = NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        except DeadKernelError:  # the crashing submission: it costs what it ran before dying
            pass
    return time.perf_counter() - start


def grade(folder: Path, chapter: str, workers: int, *options: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "helpers.grading.classroom", chapter, "--course", str(folder),
                    "--workers", str(workers), *options], cwd=folder, env=nbgrader_env(), check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30, help="submissions in the class, spread over the chapters")
    parser.add_argument("--chapter", action="append", help="only these chapters (repeatable)")
    parser.add_argument("--no-zygote", action="store_true", help="pass --no-zygote to course-grade-class")
    parser.add_argument("--parallel-only", action="store_true", help="time only the parallel grading")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel graders (default: CPU count)")
    parser.add_argument("--exchange", action="store_true", help="submit and collect through nbgrader's exchange first")
    args = parser.parse_args()
    load_before = os.getloadavg()
    graded = [c for c in chapters() if (CONTENT / "solutions" / f"{c}.py").exists()]
    graded = [c for c in graded if c in args.chapter] if args.chapter else graded
    sizes = {c: args.size // len(graded) + (i < args.size % len(graded)) for i, c in enumerate(graded)}
    workers = args.workers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter, size in sizes.items():
            serial, parallel = Path(tmp, chapter, "serial"), Path(tmp, chapter, "parallel")
            students = make_class(serial, chapter, size)
            make_class(parallel, chapter, size)
            if args.exchange:
                collect = through_exchange(parallel, chapter, students)
                print(f"{chapter}: {size} submissions collected from the exchange in {collect:.1f} s")
            nan = float("nan")
            t_plain = nan if args.parallel_only else plain_execution(serial, chapter, students)
            options = ("--no-zygote",) if args.no_zygote else ()
            t_serial = nan if args.parallel_only else grade(serial, chapter, 1, *options)
            t_parallel = grade(parallel, chapter, workers, *options)
            rows.append((chapter, size, t_plain, t_serial, t_parallel))
            shutil.rmtree(Path(tmp, chapter))
    print(f"| chapter | notebooks | plain execution (s/nb) | serial grading (s/nb) | parallel grading, {workers} workers "
          "(s/nb) | serial / plain | serial / parallel |")
    print("|---|---|---|---|---|---|---|")
    for chapter, n, plain, serial, parallel in rows:
        print(f"| {chapter} | {n} | {plain / n:.2f} | {serial / n:.2f} | {parallel / n:.2f} | "
              f"{serial / plain:.2f} | {serial / parallel:.2f} |")
    n = sum(r[1] for r in rows)
    plain, serial, parallel = (sum(r[i] for r in rows) for i in (2, 3, 4))
    print(f"| all | {n} | {plain / n:.2f} | {serial / n:.2f} | {parallel / n:.2f} | {serial / plain:.2f} | "
          f"{serial / parallel:.2f} |")
    print(f"\ntotal: plain {plain:.1f} s, serial grading {serial:.1f} s, parallel grading {parallel:.1f} s")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          "load averages (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
              *load_before, *os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
