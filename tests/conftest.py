"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from helpers.checks import core as _checks_core
from helpers.threads import torch_threads

_make_mistake = _checks_core.Mistake.__init__


def _make_and_exempt(mistake: _checks_core.Mistake, *args, **kwargs) -> None:
    """The catalogues' implementations call the reference (a mistake is the reference, changed), and the
    tests hand them to the checks directly: exempt each from the reference-call watcher as it is made.
    Installed here, before any chapter's checks module makes its catalogue; a learner's kernel exempts none."""
    _make_mistake(mistake, *args, **kwargs)
    _checks_core.EXEMPT_IN_TESTS.add(mistake.impl)


_checks_core.Mistake.__init__ = _make_and_exempt  # Probe inherits it


@pytest.fixture
def one_thread():
    """Tiny models on one torch thread (see `helpers.threads.torch_threads`); use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with torch_threads(1):
        yield


@pytest.fixture
def unsealed():
    """Lets a test patch course modules (mock.patch, monkeypatch) even after a check sealed them.

    `helpers.checks.core.protect` seals the course's modules against reassignment in the learner's
    kernel; in a test worker it does so as soon as any check has run, so whether a test may patch
    `helpers.blocks` would depend on which tests ran before it on the same worker. Call
    `unsealed(module, ...)` inside the test: the modules take plain module behaviour until the test
    ends, then their seal is back. Name it before `monkeypatch` in the test's arguments, so that
    monkeypatch's undo runs first (fixtures are torn down in the reverse order of their set-up)."""
    import types

    restore: list[tuple[types.ModuleType, type]] = []

    def unseal(*modules: types.ModuleType) -> None:
        for module in modules:
            if type(module) is not types.ModuleType:
                restore.append((module, type(module)))
                types.ModuleType.__setattr__(module, "__class__", types.ModuleType)

    yield unseal
    for module, cls in reversed(restore):
        types.ModuleType.__setattr__(module, "__class__", cls)
