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


def _sealed_names():
    for topic, suite in SUITES.items():
        reference = importlib.import_module(f"helpers.{topic}")
        yield pytest.param(importlib.import_module("helpers.checks"), topic, id=f"{topic}-checks-module")
        for name in [n for n in dir(suite.checks) if n.startswith("check_")]:
            yield pytest.param(suite.checks, name, id=f"{topic}-checks-{name}")
        for name in getattr(reference, "__all__", []):
            yield pytest.param(reference, name, id=f"{topic}-reference-{name}")


@pytest.mark.parametrize("module, name", list(_sealed_names()))
def test_checks_and_references_cannot_be_replaced(module, name):
    """An answer cell cannot swap a check or a reference function for its own (`protect`)."""
    original = getattr(module, name)
    try:
        with pytest.raises(AttributeError, match="read-only"):
            setattr(module, name, lambda *args, **kwargs: None)
        with pytest.raises(AttributeError, match="read-only"):
            delattr(module, name)
    finally:
        if getattr(module, name, None) is not original:
            object.__setattr__(module, name, original)
    assert getattr(module, name) is original
