"""Wrong answers no catalogue lists (tests/uncatalogued): none may pass its check, and every one not
marked as a known gap gets a message naming the mistake or the first wrong intermediate (see
tools/coverage.py for the per-chapter counts)."""

from __future__ import annotations

import importlib

import pytest

from tests.uncatalogued import CHAPTERS
from tools.coverage import outcome


def _wrong_answers():
    for chapter in CHAPTERS:
        module = importlib.import_module(f"tests.uncatalogued.{chapter}")
        for group in ("WRONG", "HELD_OUT"):
            for wrong in getattr(module, group, ()):
                yield pytest.param(module.TOPIC, wrong, id=f"{chapter}-{group.lower()}-{wrong.check}-{wrong.key}")


@pytest.mark.parametrize("topic, wrong", list(_wrong_answers()))
def test_an_uncatalogued_wrong_answer_fails_and_is_named_when_claimed(topic, wrong, capsys):
    suite = importlib.import_module(f"tests.test_checks_{topic}")
    result, message = outcome(suite, wrong)
    assert result != "passed", "a wrong answer passed its check"
    if wrong.named:
        assert result == "named", message
    else:  # a known gap: when it gets named, mark it so (this keeps the claims honest both ways)
        assert result == "not named", message


def test_each_chapter_has_at_least_ten():
    for chapter in CHAPTERS:
        module = importlib.import_module(f"tests.uncatalogued.{chapter}")
        assert len(module.WRONG) >= 10, chapter
