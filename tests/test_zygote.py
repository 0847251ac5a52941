"""Grading kernels forked from a pre-imported zygote (helpers/grading/zygote.py): each notebook gets
its own new kernel process, in its own folder and environment, and nbgrader's timeout still stops a
cell that loops."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.grading import zygote

pytestmark = pytest.mark.slow

PROBE = ("import os, sys\n"
         "print(os.getpid(), os.getppid(), os.getcwd(), 'torch' in sys.modules, os.environ.get('ZYGOTE_PROBE'),"
         " 'left_behind' in globals())\n"
         "left_behind = 1")


@pytest.fixture(scope="module")
def started():
    process = zygote.start_zygote()
    assert process is not None
    folder = os.path.dirname(zygote._SOCKET)
    yield process
    zygote._stop(process, folder)
    zygote._SOCKET = None
    assert not os.path.exists(folder)


def run(code: str, folder, timeout: int = 30, *more: str) -> NotebookClient:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (code, *more)])
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
                            kernel_manager_class=zygote.ZygoteKernelManager,
                            resources={"metadata": {"path": str(folder)}})
    client.execute()
    return client


def test_each_notebook_gets_a_new_kernel_forked_in_its_own_folder(started, tmp_path, monkeypatch):
    monkeypatch.setenv("ZYGOTE_PROBE", "seen")
    seen = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        output = run(PROBE, tmp_path / name).nb.cells[0].outputs[0]["text"].split()
        seen.append(output)
        pid, parent, cwd, preloaded, probe, shared = output
        assert int(parent) == started.pid and preloaded == "True"  # forked from the zygote
        assert cwd == str(tmp_path / name) and probe == "seen" and shared == "False"
    assert seen[0][0] != seen[1][0]  # two kernel processes
    assert started.poll() is None  # the zygote serves the next notebook


def test_a_looping_cell_is_interrupted_by_the_timeout_and_the_next_cell_runs(started, tmp_path):
    cells = run("import os\nprint(os.getppid())\nwhile True:\n    pass", tmp_path, 3, "print('after')").nb.cells
    assert int(cells[0].outputs[0]["text"]) == started.pid
    assert cells[0].outputs[-1]["ename"] == "KeyboardInterrupt"
    assert cells[1].outputs[0]["text"] == "after\n"


def test_without_a_zygote_kernels_start_as_usual(tmp_path, monkeypatch):
    monkeypatch.setattr(zygote, "_SOCKET", None)
    pid, parent, *_ = run(PROBE, tmp_path).nb.cells[0].outputs[0]["text"].split()
    assert int(parent) == os.getpid()


def test_the_first_meta_operation_imports_nothing_in_a_forked_kernel(started, tmp_path):
    """The checks' device probe runs on `meta` without a GPU; torch imports torch._dynamo, its meta
    registrations and sympy on the first meta operation, which the zygote has already paid for."""
    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "x = torch.ones(2, 3, device='meta')\n"
            "y = (x @ x.T / 3.0).softmax(-1)\n"
            "print(y.device, sorted(set(sys.modules) - before))")
    assert run(code, tmp_path).nb.cells[0].outputs[0]["text"] == "meta []\n"


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_forked_kernel_takes_torch_threads_from_its_own_environment(started, tmp_path, monkeypatch, threads):
    """torch read the zygote's OMP_NUM_THREADS at import; the kernel's own setting must still count
    (course-grade-class gives each of its workers' kernels a share of the cores)."""
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    code = "import torch\nprint(torch.get_num_threads())"
    assert run(code, tmp_path).nb.cells[0].outputs[0]["text"] == f"{threads}\n"


def test_grading_kernels_share_the_cores_among_the_workers(monkeypatch):
    from helpers.grading.classroom import kernel_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [kernel_threads(w) for w in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
