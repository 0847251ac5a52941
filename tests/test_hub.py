"""A class on a real JupyterHub: one term of nbgrader's exchange, driven through the hub's REST API.

The test starts `jupyterhub -f deploy/jupyterhub_config.py` (the file an admin copies, read as it is)
on free loopback ports, with configurable-http-proxy from npm, and three hub users: an instructor
and two students. As root (sessions and CI) they are local Unix users created here (prefix `cth-`)
and spawned by the config's LocalProcessSpawner, each server running as its user; otherwise a
spawner and an authenticator that need no system users run instead (SimpleLocalProcessSpawner,
DummyAuthenticator), and the file-permission checks are skipped. Then, through the hub's API (an
admin service token starts the servers and issues each user a token of their own) and each user's
server (nbgrader's formgrader and assignment-list APIs, the contents API, a terminal):

1. the instructor generates and releases the chapter to the exchange;
2. each student fetches it, answers it (ana: the solution; ben: one known mistake) and submits;
3. the instructor collects, grades with `course-grade-class` in a terminal on their server (it writes
   the feedback pages) and releases the feedback;
4. each student fetches feedback showing their own score, and nobody else's.

Along the way: a student's token cannot reach another's server, a student's server has no
formgrader and the instructor's has, and (as root) a student cannot list the exchange's inbound or
read another's submission, the instructor's gradebook or solutions/. The hub, the proxy and every
spawned server are stopped in a `finally`, the users and their groups removed, and nothing is left
running. Skipped when jupyterhub or the proxy is missing, except under COURSE_REQUIRE_HUB=1 (CI
with the proxy installed), where it fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nbformat
import pytest

from tests.grading.ch00_overview import STUDENTS as KNOWN
from tests.nbgrader_course import filled_in, grade_points, solution_answers
from tools.build import ROOT

pytestmark = pytest.mark.slow  # starts a hub and three servers (one xdist group: conftest.py)

REQUIRED = os.environ.get("COURSE_REQUIRE_HUB") == "1"
CHAPTER = "00_overview"  # the chapter whose notebooks grade fastest
COURSE_ID = "transformer-internals"
INSTRUCTOR, RIGHT, WRONG = "cth-teach", "cth-ana", "cth-ben"
STUDENTS = (RIGHT, WRONG)
MISTAKE = "budget_forgot_output"  # ben's known mistake (tests/grading/ch00_overview.py)
CLASS_GROUP = "cth-class"  # the test's users: the only ones granted a way to the Python environment
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TIMINGS: dict[str, float] = {}


def _unavailable(message: str) -> None:
    if REQUIRED:
        pytest.fail(f"COURSE_REQUIRE_HUB=1 but {message}")
    pytest.skip(message)


def find_proxy() -> str | None:
    """configurable-http-proxy on PATH, else where .ci/run installs it (npm --prefix $VIRTUAL_ENV)."""
    local = Path(sys.prefix) / "node_modules" / ".bin" / "configurable-http-proxy"
    return shutil.which("configurable-http-proxy") or (str(local) if local.exists() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# Unix users, and a way for them to the Python environment
# ---------------------------------------------------------------------------------------------

def _acl(mode: int, gid: int) -> bytes:
    """A POSIX access ACL (the kernel's xattr format) that keeps `mode` and lets group `gid` pass (x)."""
    undefined = 0xFFFFFFFF
    entries = [(0x01, (mode >> 6) & 7, undefined), (0x04, (mode >> 3) & 7, undefined), (0x08, 1, gid),
               (0x10, ((mode >> 3) & 7) | 1, undefined), (0x20, mode & 7, undefined)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def blocked_folders(paths: list[str]) -> list[Path]:
    """Folders on the way to `paths` that other users may not pass (e.g. /root holding pyenv's Python)."""
    blocked: list[Path] = []
    for path in paths:
        path = Path(path).resolve()
        for folder in [*reversed(path.parents), *([path] if path.is_dir() else [])]:
            if not folder.stat().st_mode & stat.S_IXOTH and folder not in blocked:
                blocked.append(folder)
    return blocked


class Accounts:
    """The test's Unix users and groups, and the ACLs that let them reach Python; all undone by `remove`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.users: list[str] = []
        self.groups: list[str] = []
        self.acls: list[tuple[Path, int]] = []

    def create(self) -> None:
        for name in (INSTRUCTOR, *STUDENTS):  # leftovers of a run that was killed
            with contextlib.suppress(subprocess.CalledProcessError):
                _sh("userdel", name)
        for name in (CLASS_GROUP, INSTRUCTOR, *STUDENTS):
            with contextlib.suppress(subprocess.CalledProcessError):
                _sh("groupdel", name)
        _sh("groupadd", CLASS_GROUP)
        self.groups.append(CLASS_GROUP)
        for name in (INSTRUCTOR, *STUDENTS):
            # --user-group: each user's primary group is their own; the instructor's holds only them, so
            # nbgrader's inbound folder (which takes the instructor's group) is theirs alone.
            _sh("useradd", "--no-create-home", "--home-dir", str(self.home / name), "--shell", "/bin/bash",
                "--user-group", "--groups", CLASS_GROUP, name)
            self.users.append(name)
            self.groups.append(name)
            home = self.home / name
            home.mkdir(parents=True)
            shutil.chown(home, name, name)
            home.chmod(0o700)
        needed = [os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, str(ROOT),
                  *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        gid = int(subprocess.run(["getent", "group", CLASS_GROUP], capture_output=True, text=True,
                                 check=True).stdout.split(":")[2])
        for folder in blocked_folders(needed):
            mode = stat.S_IMODE(folder.stat().st_mode)
            os.setxattr(folder, "system.posix_acl_access", _acl(mode, gid))
            self.acls.append((folder, mode))

    def run_as(self, user: str, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *cmd],
                              capture_output=True, text=True, timeout=120, cwd="/")

    def remove(self) -> list[str]:
        problems = []
        for folder, mode in self.acls:
            try:
                os.removexattr(folder, "system.posix_acl_access")
                os.chmod(folder, mode)
            except OSError as error:
                problems.append(f"ACL of {folder}: {error}")
        for user in self.users:
            run = subprocess.run(["pgrep", "-u", user], capture_output=True, text=True)
            for pid in run.stdout.split():  # nothing of theirs may outlive the test
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                problems.append(f"process {pid} of {user} was still running")
            with contextlib.suppress(subprocess.CalledProcessError):
                _sh("userdel", user)
        for group in self.groups:
            with contextlib.suppress(subprocess.CalledProcessError):
                _sh("groupdel", group)
        return problems


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

def call(method: str, url: str, token: str, body=None, form: dict | None = None, timeout: float = 120):
    """(status, parsed JSON or text) of one request with `Authorization: token ...`."""
    headers = {"Authorization": f"token {token}"}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, text = reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def ok(result, what: str):
    status, body = result
    assert 200 <= status < 300, f"{what}: HTTP {status}: {str(body)[:1500]}"
    return body


async def _terminal(url: str, token: str, command: str, timeout: float) -> str:
    """Run `command` in a new terminal of a user's server (as that user) and return its exit status line."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    name = ok(call("POST", f"{url}/api/terminals", token), "open a terminal")["name"]
    marker = secrets.token_hex(4)
    socket_url = "ws" + url[len("http"):] + f"/terminals/websocket/{name}"
    connection = await websocket_connect(HTTPRequest(socket_url, headers={"Authorization": f"token {token}"}))
    try:
        await connection.write_message(json.dumps(["stdin", f"{command}; echo DONE-{marker}-$?\r"]))
        output, deadline = "", time.monotonic() + timeout
        while (done := re.search(rf"DONE-{marker}-(\d+)", output)) is None:
            message = await asyncio.wait_for(connection.read_message(), max(1.0, deadline - time.monotonic()))
            if message is None:
                raise AssertionError(f"the terminal closed before the command ended:\n{output[-2000:]}")
            kind, *data = json.loads(message)
            if kind == "stdout":
                output += data[0]
        return done.group(1)
    finally:
        connection.close()
        call("DELETE", f"{url}/api/terminals/{name}", token)


# ---------------------------------------------------------------------------------------------
# The hub and the term
# ---------------------------------------------------------------------------------------------

def _wait(predicate, what: str, seconds: float, log: Path):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"{what} not within {seconds:.0f} s; hub log:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the hub (it stops the proxy and the servers it spawned), then its whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def term():
    """Runs the term; yields what each step returned (the asserts are in the tests below)."""
    try:
        import jupyterhub  # noqa: F401
    except ImportError:
        _unavailable('the hub test needs JupyterHub: python -m pip install -e ".[hub]"')
    proxy = find_proxy()
    if proxy is None:
        _unavailable("no configurable-http-proxy: npm install --prefix \"$VIRTUAL_ENV\" configurable-http-proxy "
                     "(its pin is in pyproject.toml, [tool.course]); .ci/run installs it when npm can")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="course-hub-"))
    tmp.chmod(0o755)  # the users' homes and the exchange live here
    homes, exchange, state = tmp / "home", tmp / "exchange", tmp / "hub"
    for folder in (homes, exchange, state):
        folder.mkdir()
    homes.chmod(0o755)
    exchange.chmod(0o1777)  # as /srv/nbgrader/exchange on a real hub
    accounts = Accounts(homes)
    process = None
    log_path = state / "jupyterhub.log"
    record: dict = {"as_root": AS_ROOT}
    try:
        if AS_ROOT:
            accounts.create()
            probe = accounts.run_as(RIGHT, sys.executable, "-c", "import helpers, nbgrader, jupyterhub")
            assert probe.returncode == 0, f"a hub user cannot start the course's Python: {probe.stderr[-1500:]}"
        course = homes / INSTRUCTOR / "transformer-internals"  # the instructor's clone of the course
        for relative in ("nbgrader_config.py", f"solutions/{CHAPTER}", f"exercises/{CHAPTER}"):
            (course / relative).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (ROOT / relative).is_dir() else shutil.copy)(ROOT / relative, course / relative)
        if AS_ROOT:
            subprocess.run(["chown", "-R", f"{INSTRUCTOR}:{INSTRUCTOR}", str(course)], check=True)
        else:
            for user in STUDENTS:
                (homes / user).mkdir()

        port, admin = _free_port(), secrets.token_hex(24)
        hub = f"http://127.0.0.1:{port}"
        env = dict(os.environ, COURSE_INSTRUCTORS=INSTRUCTOR, COURSE_STUDENTS=",".join(STUDENTS),
                   COURSE_EXCHANGE=str(exchange), COURSE_HUB_URL=hub, COURSE_HUB_ADMIN_TOKEN=admin,
                   PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
                   OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(ROOT / "deploy" / "jupyterhub_config.py"),
               f"--JupyterHub.hub_bind_url=http://127.0.0.1:{_free_port()}",
               f"--ConfigurableHTTPProxy.api_url=http://127.0.0.1:{_free_port()}",
               f"--ConfigurableHTTPProxy.command={proxy}"]
        if not AS_ROOT:
            cmd += ["--JupyterHub.spawner_class=simple", "--JupyterHub.authenticator_class=dummy",
                    f"--SimpleLocalProcessSpawner.home_dir_template={homes}/{{username}}"]
        record["spawner"] = "LocalProcessSpawner + PAMAuthenticator" if AS_ROOT else \
            "SimpleLocalProcessSpawner + DummyAuthenticator"
        with log_path.open("w") as log:
            process = subprocess.Popen(cmd, cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        _wait(lambda: process.poll() is None and _answers(f"{hub}/hub/api/"), "the hub", 90, log_path)
        TIMINGS["hub up"] = time.perf_counter() - started

        # Servers, and a token per user (the admin's token only starts things).
        for user in (INSTRUCTOR, *STUDENTS):
            status, body = call("POST", f"{hub}/hub/api/users/{user}/server", admin)
            assert status in (201, 202), f"spawn {user}: HTTP {status} {body}"
        tokens = {user: ok(call("POST", f"{hub}/hub/api/users/{user}/tokens", admin,
                                {"note": "tests/test_hub.py", "expires_in": 900,
                                 "scopes": [f"access:servers!user={user}"]}), f"token for {user}")["token"]
                  for user in (INSTRUCTOR, *STUDENTS)}
        for user in (INSTRUCTOR, *STUDENTS):
            _wait(lambda u=user: (ok(call("GET", f"{hub}/hub/api/users/{u}", admin), "user")
                                  .get("servers", {}).get("", {}).get("ready")), f"{user}'s server", 150, log_path)
        TIMINGS["servers up"] = time.perf_counter() - started
        url = {user: f"{hub}/user/{user}" for user in (INSTRUCTOR, *STUDENTS)}
        teach, course_rel = tokens[INSTRUCTOR], "transformer-internals"

        record["formgrader"] = {u: call("GET", f"{url[u]}/formgrader/api/status", tokens[u])[0] for u in url}
        record["disabled"] = {u: _page_config(url[u], tokens[u]).get("disabledExtensions", []) for u in url}
        record["other_server"] = call("GET", f"{url[WRONG]}/api/contents", tokens[RIGHT])[0]

        # 1. Release.
        for step in ("assign", "release"):
            reply = ok(call("POST", f"{url[INSTRUCTOR]}/formgrader/api/assignment/{CHAPTER}/{step}", teach), step)
            assert reply.get("success"), f"formgrader {step}: {reply}"
        # 2. Fetch, answer, submit.
        answers = solution_answers(CHAPTER)
        form = {"course_id": COURSE_ID, "assignment_id": CHAPTER}
        notebook = f"{CHAPTER}/{CHAPTER}.ipynb"
        for user in STUDENTS:
            ok(call("POST", f"{url[user]}/assignments/fetch", tokens[user], form=form), f"{user} fetch")
            released = ok(call("GET", f"{url[user]}/api/contents/{notebook}", tokens[user]), f"{user} open")
            nb = filled_in(nbformat.from_dict(released["content"]), answers,
                           KNOWN[MISTAKE].edits if user == WRONG else {})
            ok(call("PUT", f"{url[user]}/api/contents/{notebook}", tokens[user],
                    {"type": "notebook", "format": "json", "content": nb}), f"{user} save")
            reply = ok(call("POST", f"{url[user]}/assignments/submit", tokens[user], form=form), f"{user} submit")
            assert isinstance(reply, list) or reply.get("success"), f"{user} submit: {reply}"
        TIMINGS["released, fetched, submitted"] = time.perf_counter() - started
        if AS_ROOT:
            inbound = exchange / COURSE_ID / "inbound"
            theirs = next(p for p in inbound.iterdir() if p.name.startswith(f"{WRONG}+"))
            record["inbound_list"] = accounts.run_as(RIGHT, "ls", str(inbound))
            record["other_submission"] = accounts.run_as(RIGHT, "cat", str(theirs / f"{CHAPTER}.ipynb"))

        # 3. Collect, grade in a terminal with the course's class grader, release the feedback.
        reply = ok(call("POST", f"{url[INSTRUCTOR]}/formgrader/api/assignment/{CHAPTER}/collect", teach), "collect")
        assert reply.get("success"), f"collect: {reply}"
        graded_at = time.perf_counter()
        record["grader_status"] = asyncio.run(_terminal(
            url[INSTRUCTOR], teach, f"cd ~/{course_rel} && course-grade-class {CHAPTER} > grade.log 2>&1", 300))
        TIMINGS["course-grade-class"] = time.perf_counter() - graded_at
        record["grade_log"] = _text(url[INSTRUCTOR], teach, f"{course_rel}/grade.log")
        assert record["grader_status"] == "0", f"course-grade-class exited {record['grader_status']}:\n" \
            + record["grade_log"][-3000:]
        record["grades"] = list(csv.DictReader(io.StringIO(_text(url[INSTRUCTOR], teach,
                                                                  f"{course_rel}/grades-{CHAPTER}.csv"))))
        reply = ok(call("POST", f"{url[INSTRUCTOR]}/formgrader/api/assignment/{CHAPTER}/release_feedback", teach),
                   "release feedback")
        assert reply.get("success"), f"release feedback: {reply}"
        # 4. Feedback.
        record["feedback"] = {}
        for user in STUDENTS:
            ok(call("POST", f"{url[user]}/assignments/fetch_feedback", tokens[user], form=form), f"{user} feedback")
            pages = [item["path"] for stamp in _listing(url[user], tokens[user], f"{CHAPTER}/feedback")
                     for item in _listing(url[user], tokens[user], stamp["path"]) if item["name"].endswith(".html")]
            record["feedback"][user] = [_text(url[user], tokens[user], page) for page in pages]
        TIMINGS["whole term"] = time.perf_counter() - started
        if AS_ROOT:
            record["private"] = {str(path): accounts.run_as(RIGHT, "cat", str(path)) for path in (
                course / "gradebook.db", course / "solutions" / CHAPTER / f"{CHAPTER}.ipynb",
                course / "submitted" / WRONG / CHAPTER / f"{CHAPTER}.ipynb")}
            record["feedback_list"] = accounts.run_as(RIGHT, "ls", str(exchange / COURSE_ID / "feedback"))
        yield record
    finally:
        if process is not None:
            stop(process)
        leftovers = accounts.remove() if AS_ROOT else []
        shutil.rmtree(tmp, ignore_errors=True)
        TIMINGS["with teardown"] = time.perf_counter() - started
        print("\nhub test timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
        assert not leftovers, leftovers


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    return False


def _page_config(url: str, token: str) -> dict:
    """The page config JupyterLab's /lab page hands the browser (which extensions it disables)."""
    page = ok(call("GET", f"{url}/lab", token), "open /lab")
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
    assert found, page[:1500]
    return json.loads(found.group(1))


def _listing(url: str, token: str, path: str) -> list[dict]:
    return ok(call("GET", f"{url}/api/contents/{urllib.parse.quote(path)}", token), f"list {path}")["content"]


def _text(url: str, token: str, path: str) -> str:
    return ok(call("GET", f"{url}/api/contents/{urllib.parse.quote(path)}?type=file&format=text", token),
              f"read {path}")["content"]


def expected_score(user: str) -> float:
    points = grade_points(CHAPTER)
    lost = set() if user == RIGHT else set(KNOWN[MISTAKE].lost)
    return sum(p for cell, p in points.items() if cell not in lost and cell.split("-")[0] not in lost)


# ---------------------------------------------------------------------------------------------
# What the term showed
# ---------------------------------------------------------------------------------------------

def test_roles_students_have_no_formgrader(term):
    print(f"spawner and authenticator: {term['spawner']}")
    assert term["formgrader"][INSTRUCTOR] == 200, term["formgrader"]
    instructor_tools = {"@jupyter/nbgrader:formgrader", "@jupyter/nbgrader:create-assignment"}
    assert not instructor_tools & set(term["disabled"][INSTRUCTOR]), term["disabled"]
    for user in STUDENTS:
        assert term["formgrader"][user] == 404, term["formgrader"]
        assert instructor_tools <= set(term["disabled"][user]), term["disabled"]
        assert not {"@jupyter/nbgrader:assignment-list", "@jupyter/nbgrader:validate-assignment"} \
            & set(term["disabled"][user]), term["disabled"]


def test_a_students_token_does_not_open_another_students_server(term):
    assert term["other_server"] in (403, 404), term["other_server"]


def test_the_class_grader_graded_the_collected_class(term):
    assert term["grader_status"] == "0", term["grade_log"][-3000:]
    rows = {row["student"]: row for row in term["grades"]}
    assert set(rows) == set(STUDENTS), term["grade_log"][-3000:]
    for user in STUDENTS:
        assert float(rows[user]["total"]) == expected_score(user), (user, rows[user], term["grade_log"][-3000:])
        assert rows[user]["status"] == "ok", rows[user]
    assert expected_score(WRONG) < expected_score(RIGHT)


def test_each_student_gets_their_own_feedback_only(term):
    maximum = sum(grade_points(CHAPTER).values())
    for user in STUDENTS:
        pages = term["feedback"][user]
        assert len(pages) == 1, f"{user} fetched {len(pages)} feedback pages"
        scores = re.findall(rf"{CHAPTER} \(Score: ([\d.]+) / ([\d.]+)\)", pages[0])
        assert [(float(a), float(b)) for a, b in scores] == [(expected_score(user), maximum)], (user, scores)
        for other in set(STUDENTS) - {user}:
            assert other not in pages[0]


def test_a_student_cannot_read_what_is_not_theirs(term):
    if not term["as_root"]:
        pytest.skip("not root: the hub ran SimpleLocalProcessSpawner (every server as this user), so "
                    "there are no Unix permissions between users to check")
    assert term["inbound_list"].returncode != 0 and "Permission denied" in term["inbound_list"].stderr
    assert term["feedback_list"].returncode != 0 and "Permission denied" in term["feedback_list"].stderr
    assert term["other_submission"].returncode != 0, "a student read another's submission in the exchange"
    assert "Permission denied" in term["other_submission"].stderr
    for path, run in term["private"].items():
        assert run.returncode != 0 and "Permission denied" in run.stderr, f"a student could read {path}"
