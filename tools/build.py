"""Build every derived notebook from its one authored source, or check that none is stale.

    python tools/build.py                 # build all chapters
    python tools/build.py 01_attention    # build one chapter
    python tools/build.py --only theory   # only the theory notebooks (or --only exercises)
    python tools/build.py --check         # exit 1 if a derived file differs from what a build makes

Sources (jupytext percent format, reviewed and diffed as plain Python):
    content/notebooks/NN_topic.py  ->  notebooks/NN_topic.ipynb              executed, outputs kept
    content/solutions/NN_topic.py  ->  solutions/NN_topic/NN_topic.ipynb     nbgrader source, no outputs
                                   ->  exercises/NN_topic/NN_topic.ipynb     `nbgrader generate_assignment`

Cell headers in the sources carry what the notebooks need:
    # %% [markdown] id="masking"             a stable cell id (otherwise one is derived)
    # %% id="ex6-answer" kind="answer"       nbgrader: autograded answer (### BEGIN/END SOLUTION)
    # %% id="ex6-test" kind="test" points=2  nbgrader: autograded test, locked
    # %% [markdown] id="ex9" kind="manual" points=3    nbgrader: manually graded written answer
Every other cell of a solution notebook becomes a locked read-only cell.
Points are written only there: the build adds the points column to the intro's `| # | exercise |`
table and the number after each statement's `*Points*` (exercise_points), and refuses a number
written by hand in either place.
A theory notebook is executed only when its cells changed (or with --execute).

Every figure is captioned: a code cell whose executed output holds a figure (image/png) must be
followed directly by a markdown cell that begins with `*What to see:*` and says what to see in it.
A build, and `--check`, fail on an uncaptioned figure, naming the notebook and the cell id.

An executed theory notebook records what its outputs depended on (notebook metadata
"transformer_internals"): a hash of the code of every `helpers` module it imports, directly or through
other helpers modules (docstrings and comments left out: fixing one re-executes nothing), and a hash
of the pinned dependencies in pyproject.toml. `--check` reports the
notebook stale when either changed, and a build re-executes it.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
from pathlib import Path

# First, so that nbformat (imported by jupytext) starts without its slow optional import.
from helpers.grading.fastimport import nbgrader_command

# isort: split
import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "content"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# The course's Python: CI's and the hub image's (deploy/z2jh/Dockerfile).
COURSE_PYTHON = "3.11.7"
# What ipykernel reports as language_info on that Python (tests/test_build.py compares it with ipykernel's own).
# JupyterLab writes the kernel's language_info into a notebook as soon as its kernel starts, and a notebook
# whose language_info that changes is marked unsaved before any edit: a bare {"name": "python"} made every
# exercise and theory notebook ask to be saved when closed. With this one they open clean on that Python;
# on another Python version only "version" differs, and JupyterLab asks once (the saved copy then matches).
LANGUAGE_INFO = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                 "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                 "pygments_lexer": "ipython3", "version": COURSE_PYTHON}
THEORY_TIMEOUT = 600  # seconds per cell while building; the budgets are measured by tools/bench.py


class BuildError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Source -> notebook
# ---------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "cell"


def _assign_ids(nb: nbformat.NotebookNode) -> None:
    """Stable ids: an explicit `id`, else the slug of a markdown heading, else `<anchor>-<n>`."""
    used: set[str] = set()
    anchor, count = "top", 0
    for cell in nb.cells:
        explicit = cell.metadata.pop("id", None)
        heading = re.match(r"#+\s+(.*)", cell.source) if cell.cell_type == "markdown" else None
        if explicit:
            cell_id, anchor, count = explicit, explicit, 0
        elif heading:
            cell_id, anchor, count = _slug(heading.group(1)), _slug(heading.group(1)), 0
        else:
            count += 1
            cell_id = f"{anchor}-{count}"
        base, n = cell_id, 1
        while cell_id in used:
            n += 1
            cell_id = f"{base}-{n}"
        if explicit and cell_id != explicit:
            raise BuildError(f"cell id {explicit!r} is used twice")
        used.add(cell_id)
        cell.id = cell_id


def _nbgrader_metadata(nb: nbformat.NotebookNode, source: Path) -> None:
    for cell in nb.cells:
        kind = cell.metadata.pop("kind", "readonly")
        points = cell.metadata.pop("points", None)
        text = cell.source
        has_solution = "### BEGIN SOLUTION" in text
        has_hidden = "### BEGIN HIDDEN TESTS" in text
        meta = {"grade": False, "grade_id": cell.id, "locked": True, "schema_version": 3,
                "solution": False, "task": False}
        if kind == "answer":
            if cell.cell_type != "code" or not has_solution:
                raise BuildError(f"{source.name}: answer cell {cell.id} needs ### BEGIN/END SOLUTION")
            meta.update(locked=False, solution=True)
        elif kind == "test":
            if cell.cell_type != "code" or not points:
                raise BuildError(f"{source.name}: test cell {cell.id} needs points")
            meta.update(grade=True, points=points)
        elif kind == "manual":
            if cell.cell_type != "markdown" or not points or not has_solution:
                raise BuildError(f"{source.name}: manual cell {cell.id} needs points and a solution")
            meta.update(grade=True, locked=False, solution=True, points=points)
        elif kind != "readonly":
            raise BuildError(f"{source.name}: cell {cell.id} has unknown kind {kind!r}")
        if kind != "answer" and kind != "manual" and has_solution:
            raise BuildError(f"{source.name}: cell {cell.id} has a solution region but kind={kind}")
        if has_hidden and kind != "test":
            raise BuildError(f"{source.name}: hidden tests outside a test cell ({cell.id})")
        cell.metadata["nbgrader"] = meta


POINTS = "*Points*"
TABLE_HEADER = "| # | exercise |"
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}


def exercise_points(nb: nbformat.NotebookNode) -> dict[str, int]:
    """Points per exercise and part, summed from the graded cells' headers (`points=N`): the cells
    ex3a-test and ex3a-hidden count for "ex3a" and for "ex3"."""
    points: dict[str, int] = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        match = re.match(r"(ex(\d+))([a-z]?)(?:-|$)", cell.id)
        if meta.get("grade") and match:
            for key in {match.group(1) + match.group(3), match.group(1)}:
                points[key] = points.get(key, 0) + int(meta["points"])
    return points


def _points_text(exercise: str, points: dict[str, int]) -> str:
    """"3", or for an exercise in parts "5 in two parts (2 + 3)"."""
    parts = sorted(key for key in points if re.fullmatch(rf"{exercise}[a-z]", key))
    if not parts:
        return str(points[exercise])
    return (f"{points[exercise]} in {NUMBER_WORDS.get(len(parts), len(parts))} parts "
            f"({' + '.join(str(points[p]) for p in parts)})")


def _fill_points(nb: nbformat.NotebookNode, source: Path) -> None:
    """Write each exercise's points where the learner reads them, from the cell headers (the one
    place they are authored): a points column in the intro's `| # | exercise |` table, and the number
    after every `*Points*` of a statement (ex1, ex3a, ...)."""
    points = exercise_points(nb)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        if re.search(r"\*Points\* \d", cell.source):
            raise BuildError(f"{source.name}: cell {cell.id} writes a number after {POINTS}; write {POINTS} "
                             f"alone, the build adds the points from the cell headers")
        if re.fullmatch(r"ex\d+[a-z]?", cell.id) and cell.id in points and POINTS not in cell.source:
            raise BuildError(f"{source.name}: the statement {cell.id} does not say {POINTS} (the build adds the number)")
        if POINTS in cell.source:
            exercise = re.match(r"ex\d+[a-z]?", cell.id)
            if exercise is None or exercise.group(0) not in points:
                raise BuildError(f"{source.name}: cell {cell.id} says {POINTS} but is no graded exercise's statement")
            cell.source = cell.source.replace(POINTS, f"{POINTS} {_points_text(exercise.group(0), points)}")
        if TABLE_HEADER in cell.source:
            lines = cell.source.split("\n")
            start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
            if lines[start] != f"{TABLE_HEADER}" or not lines[start + 1].startswith("|---|---|"):
                raise BuildError(f"{source.name}: the exercise table of cell {cell.id} must be `{TABLE_HEADER}` "
                                 f"without a points column; the build adds it")
            lines[start] += " points |"
            lines[start + 1] += "---|"
            row = start + 2
            while row < len(lines) and lines[row].startswith("|"):
                number = lines[row].split("|")[1].strip()
                if f"ex{number}" not in points:
                    raise BuildError(f"{source.name}: the exercise table names exercise {number!r}, which has no "
                                     f"graded cells (ids ex{number}-...)")
                lines[row] += f" {points[f'ex{number}']} |"
                row += 1
            cell.source = "\n".join(lines)


def notebook_from_source(source: Path, *, graded: bool) -> nbformat.NotebookNode:
    nb = jupytext.read(source)
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    _assign_ids(nb)
    if graded:
        _nbgrader_metadata(nb, source)
        _fill_points(nb, source)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nb


def _cells_signature(nb: nbformat.NotebookNode) -> list[tuple]:
    """What a theory notebook's source determines: everything except outputs."""
    return [(c.id, c.cell_type, c.source, dict(c.metadata)) for c in nb.cells]


# ---------------------------------------------------------------------------------------------
# What an executed notebook depended on
# ---------------------------------------------------------------------------------------------

DEPENDS_KEY = "transformer_internals"


def _imported_modules(code: str, package: str | None = None) -> set[str]:
    """Absolute names of the modules `code` imports (relative imports resolved against `package`)."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from helpers import plots`
    return names


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "helpers":
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def helper_dependencies(nb: nbformat.NotebookNode) -> list[Path]:
    """Every helpers module a notebook's code imports, followed through the modules' own imports."""
    todo = {"helpers"}  # importing any submodule runs the package's __init__
    for cell in nb.cells:
        if cell.cell_type == "code":
            todo |= _imported_modules(cell.source)
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo |= _imported_modules(path.read_text(), package)
        parent = name.rpartition(".")[0]
        if parent:
            todo.add(parent)
    return sorted(set(seen.values()))


def _pins() -> list[str]:
    """The `dependencies = [...]` entries of pyproject.toml (the course's one list of pins)."""
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    if block is None:
        raise BuildError("pyproject.toml has no `dependencies = [...]` list")
    return re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)


def code_only(source: str) -> str:
    """A module's code without its docstrings, comments and blank lines: what its behaviour depends on.

    Docstrings are found with `ast` (a module's, class's or function's first statement when it is a
    string), comments with `tokenize`; both are blanked by position in the text, so the result does
    not depend on how a Python version prints or tokenizes the rest. Code that does not parse is kept
    whole (its import fails anyway)."""
    try:
        tree = ast.parse(source)
        comments = [token for token in tokenize.generate_tokens(io.StringIO(source).readline)
                    if token.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError):
        return source
    lines = source.splitlines()
    spans = [((t.start[0], t.start[1]), (t.end[0], t.end[1])) for t in comments]
    def column(row: int, offset: int) -> int:  # ast counts UTF-8 bytes, tokenize characters
        return len(lines[row - 1].encode()[:offset].decode())

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            doc = body[0]
            spans.append(((doc.lineno, column(doc.lineno, doc.col_offset)),
                          (doc.end_lineno, column(doc.end_lineno, doc.end_col_offset))))
    for (row, col), (end_row, end_col) in sorted(spans, reverse=True):  # later spans first: positions stay valid
        if row == end_row:
            lines[row - 1] = lines[row - 1][:col] + lines[row - 1][end_col:]
        else:
            lines[row - 1:end_row] = [lines[row - 1][:col] + lines[end_row - 1][end_col:]]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def dependency_record(nb: nbformat.NotebookNode) -> dict[str, object]:
    """The helpers modules a notebook imports and one hash of their code (code_only: a docstring or
    comment fix changes nothing), and the hash of the pinned dependencies."""
    files = helper_dependencies(nb)
    digest = hashlib.sha256()
    for path in files:
        code = code_only(path.read_text()).encode()
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + code + b"\0")
    return {
        "helpers": [path.relative_to(ROOT).as_posix() for path in files],
        "helpers_sha256": digest.hexdigest(),
        "pins_sha256": hashlib.sha256("\n".join(_pins()).encode()).hexdigest(),
    }


def _dependencies_changed(nb: nbformat.NotebookNode) -> str | None:
    """None if the recorded dependencies are today's, else what changed."""
    recorded = nb.metadata.get(DEPENDS_KEY)
    if not recorded:
        return "it records no dependencies"
    now = dependency_record(nb)
    if recorded.get("pins_sha256") != now["pins_sha256"]:
        return "the pinned dependencies in pyproject.toml changed since it was executed"
    if recorded.get("helpers_sha256") != now["helpers_sha256"]:
        return f"a helpers module it imports changed since it was executed ({', '.join(now['helpers'])})"
    return None


CAPTION = "*What to see:*"


def caption_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """Every code cell whose outputs hold a figure (image/png) must be followed directly by a
    markdown cell beginning with CAPTION. One message per uncaptioned figure cell."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if not any("image/png" in output.get("data", {}) for output in cell.get("outputs", [])):
            continue
        after = nb.cells[index + 1] if index + 1 < len(nb.cells) else None
        if after is None or after.cell_type != "markdown" or not after.source.lstrip().startswith(CAPTION):
            problems.append(
                f"{name}: cell {cell.id} draws a figure but the next cell is not its caption; add, directly "
                f"after it in the source, a markdown cell that begins with `{CAPTION}` and says what to see "
                f"in the figure"
            )
    return problems


def _write(nb: nbformat.NotebookNode, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


# ---------------------------------------------------------------------------------------------
# Chapters
# ---------------------------------------------------------------------------------------------


def chapters() -> list[str]:
    names = {p.stem for p in (CONTENT / "solutions").glob("[0-9][0-9]_*.py")}
    names |= {p.stem for p in (CONTENT / "notebooks").glob("[0-9][0-9]_*.py")}
    return sorted(names)


def execute(nb: nbformat.NotebookNode, cwd: Path) -> None:
    client = NotebookClient(nb, timeout=THEORY_TIMEOUT, kernel_name="python3", record_timing=False, coalesce_streams=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO),
                   DEPENDS_KEY: dependency_record(nb)}


def nbgrader_env() -> dict[str, str]:
    """nbgrader runs `alembic` by name: put this interpreter's bin/ first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def generate_exercise(chapter: str, course: Path) -> Path:
    """Run `nbgrader generate_assignment` in `course` (a folder with nbgrader_config.py)."""
    run = subprocess.run(
        nbgrader_command("generate_assignment", chapter, "--force", "--no-db"),
        cwd=course, env=nbgrader_env(), capture_output=True, text=True,
    )
    if run.returncode != 0:
        raise BuildError(f"nbgrader generate_assignment {chapter} failed:\n{run.stdout}\n{run.stderr}")
    return course / "exercises" / chapter / f"{chapter}.ipynb"


def build(chapter: str, *, force_execute: bool = False, only: str | None = None) -> None:
    solution_src = CONTENT / "solutions" / f"{chapter}.py"
    if solution_src.exists() and only in (None, "exercises"):
        _write(notebook_from_source(solution_src, graded=True), ROOT / "solutions" / chapter / f"{chapter}.ipynb")
        generate_exercise(chapter, ROOT)
        print(f"built solutions/{chapter} and exercises/{chapter}")
    theory_src = CONTENT / "notebooks" / f"{chapter}.py"
    if theory_src.exists() and only in (None, "theory"):
        target = ROOT / "notebooks" / f"{chapter}.ipynb"
        nb = notebook_from_source(theory_src, graded=False)
        current = nbformat.read(str(target), as_version=4) if target.exists() else None
        if force_execute or current is None or _cells_signature(current) != _cells_signature(nb) \
                or not _is_executed(current) or _dependencies_changed(current):
            start = time.perf_counter()
            execute(nb, target.parent)
            seconds = time.perf_counter() - start
            uncaptioned = caption_problems(nb, f"notebooks/{chapter}.ipynb")
            if uncaptioned:
                raise BuildError("\n".join(uncaptioned))
            _write(nb, target)
            print(f"executed notebooks/{chapter}.ipynb in {seconds:.1f} s")
        else:
            uncaptioned = caption_problems(current, f"notebooks/{chapter}.ipynb")
            if uncaptioned:
                raise BuildError("\n".join(uncaptioned))
            if _metadata_stale(current):  # outputs still right: only the notebook's metadata is rewritten
                current.metadata.update(kernelspec=dict(KERNELSPEC), language_info=dict(LANGUAGE_INFO))
                _write(current, target)
                print(f"notebooks/{chapter}.ipynb: metadata updated (outputs up to date)")
            else:
                print(f"notebooks/{chapter}.ipynb is up to date")


def _metadata_stale(nb: nbformat.NotebookNode) -> bool:
    return nb.metadata.get("kernelspec") != KERNELSPEC or nb.metadata.get("language_info") != LANGUAGE_INFO


def _is_executed(nb: nbformat.NotebookNode) -> bool:
    return all(c.execution_count is not None for c in nb.cells if c.cell_type == "code" and c.source.strip())


def check(chapter: str) -> list[str]:
    """Problems that make a derived file stale; nothing is executed or written in the repository."""
    problems = []
    solution_src = CONTENT / "solutions" / f"{chapter}.py"
    if solution_src.exists():
        solution = ROOT / "solutions" / chapter / f"{chapter}.ipynb"
        with tempfile.TemporaryDirectory() as tmp:
            course = Path(tmp)
            shutil.copy(ROOT / "nbgrader_config.py", course)
            built = course / "solutions" / chapter / f"{chapter}.ipynb"
            _write(notebook_from_source(solution_src, graded=True), built)
            if not solution.exists() or solution.read_bytes() != built.read_bytes():
                problems.append(f"solutions/{chapter}/{chapter}.ipynb is stale: run python tools/build.py {chapter}")
            exercise = generate_exercise(chapter, course)
            committed = ROOT / "exercises" / chapter / f"{chapter}.ipynb"
            if not committed.exists() or not filecmp.cmp(committed, exercise, shallow=False):
                problems.append(f"exercises/{chapter}/{chapter}.ipynb differs from what nbgrader generates: "
                                f"run python tools/build.py {chapter}")
            extra = sorted(p.name for p in committed.parent.iterdir() if p.name != committed.name) \
                if committed.parent.exists() else []
            if extra:
                problems.append(f"exercises/{chapter}/ holds files nbgrader does not generate: {extra}")
    theory_src = CONTENT / "notebooks" / f"{chapter}.py"
    if theory_src.exists():
        target = ROOT / "notebooks" / f"{chapter}.ipynb"
        if not target.exists():
            problems.append(f"notebooks/{chapter}.ipynb is missing: run python tools/build.py {chapter}")
        else:
            current = nbformat.read(str(target), as_version=4)
            if _cells_signature(current) != _cells_signature(notebook_from_source(theory_src, graded=False)):
                problems.append(f"notebooks/{chapter}.ipynb is stale: run python tools/build.py {chapter}")
            elif not _is_executed(current):
                problems.append(f"notebooks/{chapter}.ipynb is not executed: run python tools/build.py --execute {chapter}")
            elif (why := _dependencies_changed(current)):
                problems.append(f"notebooks/{chapter}.ipynb is stale: {why}; run python tools/build.py {chapter}")
            elif _metadata_stale(current):
                problems.append(f"notebooks/{chapter}.ipynb has another kernelspec or language_info: "
                                f"run python tools/build.py --only theory {chapter}")
            problems += caption_problems(current, f"notebooks/{chapter}.ipynb")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chapters", nargs="*", help="chapters such as 01_attention (default: all)")
    parser.add_argument("--check", action="store_true", help="report stale derived files; change nothing")
    parser.add_argument("--execute", action="store_true", help="re-execute theory notebooks even if unchanged")
    parser.add_argument("--only", choices=["theory", "exercises"], help="build only theory notebooks, or only solutions + exercises")
    args = parser.parse_args(argv)
    selected = args.chapters or chapters()
    unknown = sorted(set(selected) - set(chapters()))
    if unknown:
        parser.error(f"no sources for {unknown}; chapters: {chapters()}")
    if args.check:
        problems = [p for chapter in selected for p in check(chapter)]
        for problem in problems:
            print(problem)
        print("derived notebooks are up to date" if not problems else f"{len(problems)} stale")
        return 1 if problems else 0
    for chapter in selected:
        try:
            build(chapter, force_execute=args.execute, only=args.only)
        except BuildError as error:
            print(f"build failed: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
