"""The course folder, its assignments, and nbgrader driven in-process (one import, many notebooks)."""

from __future__ import annotations

import hashlib
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


def alembic_head() -> str:
    """The gradebook schema's alembic revision, read in-process (a hundredth of a second)."""
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    return ScriptDirectory(ALEMBIC_DIR).get_current_head()


def in_process_alembic() -> None:
    """nbgrader stamps a new gradebook with the revision printed by an `alembic heads` subprocess,
    which imports SQLAlchemy and alembic again: 2 to 9 s of a self-grade on 2 cores, and a
    FileNotFoundError when the environment's bin/ is not on PATH. Same answer, read in-process."""
    import nbgrader.api

    nbgrader.api.get_alembic_version = alembic_head


def nbgrader_api(course: Path, **overrides):
    """An in-process nbgrader API for `course`: nbgrader is imported once, whatever the class size."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    quiet_nbgrader()
    in_process_alembic()
    config = load_config(course, **overrides)
    return NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)


def copy_assignment(course: Path, assignment: str, target: Path) -> Path:
    """A throwaway course in `target` holding only the configuration and one assignment's source."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(course / CONFIG, target / CONFIG)
    shutil.copytree(course / "solutions" / assignment, target / "solutions" / assignment)
    return target


def cache_folder() -> Path:
    """Where prepared gradebooks are kept: $COURSE_GRADE_CACHE, else the user's cache folder."""
    if os.environ.get("COURSE_GRADE_CACHE"):
        return Path(os.environ["COURSE_GRADE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer-internals" / "gradebooks"


def source_key(course: Path, assignment: str) -> str:
    """A digest of everything `generate_assignment` reads: nbgrader's version, the configuration and
    every file of the assignment's source folder (names and bytes)."""
    import nbgrader

    digest = hashlib.sha256(f"nbgrader {nbgrader.__version__}\0".encode())
    digest.update((course / CONFIG).read_bytes() + b"\0")
    folder = course / "solutions" / assignment
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def prepare_gradebook(api, course: Path, assignment: str, work: Path) -> bool:
    """Give the throwaway course `work` (a copy of `assignment` from `course`) a gradebook that holds
    the assignment, as `generate_assignment` makes it: copied from the cache when this exact source
    was prepared before, else generated (and cached when the cache folder is writable).
    Returns whether it came from the cache; raises GradingError when nbgrader cannot prepare it."""
    database = work / "gradebook.db"
    cached = cache_folder() / f"{assignment}-{source_key(course, assignment)}.db"
    if cached.is_file():
        shutil.copyfile(cached, database)
        return True
    made = api.generate_assignment(assignment, force=True, create=True)
    if not made["success"]:
        raise GradingError(f"nbgrader could not prepare {assignment}:\n{made.get('log', '')}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(database, partial)
        os.replace(partial, cached)  # atomic: a concurrent self-grade sees all of it or nothing
    except OSError:
        pass  # no writable cache: the next run generates again
    return False
