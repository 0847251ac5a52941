"""The course folder, its assignments, and nbgrader driven in-process (one import, many notebooks)."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nbformat

INSTALLED_COURSE = Path(__file__).resolve().parents[2]
CONFIG = "nbgrader_config.py"


class GradingError(Exception):
    """A problem the user must fix (a missing course folder, an unreadable notebook, ...)."""


def find_course(folder: str | os.PathLike | None = None) -> Path:
    """`folder`, else the working directory if it holds nbgrader_config.py, else the course this
    package was installed from (an editable install lives in the repository)."""
    candidates = [Path(folder)] if folder else [Path.cwd(), INSTALLED_COURSE]
    for candidate in candidates:
        if (candidate / CONFIG).is_file() and (candidate / "solutions").is_dir():
            return candidate.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise GradingError(f"no course found in {where}: a course folder holds {CONFIG} and solutions/ "
                       f"(install the course with `python -m pip install -e .` from its repository)")


def assignments(course: Path) -> list[str]:
    return sorted(p.name for p in (course / "solutions").iterdir()
                  if (p / f"{p.name}.ipynb").is_file())


@dataclass(frozen=True)
class Assignment:
    """What the solution notebook of an assignment says about its cells."""
    course: Path
    name: str

    @cached_property
    def source(self) -> nbformat.NotebookNode:
        path = self.course / "solutions" / self.name / f"{self.name}.ipynb"
        if not path.is_file():
            raise GradingError(f"no assignment {self.name!r}; assignments: {', '.join(assignments(self.course))}")
        return nbformat.read(str(path), as_version=4)

    def _cells(self, key: str) -> dict[str, nbformat.NotebookNode]:
        return {c.metadata["nbgrader"]["grade_id"]: c for c in self.source.cells
                if c.metadata.get("nbgrader", {}).get(key)}

    @cached_property
    def source_ids(self) -> list[str]:
        """Every cell's grade id, in notebook order."""
        return [c.metadata["nbgrader"]["grade_id"] for c in self.source.cells if "nbgrader" in c.metadata]

    @cached_property
    def points(self) -> dict[str, float]:
        """Grade cell id -> points, in notebook order."""
        return {cid: c.metadata["nbgrader"]["points"] for cid, c in self._cells("grade").items()}

    @cached_property
    def answer_cells(self) -> list[str]:
        return [cid for cid, c in self._cells("solution").items() if c.cell_type == "code"]

    @cached_property
    def manual_cells(self) -> set[str]:
        """Grade cells a person grades: written answers (an answer cell that is also a grade cell)."""
        return {cid for cid, c in self._cells("grade").items() if c.metadata["nbgrader"].get("solution")}

    @cached_property
    def hidden_cells(self) -> set[str]:
        return {cid for cid, c in self._cells("grade").items() if "### BEGIN HIDDEN TESTS" in c.source}

    @property
    def total(self) -> float:
        return sum(self.points.values())


def exercise_of(cell_id: str) -> str:
    """'ex3-hidden' -> 'ex3' (the course's cell naming: exN, exN-answer, exN-test, exN-hidden)."""
    return cell_id.split("-")[0]


def load_config(course: Path, **overrides):
    """nbgrader_config.py of `course`, with `Section__option` keyword overrides."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader(CONFIG, path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    for key, value in overrides.items():
        section, option = key.split("__")
        setattr(getattr(config, section), option, value)
    return config


def quiet_nbgrader() -> None:
    """nbgrader and SQLAlchemy chatter (checksum warnings for hidden tests, session warnings)."""
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    logging.getLogger("traitlets").setLevel(logging.ERROR)


def nbgrader_api(course: Path, **overrides):
    """An in-process nbgrader API for `course`: nbgrader is imported once, whatever the class size."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    quiet_nbgrader()
    config = load_config(course, **overrides)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def copy_assignment(course: Path, assignment: str, target: Path) -> Path:
    """A throwaway course in `target` holding only the configuration and one assignment's source."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(course / CONFIG, target / CONFIG)
    shutil.copytree(course / "solutions" / assignment, target / "solutions" / assignment)
    return target
