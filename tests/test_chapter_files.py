"""A chapter is a set of files by convention (CONTRIBUTING.md, "Adding a chapter"); one left out must
not go unnoticed (test_grading.py, for one, grades nothing for a chapter without a grading file)."""

from __future__ import annotations

import ast

from tools.build import ROOT, chapters

# {c}: the chapter (05_blocks), {n}: its number (05), {t}: its topic (blocks)
CHAPTER_FILES = (
    "content/notebooks/{c}.py",  # the theory notebook's source
    "content/solutions/{c}.py",  # the exercises, solutions and hidden tests
    "notebooks/{c}.ipynb",  # derived: python tools/build.py {c}
    "solutions/{c}/{c}.ipynb",  # derived
    "exercises/{c}/{c}.ipynb",  # derived
    "helpers/{t}",  # the reference implementation: helpers/{t}.py or the package helpers/{t}/
    "helpers/checks/{t}.py",  # the checks and their mistake catalogues
    "tests/test_{t}.py",  # the reference against oracles
    "tests/test_checks_{t}.py",  # the checks accept right answers, name wrong ones
    "tests/loops_{t}.py",  # other correct answers, written with loops
    "tests/grading/ch{n}_{t}.py",  # known submissions for the grading round trip
    "tests/uncatalogued/ch{n}_{t}.py",  # wrong answers no catalogue names
)


def missing_files(chapter: str, root=ROOT) -> list[str]:
    number, topic = chapter.split("_", 1)
    missing = []
    for pattern in CHAPTER_FILES:
        path = pattern.format(c=chapter, n=number, t=topic)
        if pattern == "helpers/{t}":
            if not (root / f"{path}.py").is_file() and not (root / path / "__init__.py").is_file():
                missing.append(f"{path}.py")
        elif not (root / path).is_file():
            missing.append(path)
    return missing


def test_every_chapter_has_each_of_its_files():
    missing = {chapter: files for chapter in chapters() if (files := missing_files(chapter))}
    assert not missing, f"chapters without some of their files (CONTRIBUTING.md, 'Adding a chapter'): {missing}"


def test_a_missing_file_is_named(tmp_path):
    """The test can fail: a chapter with only its two sources lacks every other file, each named."""
    for folder in ("content/notebooks", "content/solutions"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "10_example.py").write_text("")
    assert missing_files("10_example", tmp_path) == [
        "notebooks/10_example.ipynb", "solutions/10_example/10_example.ipynb", "exercises/10_example/10_example.ipynb",
        "helpers/example.py", "helpers/checks/example.py", "tests/test_example.py", "tests/test_checks_example.py",
        "tests/loops_example.py", "tests/grading/ch10_example.py", "tests/uncatalogued/ch10_example.py"]
    (tmp_path / "helpers" / "example").mkdir(parents=True)
    (tmp_path / "helpers" / "example" / "__init__.py").write_text("")  # a package is a reference too
    assert "helpers/example.py" not in missing_files("10_example", tmp_path)


def unmapped_modules(root=ROOT) -> list[str]:
    """helpers modules with no row of their own in CONTRIBUTING.md's module map (checks/ and grading/
    are mapped as folders)."""
    text = (root / "CONTRIBUTING.md").read_text(encoding="utf-8")
    modules = [p.relative_to(root).as_posix() for p in sorted((root / "helpers").rglob("*.py"))
               if p.parent.name not in ("checks", "grading")]
    return [m for m in modules if f"`{m}`" not in text]


def test_every_helpers_module_is_in_the_module_map():
    missing = unmapped_modules()
    assert not missing, f"helpers modules without a row in CONTRIBUTING.md's module map: {missing}"


def test_an_unmapped_module_is_named(tmp_path):
    (tmp_path / "helpers" / "checks").mkdir(parents=True)
    for name in ("mapped.py", "new_topic.py", "checks/new_topic.py"):
        (tmp_path / "helpers" / name).write_text("")
    (tmp_path / "CONTRIBUTING.md").write_text("| `helpers/mapped.py` | 01 | something |\n")
    assert unmapped_modules(tmp_path) == ["helpers/new_topic.py"]


# A function longer than this (its docstring aside) is split into named steps (CONTRIBUTING.md, §3):
# a training loop into batches, step and evaluation; a diagnosis into the intermediates it compares.
MAX_FUNCTION_LINES = 50


def long_functions(root=ROOT, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'path:line name (N lines)' for each function under helpers/ longer than `limit` lines, docstring excluded."""
    found = []
    for path in sorted((root / "helpers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str) and len(body) > 1
                first = body[1].lineno if docstring else body[0].lineno
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_helpers_is_longer_than_the_limit():
    assert not long_functions(), f"split these into named steps: {long_functions()}"


def test_a_long_function_is_named(tmp_path):
    (tmp_path / "helpers").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "helpers" / "m.py").write_text(f'def f():\n    """Doc."""\n{body}\n\n\ndef g():\n    return 1\n')
    assert long_functions(tmp_path) == [f"helpers/m.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]


def imports_inside_functions(root=ROOT) -> list[str]:
    """'path:line name' for each import of a course module (helpers.*, or relative) inside a function
    under helpers/: a module imports what it uses at its top, so the import graph stays readable and
    acyclic (a lazy import would only hide a cycle)."""
    found = []
    for path in sorted((root / "helpers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    course = (isinstance(inner, ast.ImportFrom) and (inner.level > 0 or (inner.module or "").startswith("helpers"))) \
                        or (isinstance(inner, ast.Import) and any(a.name.startswith("helpers") for a in inner.names))
                    if course:
                        found.append(f"{path.relative_to(root)}:{inner.lineno} {node.name}")
    return found


def test_no_course_module_is_imported_inside_a_function():
    assert not imports_inside_functions(), imports_inside_functions()
