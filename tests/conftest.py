"""xdist groups that keep expensive set-ups in one worker.

With `pytest -n auto --dist loadgroup` (pyproject's addopts), tests spread over the cores, except:
- the cells of one notebook (nbval) must run in one kernel, so each notebook is one group;
- each chapter's grading round trip (tests/test_grading.py) grades its class once per worker that
  asks for it, so all of a chapter's grading tests form one group;
- modules whose fixtures start nbgrader or kernels (course-grade, the build check) are one group each.
"""

from __future__ import annotations

import pytest

EXPENSIVE_MODULES = {"test_course_grade.py", "test_class_collect.py", "test_learner_tools.py", "test_scan.py"}


def _group(item: pytest.Item) -> str | None:
    path = item.path
    if path.suffix == ".ipynb":
        return f"nbval:{path.name}"
    if path.name == "test_grading.py":
        chapter = getattr(getattr(item, "callspec", None), "params", {}).get("chapter")
        return f"grading:{chapter or '01_attention'}"  # the unparametrized ones look at chapter 01's class
    if path.name in EXPENSIVE_MODULES:
        return f"module:{path.name}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _group(item)
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
