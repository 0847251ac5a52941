"""xdist groups that keep expensive set-ups in one worker.

With `pytest -n auto --dist loadgroup` (pyproject's addopts), tests spread over the cores, except:
- the cells of one notebook (nbval) must run in one kernel, so each notebook is one group;
- each chapter's grading round trip (tests/test_grading.py) grades its class once per worker that
  asks for it, so all of a chapter's grading tests form one group;
- modules whose fixtures start nbgrader, kernels, a site build, a browser or a hub (course-grade, the
  build check, the site, JupyterLab in Chromium, JupyterHub) are one group each.
"""

from __future__ import annotations

import pytest
from _pytest.nodeid import coerce_node_id

EXPENSIVE_MODULES = {"test_course_grade.py", "test_class_collect.py", "test_learner_tools.py", "test_scan.py",
                     "test_site.py", "test_browser.py", "test_hub.py"}


def _group(item: pytest.Item) -> str | None:
    path = item.path
    if path.suffix == ".ipynb":
        return f"nbval:{path.parent.name}/{path.name}"
    if path.name == "test_grading.py":
        chapter = getattr(getattr(item, "callspec", None), "params", {}).get("chapter")
        return f"grading:{chapter or '01_attention'}"  # the unparametrized ones look at chapter 01's class
    if path.name in EXPENSIVE_MODULES:
        return f"module:{path.name}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = _group(item)
        if group is None:
            continue
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
        if getattr(config.option, "loadgroup", False) and "@" not in item.nodeid:
            # What xdist's worker does for marked tests (nodeid "...@group", which its LoadGroup
            # scheduler reads), written for pytest 9's structured node ids: xdist 3.8 still sets
            # the old `_nodeid`, which pytest 9 no longer reads, so without this every test,
            # notebook cells included, would be scheduled alone.
            item._id = coerce_node_id(f"{item.nodeid}@{group}")


