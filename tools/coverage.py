"""Catalogue coverage per chapter: how many mistakes each chapter's checks catalogue, and how many of
the uncatalogued wrong answers in tests/uncatalogued get a message that names the mistake or the first
wrong intermediate (a generic "differs at index" message counts as not named).

    .venv/bin/python tools/coverage.py            # one table, every chapter in tests/uncatalogued
    .venv/bin/python tools/coverage.py --details  # plus every wrong answer's message
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def catalogued(checks) -> tuple[int, int]:
    """(Mistakes in MISTAKES, known wrong numbers in the numeric exercises' tables)."""
    functions = sum(len(c) for c in checks.MISTAKES.values())
    numeric = 0
    for name in dir(checks):
        value = getattr(checks, name)
        if name.endswith("MISTAKES") and name != "MISTAKES" and isinstance(value, dict):
            numeric += sum(len(v) for v in value.values() if isinstance(v, (list, tuple)))
    if hasattr(checks, "_real_numbers"):
        numeric += sum(len(v) for v in checks._real_numbers()[1].values())
    return functions, numeric


def outcome(suite, wrong) -> tuple[str, str]:
    """('passed' | 'named' | 'not named', message)."""
    from helpers.checks import CheckFailed

    try:
        suite.CHECKS[wrong.check](wrong.impl)
    except CheckFailed as failure:
        message = str(failure)
        return ("named" if is_named(wrong.expect, message) else "not named"), message
    return "passed", ""


GENERIC = "differs from the reference"


def is_named(expect: str, message: str) -> bool:
    """The message, without its '[inputs: ...]' description, matches `expect`, and is not the generic
    "differs from the reference ... first at index" sentence."""
    said = re.sub(r"\s*\[inputs: .*\]\s*$", "", message, flags=re.S)
    return GENERIC not in said and re.search(expect, said) is not None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true")
    args = parser.parse_args()
    import contextlib
    import io

    from tests.uncatalogued import CHAPTERS

    rows = []
    for chapter in CHAPTERS:
        module = importlib.import_module(f"tests.uncatalogued.{chapter}")
        suite = importlib.import_module(f"tests.test_checks_{module.TOPIC}")
        functions, numeric = catalogued(suite.checks)
        counts = {}
        for group in ("WRONG", "HELD_OUT"):
            tally = counts[group] = {"named": 0, "not named": 0, "passed": 0, "total": 0}
            for wrong in getattr(module, group, ()):
                with contextlib.redirect_stdout(io.StringIO()):
                    result, message = outcome(suite, wrong)
                tally[result] += 1
                tally["total"] += 1
                if args.details:
                    print(f"  {chapter} {group.lower()} {wrong.check}/{wrong.key}: {result}: {message[:200]}")
        rows.append((chapter, functions, numeric, counts))
    print(f"{'chapter':16} {'catalogued':>10} {'+numeric':>8} {'uncatalogued named':>19} {'held-out named':>15} "
          f"{'passed!':>7}")
    for chapter, functions, numeric, counts in rows:
        wrong, held = counts["WRONG"], counts["HELD_OUT"]
        held_cell = f"{held['named']}/{held['total']}" if held["total"] else "-"
        print(f"{chapter:16} {functions:>10} {numeric:>8} {wrong['named']:>10}/{wrong['total']:<8} {held_cell:>15} "
              f"{wrong['passed'] + held['passed']:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
