"""The instructor's path from an LMS download: `course-grade-class A --zip-collect` unpacks
downloaded/A/archive/*.zip into submitted/ (nbgrader zip_collect, with the file-name pattern of
nbgrader_config.py), then grades and writes the per-exercise CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile

import nbformat
import pytest

from tools.build import nbgrader_env

from .nbgrader_course import Course, filled_in, solution_answers

pytestmark = pytest.mark.slow

CHAPTER = "01_attention"


def test_zip_collect_then_grade(tmp_path):
    course = Course(tmp_path)
    released = course.release(CHAPTER)
    archive = course.root / "downloaded" / CHAPTER / "archive"
    archive.mkdir(parents=True)
    solved = filled_in(released, solution_answers(CHAPTER))
    with zipfile.ZipFile(archive / "submissions.zip", "w") as bundle:
        # Canvas-style names: <student>_<ids>_<notebook>.ipynb, and the plain <student>_<notebook>.ipynb
        bundle.writestr(f"alice_12345_67890_{CHAPTER}.ipynb", nbformat.writes(solved))
        bundle.writestr(f"bob_{CHAPTER}.ipynb", nbformat.writes(released))
    run = subprocess.run([sys.executable, "-m", "helpers.grading.classroom", CHAPTER, "--zip-collect",
                          "--workers", "2"], cwd=course.root, env=nbgrader_env(), capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (course.root / "submitted" / "alice" / CHAPTER / f"{CHAPTER}.ipynb").exists()
    with open(course.root / f"grades-{CHAPTER}.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["total"] == "23" and rows["bob"]["total"] == "0"
    assert [key for key in rows["alice"] if key.startswith("ex")] == [f"ex{i}" for i in range(1, 9)]
