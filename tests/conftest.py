"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from helpers.threads import torch_threads


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
