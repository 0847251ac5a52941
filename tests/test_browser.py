"""JupyterLab in a real browser: what a learner sees, not what a kernel returns.

The test starts `jupyter lab` on a free local port with a token, in a temporary copy of the two
notebooks it opens, and drives the system's headless Chromium with Playwright (never a downloaded
browser):

1. the exercise notebook of chapter 01: run the setup cell, the unanswered answer cell of exercise 2
   and its test cell, and see the one-sentence `CheckFailed` message; type a correct answer into the
   answer cell through the browser, run it and the test again, and see the ✓ line;
2. the theory notebook of chapter 01: every committed figure renders; run the setup cell and the
   softmax explorer, drag its temperature slider, and see the readout and the picture change;
3. the learner's view (the defaults `pip install -e .` installs from deploy/learner/): a freshly
   opened exercise notebook is not marked unsaved, no news or update pop-up shows, and of nbgrader
   only the student tools show (the Nbgrader menu holds the Assignment List alone, the notebook has
   its Validate button, no Create Assignment sidebar, no formgrader behind /formgrader);
4. the instructor's view (`JUPYTER_CONFIG_PATH=deploy/instructor jupyter lab`): formgrader, Create
   assignment and its sidebar are there.

A screenshot per step goes to build/browser-test/ (NN-step.png; 07-learner-view.png and
08-instructor-view.png show the Nbgrader menu open) and one more, FAILED-<test>.png,
when a test fails. The server is stopped through its own process group when the tests end, pass or
fail.

Needs the browser extra (python -m pip install -e ".[browser]") and Chromium (Debian/Ubuntu:
apt-get install chromium; elsewhere set COURSE_CHROMIUM to a Chromium or Chrome executable). Skipped
without them, except when COURSE_REQUIRE_BROWSER=1 (CI), where it fails instead.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
import tomllib

from tools.build import COURSE_PYTHON, ROOT

pytestmark = pytest.mark.slow  # one xdist group with its server (conftest.py)

REQUIRED = os.environ.get("COURSE_REQUIRE_BROWSER") == "1"
SHOTS = ROOT / "build" / "browser-test"
CHAPTER = "01_attention"
EXERCISE = f"exercises/{CHAPTER}/{CHAPTER}.ipynb"
FRESH = f"fresh/{CHAPTER}.ipynb"  # a copy no other test opens (an opened notebook may be autosaved)
THEORY = f"notebooks/{CHAPTER}.ipynb"
ANSWER = "def attention_scores(q, k):\n    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])\n"
TIMEOUT_MS = 90_000


def find_chromium() -> str | None:
    """COURSE_CHROMIUM, else the first Chromium or Chrome on PATH."""
    if os.environ.get("COURSE_CHROMIUM"):
        path = os.environ["COURSE_CHROMIUM"]
        return path if os.access(path, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _unavailable(message: str) -> None:
    if REQUIRED:
        pytest.fail(f"COURSE_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def learner_defaults() -> dict[str, Path]:
    """The learner's JupyterLab defaults pyproject.toml installs (deploy/learner/ -> this environment)."""
    shared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    return {source: Path(sys.prefix) / target for source, target in shared["shared-data"].items()}


def learner_defaults_installed() -> bool:
    return all(path.is_file() and path.read_bytes() == (ROOT / source).read_bytes()
               for source, path in learner_defaults().items())


def _write_settings(settings: Path) -> None:
    """Every cell in the page (no windowing). No news or update pop-ups: the learner defaults hide them;
    an environment installed before them gets the same settings here, for the other tests' sake."""
    files = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}
    if not learner_defaults_installed():
        files["@jupyterlab/apputils-extension/notification.jupyterlab-settings"] = \
            {"checkForUpdates": False, "fetchNews": "false"}
    for name, value in files.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))


def stop_server(process: subprocess.Popen, url: str, token: str) -> None:
    """Ask the server to shut down (it stops its kernels), then end its process group."""
    with contextlib.suppress(Exception):
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10)
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            process.wait(timeout=wait if sig == signal.SIGKILL else 10)
            break
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
    with contextlib.suppress(ProcessLookupError):  # anything of the group still alive (kernels)
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def chromium() -> str:
    if importlib.util.find_spec("playwright") is None:
        _unavailable('the browser test needs Playwright: python -m pip install -e ".[browser]" (and Chromium: '
                     'apt-get install chromium, or COURSE_CHROMIUM=/path/to/chrome)')
    path = find_chromium()
    if path is None:
        _unavailable("no Chromium found: install it (Debian/Ubuntu: apt-get install chromium) or set "
                     "COURSE_CHROMIUM=/path/to/chromium; the browser test never downloads one")
    return path


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """`jupyter lab` on a free port with a token, serving a copy of the two notebooks; always stopped."""
    yield from _serve(tmp_path_factory.mktemp("lab"), (EXERCISE, THEORY), {})


@pytest.fixture(scope="module")
def instructor_lab(chromium, tmp_path_factory):
    """The instructor's `jupyter lab`, as the README says: deploy/instructor on JUPYTER_CONFIG_PATH, started
    in a course folder (a copy of nbgrader_config.py and the exercise)."""
    yield from _serve(tmp_path_factory.mktemp("instructor"), (EXERCISE, "nbgrader_config.py"),
                      {"JUPYTER_CONFIG_PATH": str(ROOT / "deploy" / "instructor")})


def _serve(tmp: Path, files: tuple[str, ...], extra_env: dict[str, str]):
    root = tmp / "course"
    for relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, root / relative)
    (root / FRESH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / EXERCISE, root / FRESH)
    _write_settings(tmp / "settings")
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               IPYTHONDIR=str(tmp / "ipython"), MPLBACKEND="module://matplotlib_inline.backend_inline")
    for name in ("JUPYTER_CONFIG_PATH", "COURSE_EXCHANGE", "COURSE_DIR"):  # the caller's own
        env.pop(name, None)
    env.update(extra_env)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log = (tmp / "jupyter.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{(tmp / 'jupyter.log').read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 120 s:\n{(tmp / 'jupyter.log').read_text()}")
            time.sleep(0.5)
        yield {"url": url, "token": token, "root": root}
    finally:
        stop_server(process, url, token)
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser tab; if the test failed, a screenshot of it (FAILED-<test>.png) before it closes."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        # The call's report is logged before teardown: a failure of this test shows in the session's count.
        if request.session.testsfailed > failed_before:
            with contextlib.suppress(Exception):
                page.screenshot(path=SHOTS / f"FAILED-{request.node.name}.png")
        context.close()


def shot(page, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def open_notebook(page, lab, relative: str) -> None:
    """Open one notebook in a fresh JupyterLab workspace of its own, and wait for its kernel."""
    workspace = Path(relative).stem + "-" + Path(relative).parent.name
    page.goto(f"{lab['url']}/lab/workspaces/{workspace}/tree/{relative}?reset&token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for()
    page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').wait_for()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:  # the server's view: this notebook's kernel is up and idle
        with urllib.request.urlopen(f"{lab['url']}/api/sessions?token={lab['token']}", timeout=10) as reply:
            sessions = json.load(reply)
        if any(s.get("path") == relative and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions):
            return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for {relative} after {TIMEOUT_MS / 1000:.0f} s")


def code_cell(page, text: str):
    cells = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text=text)
    cells.first.wait_for()  # the notebook renders its cells progressively
    count = cells.count()
    assert count == 1, f"{count} code cells contain {text!r}"
    return cells.first


def run(page, cell) -> None:
    """Run one cell as a learner does: click into it, Shift+Enter, wait until its prompt has a number.

    A committed notebook may already show the number the new run will get, so the prompt is blanked
    first ([?]); JupyterLab writes [*] while the cell runs, then its number. A run sent before the
    kernel's session is connected is dropped by JupyterLab (the prompt goes back to [ ]): send it again.
    """
    prompt = cell.locator(".jp-InputPrompt")
    for _attempt in range(3):
        cell.locator(".jp-InputArea-editor").click()
        prompt.element_handle().evaluate("p => { p.innerText = '[?]:'; }")
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        dropped_since = None
        while time.monotonic() < deadline:
            text = prompt.inner_text().strip()
            if re.fullmatch(r"\[\d+\]:?", text):
                return
            if text in ("[ ]:", "[ ]"):
                dropped_since = dropped_since or time.monotonic()
                if time.monotonic() - dropped_since > 5:
                    break
            else:
                dropped_since = None
            time.sleep(0.2)
        else:
            raise AssertionError(f"the cell did not finish in {TIMEOUT_MS / 1000:.0f} s (prompt {text!r})")
    raise AssertionError("JupyterLab dropped the run three times: no kernel?")


def _nbgrader_menu(page) -> list[str]:
    page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
    items = page.locator(".lm-Menu-content .lm-Menu-itemLabel")
    items.first.wait_for()
    return [text.strip() for text in items.all_inner_texts() if text.strip()]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def _sidebar_titles(page) -> list[str]:
    return [tab.get_attribute("title") or "" for tab in page.locator(".jp-SideBar .lm-TabBar-tab").all()]


def test_learner_sees_learner_tools_only(lab, page):
    if not learner_defaults_installed():
        _unavailable("this environment predates the learner's JupyterLab defaults (deploy/learner/): "
                     "python -m pip install -e . installs them")
    open_notebook(page, lab, FRESH)
    time.sleep(3)  # JupyterLab asks about news a moment after it starts: give it the time to
    assert page.get_by_text("official Jupyter news").count() == 0
    assert page.locator(".jp-Notification-Toast, .Toastify__toast").count() == 0, \
        page.locator(".Toastify__toast").all_inner_texts()
    if sys.version.split()[0] == COURSE_PYTHON:  # elsewhere the kernel's version string differs (tools/build.py)
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "the notebook opened as unsaved"
    assert page.locator(".jp-NotebookPanel-toolbar").get_by_text("Validate", exact=True).count() == 1
    assert not [t for t in _sidebar_titles(page) if "Create Assignment" in t], _sidebar_titles(page)
    assert _status(f"{lab['url']}/formgrader?token={lab['token']}") == 404
    assert _nbgrader_menu(page) == ["Assignment List"]
    shot(page, "07-learner-view")
    page.keyboard.press("Escape")


def test_instructor_keeps_formgrader(instructor_lab, page):
    open_notebook(page, instructor_lab, FRESH)
    assert [t for t in _sidebar_titles(page) if "Create Assignment" in t], _sidebar_titles(page)
    assert _status(f"{instructor_lab['url']}/formgrader?token={instructor_lab['token']}") == 200
    menu = _nbgrader_menu(page)
    assert {"Assignment List", "Formgrader", "Create assignment"} <= set(menu), menu
    shot(page, "08-instructor-view")
    page.keyboard.press("Escape")


def test_exercise_check_failed_then_tick(lab, page):
    open_notebook(page, lab, EXERCISE)
    shot(page, "01-exercise-opened")

    run(page, code_cell(page, "import helpers.checks.attention"))
    answer = code_cell(page, "def attention_scores(q, k):")
    test = code_cell(page, "check_attention_scores(attention_scores)")
    run(page, answer)
    run(page, test)
    error = test.locator(".jp-OutputArea-output")
    error.filter(has_text="is not implemented yet").wait_for()
    message = error.inner_text().strip()
    assert message.startswith("CheckFailed: attention_scores is not implemented yet") or \
        message.startswith("attention_scores is not implemented yet"), message
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    test.scroll_into_view_if_needed()
    shot(page, "02-exercise-check-failed")

    answer.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(ANSWER)
    assert "math.sqrt(q.shape[-1])" in answer.locator(".jp-InputArea-editor").inner_text()
    run(page, answer)
    run(page, test)
    tick = test.locator(".jp-OutputArea-output").filter(has_text="✓ attention_scores")
    tick.wait_for()
    assert "CheckFailed" not in test.locator(".jp-OutputArea").inner_text()
    test.scroll_into_view_if_needed()
    shot(page, "03-exercise-tick")


def test_theory_figures_render_and_the_slider_redraws(lab, page):
    nb = nbformat.read(str(ROOT / THEORY), as_version=4)
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert figures >= 3
    open_notebook(page, lab, THEORY)
    images = page.locator(".jp-NotebookPanel .jp-OutputArea-output img")
    images.nth(figures - 1).wait_for()
    assert images.count() == figures
    page.wait_for_function("n => [...document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output img')]"
                           ".filter(i => i.complete && i.naturalWidth > 100).length === n", arg=figures)
    images.nth(1).scroll_into_view_if_needed()
    shot(page, "04-theory-figures")

    explorer_cell = code_cell(page, "softmax_explorer(row_scores, d_k=64)")
    unrun = explorer_cell.locator(".jp-OutputArea").inner_text()  # no kernel has drawn it yet
    assert "live controls" in unrun and "temperature 1:" in unrun, unrun  # the widget's plain-text form
    run(page, code_cell(page, "def randn(*shape: int, seed: int"))
    run(page, explorer_cell)
    readout = explorer_cell.locator(".course-readout")
    readout.wait_for()
    before = readout.inner_text()
    picture = explorer_cell.locator(".course-explorer img")
    src_before = picture.get_attribute("src")
    assert "temperature 1:" in before, before
    explorer_cell.scroll_into_view_if_needed()
    shot(page, "05-theory-explorer")

    slider = explorer_cell.locator(".widget-hslider").filter(has_text="temperature").locator(".noUi-target")
    handle = slider.locator(".noUi-handle")
    box, handle_box = slider.bounding_box(), handle.bounding_box()
    page.mouse.move(handle_box["x"] + handle_box["width"] / 2, handle_box["y"] + handle_box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.15 * box["width"], box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function("([el, before]) => el.innerText !== before", arg=[readout.element_handle(), before])
    after = readout.inner_text()
    assert after != before and "temperature 1:" not in after, (before, after)
    assert picture.get_attribute("src") != src_before
    shot(page, "06-theory-slider-moved")
