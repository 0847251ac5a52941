"""nbgrader on the class's JupyterHub: the exchange every user's server shares.

deploy/jupyterhub_config.py puts this folder on JUPYTER_CONFIG_PATH of every server it spawns, so a
student's Assignments tab (fetch, submit, fetch feedback) and the instructor's formgrader (release,
collect, release feedback) read it. tests/test_hub.py runs the term through these very files.
"""

import os

c = get_config()  # noqa: F821 (injected by traitlets)

# The course id the instructor's nbgrader_config.py names, and one exchange folder for the class. Create it
# once as root: `mkdir -p /srv/nbgrader/exchange && chmod 1777 /srv/nbgrader/exchange` (on Kubernetes, a
# shared volume mounted there: see deploy/z2jh/config.yaml). The hub passes COURSE_EXCHANGE to every server.
c.CourseDirectory.course_id = "transformer-internals"
c.Exchange.root = os.environ.get("COURSE_EXCHANGE", "/srv/nbgrader/exchange")

# nbgrader's own submit leaves a submission readable by every user who learns its folder's name (the
# inbound folder hides names only); this one makes it readable by the instructors' group alone.
c.ExchangeFactory.submit = "helpers.grading.exchange.PrivateSubmit"
