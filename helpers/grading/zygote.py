"""Fresh grading kernels without paying `import torch` each time: forked from a pre-imported process.

A grading kernel spends about a third of its CPU time importing torch, IPython and ipykernel before
it runs the first cell. `course-grade-class` starts one *zygote* per worker: a process that imports
them once and then waits on a Unix socket. `ZygoteKernelManager` (nbgrader's
`Execute.kernel_manager_class`) asks it for each kernel; the zygote forks, and the child becomes an
ordinary ipykernel with the command line, working directory and environment jupyter_client gave it.
Each notebook still gets its own new kernel process (nothing runs in the zygote but imports, so no
state passes from one student to the next), nbgrader's per-cell timeout and interrupts work as
usual, and the kernel inherits the worker's memory limit.

What differs from a kernel started by `python -m ipykernel_launcher`: the modules listed in PRELOAD
are already imported when the first cell runs (torch's thread count still follows the kernel's
OMP_NUM_THREADS), and Python's hash seed is the zygote's. Random
generators are reseeded in each child (Python's `random` by itself, numpy's here); torch's
default generator starts from its fixed import-time seed, as in a fresh process.
"""

from __future__ import annotations

import json
import multiprocessing.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

from jupyter_client.manager import AsyncKernelManager

# torch._dynamo and torch._meta_registrations: the checks' device probe runs one case on PyTorch's
# `meta` device when there is no GPU, and torch imports these (with sympy) on the first meta
# operation: about 1.5 s of every graded notebook's CPU time, paid here once instead.
PRELOAD = ("numpy", "torch", "torch._dynamo", "torch._meta_registrations", "helpers", "ipykernel.kernelapp")
LAUNCHER = ["-m", "ipykernel_launcher"]
_SOCKET: str | None = None  # the zygote of this process, set by start_zygote


# ---------------------------------------------------------------------------------------------
# The zygote process
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the zygote gets SIGKILL when the worker that started it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _become_kernel(request: dict) -> None:
    """In the forked child: take the kernel's place (session, folder, environment, argv), run it."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()  # its own process group, like jupyter_client's kernels: interrupts reach only it
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if not os.environ.get("PYTHONSAFEPATH"):
        sys.path.insert(0, request["cwd"])  # what `python -m` would have put first
    import numpy

    numpy.random.seed()  # a fresh process draws fresh entropy; Python's random reseeds at fork
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # torch read the zygote's environment at import
        import torch

        torch.set_num_threads(int(threads))
    sys.argv = ["ipykernel_launcher", *request["args"]]
    from ipykernel.kernelapp import launch_new_instance

    try:
        launch_new_instance()
    finally:
        os._exit(0)


def serve(path: str) -> None:
    _die_with_parent()
    for name in PRELOAD:
        __import__(name)
    if threading.active_count() != 1:  # forking a process with threads is unsafe: refuse to serve
        print(f"threads after preloading: {threading.enumerate()}", flush=True)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile().readline())
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                _become_kernel(request)
            conn.sendall(f"{pid}\n".encode())


# ---------------------------------------------------------------------------------------------
# The grader's side
# ---------------------------------------------------------------------------------------------


def start_zygote() -> subprocess.Popen | None:
    """Start this process's zygote (it inherits the environment and resource limits as they are
    now); None when it could not start (the kernel manager then launches kernels as usual)."""
    global _SOCKET
    if not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return None
    folder = tempfile.mkdtemp(prefix="grading-zygote-")  # mode 0700: only this user may connect
    path = os.path.join(folder, "socket")
    process = subprocess.Popen([sys.executable, "-m", "helpers.grading.zygote", path], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True)
    # At the worker's exit (multiprocessing runs these finalizers, atexit does not in its workers).
    multiprocessing.util.Finalize(None, _stop, args=(process, folder), exitpriority=10)
    if process.stdout.readline().strip() != "ready":
        _stop(process, folder)
        return None
    _SOCKET = path
    return process


def _stop(process: subprocess.Popen, folder: str) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    shutil.rmtree(folder, ignore_errors=True)


class ForkedKernel:
    """The part of `subprocess.Popen` jupyter_client's LocalProvisioner uses, for a process that is
    not this one's child (a pidfd tells when it has exited)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._fd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self.returncode = -1  # exited; its status went to the zygote
            os.close(self._fd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(["kernel"], timeout)
            self.poll()
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._fd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ZygoteKernelManager(AsyncKernelManager):
    """Kernels forked from this process's zygote; launched as usual when there is none or the
    kernel command is not ipykernel's."""

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
        if _SOCKET is None or kernel_cmd[1:3] != LAUNCHER:
            await super()._async_launch_kernel(kernel_cmd, **kw)
            return
        request = {"args": kernel_cmd[3:], "cwd": str(kw.get("cwd") or os.getcwd()),
                   "env": dict(kw.get("env") or os.environ)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(_SOCKET)
            conn.sendall(json.dumps(request).encode() + b"\n")
            pid = int(conn.makefile().readline())
        provisioner = self.provisioner
        provisioner.process = ForkedKernel(pid)
        provisioner.pid = provisioner.pgid = pid
        provisioner.cwd = request["cwd"]
        self._reconcile_connection_info(provisioner.connection_info)


if __name__ == "__main__":
    serve(sys.argv[1])
