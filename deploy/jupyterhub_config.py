"""JupyterHub for a Transformer Internals class on one machine: local Unix users, nbgrader's exchange,
learners who see learner tools only and instructors who keep formgrader.

    jupyterhub -f deploy/jupyterhub_config.py      # as root, from any folder (state files land there)

tests/test_hub.py runs a whole term through this file as it is (with its ports and an admin token
given on the command line and in the environment). Settings an admin changes live in the environment
the hub starts with, or in the defaults below:

    COURSE_INSTRUCTORS  Unix user names with formgrader and create-assignment, comma-separated
    COURSE_STUDENTS     Unix user names of the class, comma-separated
    COURSE_EXCHANGE     nbgrader's exchange, one folder shared by the class (default /srv/nbgrader/exchange,
                        created once with mode 1777)
    COURSE_HUB_URL      where the hub listens (default http://127.0.0.1:8000: put a TLS proxy in front)
    COURSE_HUB_ADMIN_TOKEN  optional: an API token for scripting the term (a service with admin scopes)

Every user needs read access to the Python environment and to the course clone this file sits in (the
course package `helpers` is imported from it by every kernel). An instructor also has a clone of the
course in their home folder (~/transformer-internals, or COURSE_DIR), where formgrader keeps the
gradebook and the students' submissions; the instructors' primary Unix group should hold instructors
only: nbgrader's inbound folder takes that group, and helpers.grading.exchange keeps submissions
readable by it alone.
"""

import os
import shutil
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (injected by traitlets)

DEPLOY = Path(__file__).resolve().parent
INSTRUCTORS = {name for name in os.environ.get("COURSE_INSTRUCTORS", "").split(",") if name}
STUDENTS = {name for name in os.environ.get("COURSE_STUDENTS", "").split(",") if name}
EXCHANGE = os.environ.get("COURSE_EXCHANGE", "/srv/nbgrader/exchange")

c.JupyterHub.bind_url = os.environ.get("COURSE_HUB_URL", "http://127.0.0.1:8000")

# Who may log in: the class, with their Unix passwords (PAM). Hub groups say who teaches.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_users = INSTRUCTORS | STUDENTS
c.JupyterHub.load_groups = {"instructors": {"users": sorted(INSTRUCTORS)}, "students": {"users": sorted(STUDENTS)}}

# Each user's JupyterLab runs as that Unix user (so nbgrader's exchange permissions mean something), from
# the hub's own Python environment, on loopback only.
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.ip = "127.0.0.1"
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.env_keep = ["PATH", "PYTHONPATH", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV", "LANG", "LC_ALL",
                      "JUPYTERHUB_SINGLEUSER_APP", "OMP_NUM_THREADS"]  # JupyterHub's list, and the graders' threads

# The proxy: configurable-http-proxy (npm) on PATH, else the one `npm install --prefix $VIRTUAL_ENV` put in
# the environment (as .ci/run does).
c.ConfigurableHTTPProxy.command = [shutil.which("configurable-http-proxy")
                                   or str(Path(sys.prefix) / "node_modules" / ".bin" / "configurable-http-proxy")]


def course_role(spawner) -> None:
    """Tools by role. The environment's defaults are the learner's (pyproject.toml installs
    deploy/learner/: nbgrader's assignment list and validate, no formgrader, no create-assignment,
    no news pop-ups); an instructor's server also reads deploy/instructor/, which turns formgrader,
    create-assignment and the course list back on and points nbgrader at their course clone. Every
    server reads deploy/nbgrader_config.py: the shared exchange."""
    instructor = spawner.user.name in INSTRUCTORS or any(g.name == "instructors" for g in spawner.user.groups)
    config_path = [str(DEPLOY / "instructor"), str(DEPLOY)] if instructor else [str(DEPLOY)]
    spawner.environment.update(
        JUPYTER_CONFIG_PATH=os.pathsep.join(config_path),
        COURSE_EXCHANGE=EXCHANGE,
        COURSE_ROLE="instructor" if instructor else "student",
    )


c.Spawner.pre_spawn_hook = course_role

# An optional admin token for scripts (and tests/test_hub.py): start servers, issue users' tokens.
if os.environ.get("COURSE_HUB_ADMIN_TOKEN"):
    c.JupyterHub.services = [{"name": "course-admin", "api_token": os.environ["COURSE_HUB_ADMIN_TOKEN"]}]
    c.JupyterHub.load_roles = [{
        "name": "course-admin",
        "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users", "read:groups",
                   "access:servers"],
        "services": ["course-admin"],
    }]
