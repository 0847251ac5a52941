"""Every chapter's catalogue of mistakes, against its checks: each catalogued wrong answer fails
with its own message, on the visible inputs and on the hidden tests' inputs.

Each `tests/test_checks_<topic>.py` defines `checks` (the module), `CHECKS` (name -> check) and
`HIDDEN` (name -> the keyword arguments the hidden tests use); this file runs the same contract
over all of them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from helpers.checks import CheckFailed

CHAPTER_TESTS = sorted(p.stem for p in Path(__file__).parent.glob("test_checks_*.py"))
SUITES = {name.removeprefix("test_checks_"): importlib.import_module(f"tests.{name}") for name in CHAPTER_TESTS}


def _mistakes():
    for topic, suite in SUITES.items():
        for name, catalogue in suite.checks.MISTAKES.items():
            for mistake in catalogue:
                yield pytest.param(topic, name, mistake, id=f"{topic}-{name}-{mistake.key}")


@pytest.mark.parametrize("topic, name, mistake", list(_mistakes()))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_every_catalogued_mistake_is_named(topic, name, mistake, variant):
    suite = SUITES[topic]
    with pytest.raises(CheckFailed) as info:
        suite.CHECKS[name](mistake.impl, **(suite.HIDDEN[name] if variant == "hidden" else {}))
    assert mistake.message in str(info.value)


@pytest.mark.parametrize("topic", SUITES)
def test_catalogue_messages_are_distinct_within_a_check(topic):
    for name, catalogue in SUITES[topic].checks.MISTAKES.items():
        messages = [m.message for m in catalogue]
        assert len(set(messages)) == len(messages), name


@pytest.mark.parametrize("topic", SUITES)
def test_every_check_with_a_catalogue_is_exercised(topic):
    suite = SUITES[topic]
    assert set(suite.checks.MISTAKES) <= set(suite.CHECKS)
