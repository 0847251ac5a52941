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
