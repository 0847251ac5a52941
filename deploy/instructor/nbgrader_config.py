"""The instructor's nbgrader on the hub: the course's own nbgrader_config.py, from their clone of the
repository (COURSE_DIR, default ~/transformer-internals), so formgrader finds solutions/, exercises/ and
the gradebook there. Its exchange is the hub's (it reads COURSE_EXCHANGE, as deploy/nbgrader_config.py does)."""

import os

c = get_config()  # noqa: F821 (injected by traitlets)
load_subconfig(os.path.join(os.path.expanduser(os.environ.get("COURSE_DIR", "~/transformer-internals")),  # noqa: F821
                            "nbgrader_config.py"))
