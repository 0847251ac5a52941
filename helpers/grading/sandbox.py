"""Kernels that cannot touch the course: another user, no network, a private scratch folder.

nbgrader runs a submission with the grader's permissions. `course-grade-class --sandbox USER`
(as root, on Linux, e.g. in a container or with sudo) makes nbgrader start each kernel through
`SandboxKernelManager`:

- `unshare --net`: the kernel lives in a new network namespace with no interfaces up, so it
  cannot reach the network (it talks to nbgrader over Unix sockets, which need no network);
- `setpriv --reuid USER --regid GROUP --clear-groups`: the kernel runs as an unprivileged user,
  so the files nbgrader owns (the gradebook, solutions/, submitted/, autograded/, feedback/, locked
  down by `lock_down`) are out of its reach, and it can write only its scratch folder and /tmp;
- its working directory and HOME are a fresh scratch folder owned by USER, removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Unicode

PRIVATE = ("gradebook.db", "solutions", "submitted", "autograded", "feedback", "exchange", "downloaded", "release")


def sandbox_problem(user: str) -> str | None:
    """Why a sandbox cannot be used here, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "--sandbox needs root (sudo, or a container) to start kernels as another user"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"--sandbox needs the `{tool}` command (util-linux)"
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"--sandbox: no user {user!r} on this machine (e.g. `useradd --system grader`, or use nobody)"
    # The kernel must be able to start: Python, the course package and ipykernel readable by USER.
    probe = subprocess.run(
        ["unshare", "--net", "--", "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
         "--clear-groups", "--", sys.executable, "-c", "import helpers, ipykernel"],
        cwd="/", capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"--sandbox: user {user!r} cannot start a kernel here ({last}); the Python environment and "
                f"the course package must be readable by {user!r}")
    return None


def lock_down(course: Path) -> None:
    """Only the grader may read the gradebook, the hidden tests and the students' folders."""
    for name in ("autograded", "feedback"):
        (course / name).mkdir(exist_ok=True)
    for name in PRIVATE:
        path = course / name
        if path.exists():
            mode = path.stat().st_mode
            path.chmod(stat.S_IMODE(mode) & 0o700)


class SandboxKernelManager(AsyncKernelManager):
    sandbox_user = Unicode("nobody", help="the unprivileged user kernels run as").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._scratch: str | None = None

    async def _async_pre_start_kernel(self, **kw):
        account = pwd.getpwnam(self.sandbox_user)
        self._scratch = tempfile.mkdtemp(prefix="sandbox-kernel-")
        os.chown(self._scratch, account.pw_uid, account.pw_gid)
        os.chmod(self._scratch, 0o700)
        # Unix sockets in the scratch folder: they work across network namespaces, TCP would not.
        self.transport, self.ip = "ipc", os.path.join(self._scratch, "ipc")
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        private = os.path.join(self._scratch, "connection.json")
        shutil.copyfile(self.connection_file, private)
        os.chown(private, account.pw_uid, account.pw_gid)
        cmd = [private if part == self.connection_file else part for part in cmd]
        env = dict(kw.get("env") or os.environ)
        env.update(HOME=self._scratch, MPLCONFIGDIR=self._scratch, IPYTHONDIR=os.path.join(self._scratch, ".ipython"),
                   USER=self.sandbox_user, LOGNAME=self.sandbox_user, TMPDIR=self._scratch)
        kw.update(env=env, cwd=self._scratch)
        prefix = ["unshare", "--net", "--", "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                  "--clear-groups", "--"]
        return prefix + cmd, kw

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._scratch and not restart:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
