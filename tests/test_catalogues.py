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


def _named(suite, name):
    """Every message a check can name a wrong answer with: its catalogue and its probes."""
    return [*suite.checks.MISTAKES.get(name, ()), *getattr(suite.checks, "PROBES", {}).get(name, ())]


def _others_named(suite, name, mistake, message):
    """The messages of the check's other mistakes and probes that appear in `message` (a message that is
    part of this mistake's own is not counted: it cannot be told apart by text)."""
    return [other.key for other in _named(suite, name)
            if other.message != mistake.message and other.message not in mistake.message
            and other.message in message]


@pytest.mark.parametrize("topic, name, mistake", list(_mistakes()))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_every_catalogued_mistake_is_named_and_no_other(topic, name, mistake, variant):
    """The confusion test: mistake A fed to its check gets A's message, and no other mistake's or
    probe's message of that check."""
    suite = SUITES[topic]
    with pytest.raises(CheckFailed) as info:
        suite.CHECKS[name](mistake.impl, **(suite.HIDDEN[name] if variant == "hidden" else {}))
    assert mistake.message in str(info.value)
    assert not _others_named(suite, name, mistake, str(info.value))


def _probes():
    for topic, suite in SUITES.items():
        for name, probes in getattr(suite.checks, "PROBES", {}).items():
            for probe in probes:
                yield pytest.param(topic, name, probe, id=f"{topic}-{name}-{probe.key}")


@pytest.mark.parametrize("topic, name, probe", list(_probes()))
@pytest.mark.parametrize("variant", ["visible", "hidden"])
def test_every_probe_is_named_and_no_other(topic, name, probe, variant):
    """A probe's variant fed to its check gets the probe's message (not a catalogued mistake's: a probe
    that equals a catalogued mistake is redundant), and no other probe's."""
    suite = SUITES[topic]
    with pytest.raises(CheckFailed) as info:
        suite.CHECKS[name](probe.impl, **(suite.HIDDEN[name] if variant == "hidden" else {}))
    assert probe.message in str(info.value)
    assert not _others_named(suite, name, probe, str(info.value))


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
