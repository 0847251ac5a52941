"""`course-scan`: read every submitted answer cell for code a kernel cannot be trusted to refuse.

    course-scan 01_attention            # submitted/<student>/01_attention/*.ipynb

The checks refuse cheats at run time, but they run in the student's kernel. This scan reads the
code instead, before grading, and reports per student and exercise:

    reference_import  imports the chapter's reference implementation (helpers.<topic>)
    checks_import     imports the course's checks from an answer
    private_name      uses a private name of the course's package (helpers.bugs._assignment, any
                      helpers name starting with _): internals a learner has no reason to touch
    torch_builtin     uses the torch built-in the chapter asks students to write
    patching          assigns to an attribute of a module (torch.allclose = ...), setattr on one,
                      an item of a course module's object (its FORBIDDEN sets), or edits
                      sys.modules / builtins / globals()
    file_access       opens, lists, copies or deletes files, or names the gradebook or other
                      students' folders
    process           os._exit, sys.exit, exit(), signals, subprocess, os.system, shell escapes (!cmd)
    network           sockets, urllib, http clients
    dynamic_code      exec, eval, compile, __import__, importlib: code the scan cannot read
    unparsable        the cell is not valid Python (the autograder will report the error)
    extra_files       Python files submitted beside the notebook (they could shadow the course's
                      modules; PYTHONSAFEPATH keeps the autograder from importing them)

It never changes a grade: it prints a report and writes scan-<assignment>.csv for the instructor.
Cells scanned: the answer cells, and any cell a student added (nbgrader restores locked cells).
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import nbformat
import torch

from ..checks.core import exporting_modules
from .course import Assignment, GradingError, exercise_of, find_course

MODULE_ROOTS = {"torch", "numpy", "np", "math", "builtins", "sys", "helpers", "F", "nn", "os", "random",
                "functools", "operator", "warnings", "contextlib", "inspect", "types", "IPython", "nbgrader"}
PROCESS_CALLS = {"os._exit", "os.abort", "os.kill", "os.killpg", "os.system", "os.popen", "os.fork", "os.forkpty",
                 "sys.exit", "exit", "quit", "signal.signal", "signal.alarm", "signal.raise_signal"}
PROCESS_MODULES = {"subprocess", "multiprocessing", "ctypes", "pty", "signal", "threading", "asyncio"}
NETWORK_MODULES = {"socket", "urllib", "http", "requests", "httpx", "ftplib", "smtplib", "ssl", "aiohttp"}
FILE_CALLS = {"open", "io.open", "os.open", "os.remove", "os.unlink", "os.rename", "os.replace", "os.listdir",
              "os.scandir", "os.walk", "os.makedirs", "os.mkdir", "os.rmdir", "os.chmod", "os.chdir",
              "os.symlink", "os.link", "os.truncate"}
FILE_MODULES = {"shutil", "glob", "pathlib", "sqlite3", "tempfile", "fileinput", "zipfile", "tarfile", "pickle"}
DYNAMIC_CALLS = {"exec", "eval", "compile", "__import__", "globals", "vars", "getattr"}
COURSE_PATHS = re.compile(r"gradebook|submitted|autograded|feedback[/\\]|solutions[/\\]|\.\./")


@dataclass(frozen=True)
class Finding:
    student: str
    exercise: str
    cell: str
    rule: str
    line: int
    code: str


def _torch_namespaces() -> tuple:
    return (torch, torch.nn.functional, torch.special, torch.linalg, torch.fft, torch.nn.init, torch.Tensor)


def _torch_names(items) -> set[str]:
    """The names an answer would write for forbidden torch built-ins: a function by every public name a
    torch namespace gives it (torch.special.entr, whose C name is special_entr, is `entr`; torch.Tensor.softmax
    is `softmax`), a module's method by its class (MultiheadAttention.forward -> MultiheadAttention)."""
    names = set()
    for item in items:
        if not callable(item) or isinstance(item, ModuleType):
            continue
        module = getattr(item, "__module__", "") or ""
        qualname = getattr(item, "__qualname__", "")
        owner = qualname.split(".")[0]
        if module.startswith("torch.nn.modules") and "." in qualname:
            names.add(owner)
            continue
        public = {name for space in _torch_namespaces() for name in dir(space)
                  if not name.startswith("_") and getattr(space, name, None) is item}
        if public:
            names |= public
        elif module.startswith("torch"):
            names.add(owner if "." in qualname and not owner.startswith("_") else item.__name__)
    return names


def _helpers_names(items) -> tuple[set[str], set[str]]:
    """(course modules, dotted names of course functions/classes) listed in a forbidden tuple."""
    modules, names = set(), set()
    for item in items:
        if isinstance(item, ModuleType) and item.__name__.startswith("helpers."):
            modules.add(item.__name__)
            continue
        module = getattr(item, "__module__", "") or ""
        if callable(item) and module.startswith("helpers.") and not module.startswith("helpers.checks"):
            names |= {f"{path}.{item.__qualname__}" for path in exporting_modules(module, item.__qualname__)}
    return modules, names


@dataclass(frozen=True)
class Rules:
    """What one exercise forbids: the names the scan flags in its answer cells."""
    references: tuple[str, ...]  # course modules an answer may not import (helpers.<topic> first)
    builtins: frozenset[str]  # torch built-ins (scaled_dot_product_attention, MultiheadAttention, ...)
    allowed: frozenset[str] = frozenset()  # reference functions the exercise may import (top_k_route)
    forbidden_helpers: frozenset[str] = frozenset()  # course functions, dotted (helpers.blocks.decoder_forward)

    @property
    def reference(self) -> str:
        return self.references[0]


@dataclass(frozen=True)
class ChapterRules:
    """What a chapter's exercises forbid, read from its checks module `helpers.checks.<topic>`, the one
    place it is declared (the checks refuse the same objects at run time):

    - `FORBIDDEN = {"ex1": (ref, F.gelu, ...), ...}`: per exercise, the modules, course functions and
      torch built-ins an answer may not call or be;
    - `ALLOWED_REFERENCE_BY_EXERCISE = {"ex7": ("top_k_route",)}`: reference functions an exercise may import.

    Besides, no exercise may import the chapter's reference module `helpers.<topic>` (but for its allowed
    functions). A cell a student added serves no exercise the scan can tell, so it is read against the
    union of every exercise's rules.
    """
    topic: str
    forbidden: dict[str, tuple]
    allowed_reference: dict[str, frozenset[str]]

    def exercise(self, exercise: str) -> Rules:
        items = self.forbidden.get(exercise) if exercise in self.forbidden else \
            (tuple(item for items in self.forbidden.values() for item in items) if exercise == "-" else ())
        modules, names = _helpers_names(items)
        own = f"helpers.{self.topic}"
        return Rules((own, *sorted(modules - {own})), frozenset(_torch_names(items)),
                     self.allowed_reference.get(exercise, frozenset()), frozenset(names))

    @property
    def reference(self) -> str:
        return f"helpers.{self.topic}"


def chapter_rules(assignment: str) -> ChapterRules:
    topic = assignment.split("_", 1)[1] if "_" in assignment else assignment
    try:
        checks: ModuleType | None = importlib.import_module(f"helpers.checks.{topic}")
    except ImportError:
        checks = None
    values = vars(checks) if checks else {}
    forbidden = {ex: tuple(items) for ex, items in values.get("FORBIDDEN", {}).items()}
    allowed = {ex: frozenset(names) for ex, names in values.get("ALLOWED_REFERENCE_BY_EXERCISE", {}).items()}
    return ChapterRules(topic, forbidden, allowed)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    if isinstance(node, ast.Call):  # e.g. torch.nn.functional.__dict__ or Path(...).read_text
        inner = _dotted(node.func)
        return ".".join([f"{inner}()" if inner else "()", *reversed(parts)])
    return None


class _Reader(ast.NodeVisitor):
    def __init__(self, reference: str | tuple[str, ...], builtins_: set[str], aliases: dict[str, str],
                 allowed: Collection[str] = (), forbidden_helpers: Collection[str] = ()) -> None:
        self.references = (reference,) if isinstance(reference, str) else tuple(reference)
        self.builtins, self.aliases = builtins_, aliases
        self.allowed = {f"{module}.{name}" for module in self.references for name in allowed}
        self.forbidden_helpers = set(forbidden_helpers)
        self.found: list[tuple[str, int]] = []

    def _is_reference(self, name: str) -> bool:
        def under(prefix: str) -> bool:
            return name == prefix or name.startswith(prefix + ".")
        if any(under(f) for f in self.forbidden_helpers):
            return True
        return any(under(r) for r in self.references) and not any(under(a) for a in self.allowed)

    def _resolve(self, dotted: str) -> str:
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    def _flag(self, rule: str, node: ast.AST) -> None:
        self.found.append((rule, getattr(node, "lineno", 0)))

    @staticmethod
    def _private_helpers_name(name: str) -> bool:
        parts = name.split(".")
        return parts[0] == "helpers" and any(p.startswith("_") and not p.endswith("__") for p in parts[1:])

    def _module(self, name: str, node: ast.AST) -> None:
        root = name.split(".")[0]
        if self._private_helpers_name(name):
            self._flag("private_name", node)
        if self._is_reference(name):
            self._flag("reference_import", node)
        elif name == "helpers.checks" or name.startswith("helpers.checks."):
            self._flag("checks_import", node)
        if root in PROCESS_MODULES:
            self._flag("process", node)
        if root in FILE_MODULES:
            self._flag("file_access", node)
        if root in NETWORK_MODULES:
            self._flag("network", node)
        if root == "importlib":
            self._flag("dynamic_code", node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(alias.name, node)
            self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        for alias in node.names:
            self._module(f"{base}.{alias.name}" if base else alias.name, node)
            if base.split(".")[0] == "torch" and alias.name in self.builtins:
                self._flag("torch_builtin", node)
            self.aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted:
            full = self._resolve(dotted)
            parts = full.split(".")
            if parts[0] == "torch" and any(p in self.builtins for p in parts[1:]):
                self._flag("torch_builtin", node)
            if self._is_reference(full):
                self._flag("reference_import", node)
            if self._private_helpers_name(full):
                self._flag("private_name", node)
            # the chain's prefixes (helpers.diagnostics of helpers.diagnostics.residual_stream) say nothing
            # more, and would flag a module whose allowed function the whole chain names: visit only a call
            # at its root (f(x).y), for that call's own arguments
            inner = node.value
            while isinstance(inner, ast.Attribute):
                inner = inner.value
            if not isinstance(inner, ast.Name):
                self.visit(inner)
            return
        self.generic_visit(node)

    def _target(self, target: ast.AST) -> None:
        if isinstance(target, ast.Attribute):
            dotted = _dotted(target)
            root = dotted.split(".")[0] if dotted else ""
            if root in self.aliases or root in MODULE_ROOTS or root == "__builtins__":
                self._flag("patching", target)
        elif isinstance(target, ast.Subscript):
            dotted = _dotted(target.value) or ""
            if dotted in {"sys.modules", "globals()", "__builtins__", "builtins.__dict__", "vars()"} \
                    or dotted.endswith(".__dict__") or self._resolve(dotted).startswith("helpers."):
                # the last: an item of a course module's object (helpers.checks.attention.FORBIDDEN["ex7"])
                self._flag("patching", target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._target(target)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        dotted = _dotted(node.func) or ""
        full = self._resolve(dotted) if dotted else ""
        name = node.func.attr if isinstance(node.func, ast.Attribute) else full
        if full in {"setattr", "delattr", "object.__setattr__", "object.__delattr__", "type.__setattr__"}:
            self._flag("patching", node)
        if full in PROCESS_CALLS or full.startswith(("os.exec", "os.spawn")):
            self._flag("process", node)
        if full in FILE_CALLS or name in {"read_text", "read_bytes", "write_text", "write_bytes", "unlink", "rmtree"}:
            self._flag("file_access", node)
        if full in DYNAMIC_CALLS - {"getattr", "globals", "vars"} or full.startswith("importlib."):
            self._flag("dynamic_code", node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and COURSE_PATHS.search(node.value):
            self._flag("file_access", node)


_MAGIC = re.compile(r"^\s*(!|%%?(system|sx|bash|sh|script|writefile|run|load)\b)")


def scan_source(source: str, reference: str | tuple[str, ...], builtins_: set[str], aliases: dict[str, str],
                allowed: Collection[str] = (), forbidden_helpers: Collection[str] = ()) -> list[tuple[str, int, str]]:
    """(rule, line, code) for each finding in one cell's source."""
    lines = source.splitlines()
    findings = [("process" if m.group(1) == "!" or m.group(2) in {"system", "sx", "bash", "sh", "script"} else
                 "file_access", number, lines[number - 1].strip())
                for number, line in enumerate(lines, 1) if (m := _MAGIC.match(line))]
    python = "\n".join("" if _MAGIC.match(line) or line.lstrip().startswith("%") else line for line in lines)
    try:
        tree = ast.parse(python)
    except SyntaxError as error:
        return findings + [("unparsable", error.lineno or 0, (error.text or "").strip())]
    reader = _Reader(reference, builtins_, aliases, allowed, forbidden_helpers)
    reader.visit(tree)
    seen = set()
    for rule, number in reader.found:
        if (rule, number) not in seen:
            seen.add((rule, number))
            findings.append((rule, number, lines[number - 1].strip() if 0 < number <= len(lines) else ""))
    return findings


def scan_notebook(nb: nbformat.NotebookNode, assignment: Assignment, student: str = "") -> list[Finding]:
    chapter = chapter_rules(assignment.name)
    everything = chapter.exercise("-")
    known = set(assignment.source_ids)
    answers = set(assignment.answer_cells)
    aliases: dict[str, str] = {}
    findings = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in known and grade_id not in answers:
            # a locked cell (restored by nbgrader): read its imports for aliases only
            try:
                _Reader(everything.references, set(), aliases).visit(ast.parse(cell.source))
            except SyntaxError:
                pass
            continue
        label = grade_id if grade_id in known else f"added cell {index + 1}"
        exercise = exercise_of(grade_id) if grade_id in known else "-"
        rules = chapter.exercise(exercise)
        for rule, line, code in scan_source(cell.source, rules.references, set(rules.builtins), aliases,
                                            rules.allowed, rules.forbidden_helpers):
            findings.append(Finding(student, exercise, label, rule, line, code[:120]))
    return findings


def submitted_notebooks(course: Path, assignment: str) -> dict[str, Path]:
    folder = course / "submitted"
    return {p.parent.parent.name: p for p in sorted(folder.glob(f"*/{assignment}/{assignment}.ipynb"))}


def scan_class(course: Path, assignment: Assignment) -> tuple[list[Finding], dict[str, str]]:
    """Findings for every submission, and the students whose notebook could not be read."""
    findings, unreadable = [], {}
    for student, path in submitted_notebooks(course, assignment.name).items():
        try:
            nb = nbformat.read(str(path), as_version=4)
        except Exception as error:  # noqa: BLE001 (a broken file is reported, not fatal)
            unreadable[student] = f"{type(error).__name__}: {error}"
            continue
        findings += scan_notebook(nb, assignment, student)
        for extra in sorted(path.parent.rglob("*.py")):
            findings.append(Finding(student, "-", "-", "extra_files", 0, str(extra.relative_to(path.parent))))
    return findings, unreadable


def report(findings: list[Finding], unreadable: dict[str, str]) -> str:
    if not findings and not unreadable:
        return "scan: nothing to report"
    lines = [f"{'student':<20} {'exercise':<9} {'cell':<16} {'rule':<17} code"]
    for f in findings:
        lines.append(f"{f.student:<20} {f.exercise:<9} {f.cell:<16} {f.rule:<17} line {f.line}: {f.code}")
    for student, problem in unreadable.items():
        lines.append(f"{student:<20} {'-':<9} {'-':<16} {'unreadable':<17} {problem}")
    students = {f.student for f in findings} | set(unreadable)
    lines.append(f"scan: {len(findings)} findings for {len(students)} students (grades are not changed)")
    return "\n".join(lines)


def write_csv(findings: list[Finding], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "exercise", "cell", "rule", "line", "code"])
        for f in findings:
            writer.writerow([f.student, f.exercise, f.cell, f.rule, f.line, f.code])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="course-scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("assignment", help="e.g. 01_attention")
    parser.add_argument("--course", help="the course folder (default: the working directory, else the installed course)")
    args = parser.parse_args(argv)
    try:
        course = find_course(args.course)
        assignment = Assignment(course, args.assignment)
        assignment.source  # noqa: B018 (raises GradingError for an unknown assignment)
    except GradingError as problem:
        print(f"course-scan: {problem}", file=sys.stderr)
        return 2
    findings, unreadable = scan_class(course, assignment)
    print(report(findings, unreadable))
    write_csv(findings, course / f"scan-{assignment.name}.csv")
    print(f"written: {course / f'scan-{assignment.name}.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
