"""Start nbgrader and nbformat seconds faster by skipping one optional import they never need.

jsonschema, which nbformat (and so nbgrader and nbclient) imports, validates the "iri" string format
with the package rfc3987_syntax when that is installed, and it is: jupyter-events asks for
jsonschema[format-nongpl]. rfc3987_syntax compiles a Lark grammar when it is imported, which
measured 2 to 5 s on this course's 2-core machines, in every process that imports nbformat:
each grading worker, each `course-grade`, each nbgrader subprocess of the build and the tests.
Notebook schemas use no "iri" format, so nothing the course runs loses a check. A `None` entry in
sys.modules makes that import fail with ImportError, which jsonschema expects and skips.

    python -m helpers.grading.fastimport generate_assignment 01_attention --force   # = nbgrader ...
"""

from __future__ import annotations

import sys

SKIPPED = ("rfc3987_syntax",)


def skip_slow_optional_imports() -> None:
    """Call before nbformat is imported; harmless if it already was (then it changes nothing)."""
    for name in SKIPPED:
        sys.modules.setdefault(name, None)


def nbgrader_command(*args: str) -> list[str]:
    """The argv that runs `nbgrader ARGS` with this interpreter, without the slow import."""
    return [sys.executable, "-m", "helpers.grading.fastimport", *args]


skip_slow_optional_imports()

if __name__ == "__main__":
    from nbgrader.apps.nbgraderapp import main

    sys.argv[0] = "nbgrader"
    sys.exit(main())
