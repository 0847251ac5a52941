"""Install metadata: one source of truth for the pins, and the README's commands are what CI runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tools.build import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()


def _readme_command(label: str) -> str:
    """The command in the README's code block that follows the line `<!-- label -->`."""
    match = re.search(rf"<!-- {label} -->\s*```(?:bash|sh)?\n(.*?)\n```", README, re.S)
    assert match, f"README has no block marked <!-- {label} -->"
    return match.group(1).strip()


def test_every_dependency_is_pinned_exactly():
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+\-]*", requirement), requirement
    assert any(r.startswith("torch==") for r in PYPROJECT["project"]["dependencies"])  # never a range


def test_every_optional_extra_is_pinned_exactly():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == {"site", "browser", "hub", "oracle"}
    for requirement in (r for group in extras.values() for r in group):
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+\-]*", requirement), requirement


def test_the_npm_pin_is_exact_and_ci_installs_it():
    """configurable-http-proxy (the hub's proxy) is pinned in pyproject.toml, and .ci/run installs that pin."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", PYPROJECT["tool"]["course"]["configurable-http-proxy"])
    ci = (ROOT / ".ci" / "run").read_text()
    assert '["tool"]["course"]["configurable-http-proxy"]' in ci and 'configurable-http-proxy@$CHP_VERSION' in ci


def test_the_learner_lab_defaults_are_installed_with_the_package():
    """pip install -e . puts deploy/learner/ where every `jupyter lab` of the environment reads it."""
    shared = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["shared-data"]
    assert all((ROOT / source).is_file() for source in shared)
    for source, target in shared.items():
        installed = Path(sys.prefix) / target
        if installed.exists():  # an environment installed before these files existed lacks them
            assert installed.read_text() == (ROOT / source).read_text(), f"{installed} differs from {source}"


def test_the_readme_cpu_wheel_command_installs_the_pinned_torch():
    torch_pin = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch=="))
    commands = re.findall(r"pip install (torch==\S+) --index-url https://download.pytorch.org/whl/cpu", README)
    assert commands == [torch_pin], "README's CPU-wheel command must install the torch pyproject.toml pins"


def test_environment_yml_installs_the_package_and_pins_nothing_itself():
    text = (ROOT / "environment.yml").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    deps = [line[2:].strip() for line in lines if line.startswith("- ")]
    assert "--editable ." in deps
    conda_packages = {re.split(r"[=<>]", d)[0] for d in deps
                      if d not in ("--editable .", "pip:", "conda-forge") and not d.startswith("--extra-index-url ")}
    assert conda_packages == {"python", "pip"}
    python = next(d for d in deps if d.startswith("python="))
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_environment_yml_gets_the_cpu_torch_the_readme_describes():
    # conda's pip would otherwise fetch PyPI's torch, the multi-GB CUDA build on Linux. The CPU index is
    # an extra index, not the only one: the other dependencies still come from PyPI at pyproject's pins.
    text = (ROOT / "environment.yml").read_text()
    pip_options = re.findall(r"^\s*- (--\S+.*)$", text, re.M)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_options
    assert not any(o.startswith("--index-url") for o in pip_options)
    assert "--extra-index-url" in README.split("## For learners")[0]  # the install section says so


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for requirement in PYPROJECT["project"]["dependencies"]:
        name, pinned = requirement.split("==")
        assert version(name).split("+")[0] == pinned, (name, version(name), pinned)


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    for label in ("install", "test"):
        for line in _readme_command(label).splitlines():
            if line.strip() and not line.startswith("#"):
                assert line.strip() in ci, f"README {label} line {line!r} is not run by .ci/run"


def test_package_imports_from_any_directory(tmp_path):
    code = "import helpers, helpers.attention, helpers.checks.attention; print(helpers.__file__)"
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert Path(run.stdout.strip()).parent == ROOT / "helpers"


@pytest.mark.parametrize("folder", ["submitted", "autograded", "feedback", "exchange"])
def test_nbgrader_runtime_folders_are_ignored(folder):
    run = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x/y.ipynb"], cwd=ROOT)
    assert run.returncode == 0


@pytest.mark.slow
def test_nbgrader_started_by_path_finds_alembic(tmp_path):
    """`.venv/bin/nbgrader` (and formgrader under `.venv/bin/jupyter lab`) without an activated
    environment: creating the gradebook runs `alembic` by name, which nbgrader_config.py puts on PATH.
    The course's config is run from a copy, so the repository's own gradebook.db is never touched."""
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    bare = {"HOME": str(tmp_path), "PATH": os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).exists())}
    nbgrader = Path(sys.executable).parent / "nbgrader"
    run = subprocess.run([str(nbgrader), "db", "assignment", "list"], cwd=tmp_path, env=bare,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "There are 0 assignments in the database" in run.stdout
    assert (tmp_path / "gradebook.db").exists() and (tmp_path / "exchange").is_dir()


def test_the_hub_and_the_course_share_one_course_id_and_exchange(tmp_path, monkeypatch):
    """deploy/nbgrader_config.py (every server on the hub) and the course's nbgrader_config.py (the
    instructor's formgrader and course-grade-class) must name the same course and the same exchange."""
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.setenv("COURSE_EXCHANGE", str(tmp_path / "exchange"))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # the course's config changes these two:
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)      # monkeypatch puts them back afterwards
    hub = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT / "deploy")).load_config()
    course = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    assert hub.CourseDirectory.course_id == course.CourseDirectory.course_id == "transformer-internals"
    assert hub.Exchange.root == course.Exchange.root == str(tmp_path / "exchange")
    assert hub.ExchangeFactory.submit == "helpers.grading.exchange.PrivateSubmit"
    monkeypatch.delenv("COURSE_EXCHANGE")
    assert PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config().Exchange.root == str(ROOT / "exchange")


def test_the_budgets_are_read_from_pyproject_and_name_real_chapters():
    """tools/bench.py reads the one table of budgets; a key that is not a chapter (a typo) would make
    that chapter's budget silently the default."""
    from tools.bench import BUDGETS, budget
    from tools.build import chapters

    assert BUDGETS == PYPROJECT["tool"]["course"]["budgets"]
    assert set(BUDGETS) - set(chapters()) == {"notebook", "course", "ci"}
    assert budget("01_attention") == BUDGETS["notebook"] and budget("08_training") == BUDGETS["08_training"]


def test_the_suite_benchmark_runs_what_ci_runs():
    """`bench.py --suite` times the two test commands of .ci/run, so the figure it writes is CI's."""
    from tools.bench import SUITE_RUNS

    ci = (ROOT / ".ci" / "run").read_text()
    for _, env, args in SUITE_RUNS:
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        command = " ".join(["python", *(f'"{a}"' if " " in a else a for a in args)])
        assert f"\n{prefix + ' ' if prefix else ''}{command}\n" in ci, command


def test_bench_writes_its_section_and_keeps_the_other(tmp_path, monkeypatch):
    import tools.bench as bench

    monkeypatch.setattr(bench, "TIMINGS", tmp_path / "timings.md")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    bench.write_section(bench.SUITE, ["suite, first"])
    bench.write_section(bench.NOTEBOOKS, ["notebooks"])
    bench.write_section(bench.SUITE, ["suite, second"])
    text = (tmp_path / "timings.md").read_text()
    assert text.startswith("# Measured timings")
    assert text.index("notebooks") < text.index("suite, second") and "suite, first" not in text
    assert text.count(bench.NOTEBOOKS) == 1 and text.count(bench.SUITE) == 1
