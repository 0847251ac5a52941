"""nbgrader configuration for Transformer Internals. Run nbgrader from the folder holding this file.

    nbgrader generate_assignment 01_attention --force   # solutions/ -> exercises/ (+ gradebook)
    nbgrader autograde 01_attention --force              # submitted/ -> autograded/ (+ scores)
    nbgrader generate_feedback 01_attention --force      # autograded/ -> feedback/ (HTML)
    nbgrader export                                      # gradebook -> grades.csv
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (injected by traitlets)

# nbgrader creates the gradebook by running the `alembic` command by name. Started by path
# (.venv/bin/nbgrader, .venv/bin/jupyter lab) without an activated environment, that command is not
# on PATH and formgrader answers 500: put the running interpreter's bin/ first (as helpers.grading
# does for the course's own console scripts).
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

COURSE = Path(__file__).resolve().parent

c.CourseDirectory.course_id = "transformer-internals"
c.CourseDirectory.root = str(COURSE)
c.CourseDirectory.source_directory = "solutions"  # nbgrader source: solutions and hidden tests
c.CourseDirectory.release_directory = "exercises"  # the student version, committed
c.CourseDirectory.db_url = f"sqlite:///{COURSE / 'gradebook.db'}"  # git-ignored
if os.environ.get("COURSE_EXCHANGE"):
    # On the class's JupyterHub (deploy/jupyterhub_config.py sets it): the exchange shared by the class.
    c.Exchange.root = os.environ["COURSE_EXCHANGE"]
else:
    c.Exchange.root = str(COURSE / "exchange")  # git-ignored; only for nbgrader's release/collect workflow
    # Created here so that formgrader and the JupyterLab nbgrader extension, which check it when they
    # start, find it writable instead of logging "Unwritable directory ... exchange".
    (COURSE / "exchange").mkdir(exist_ok=True)

# Only notebooks are course material: never copy caches or checkpoints into a release.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*"]

# Per-cell timeout. Every cell of a correct notebook runs in well under a second; an infinite
# loop in a submission costs this much and the rest of the notebook is still graded.
c.Execute.timeout = 60
# A fresh kernel per notebook, no history file, and short tracebacks (so feedback never echoes
# hidden test lines, only the check's one-sentence message).
c.Execute.extra_arguments = ["--HistoryManager.hist_file=:memory:", "--InteractiveShell.xmode=Minimal"]

# A student's own `helpers.py` beside the notebook must not shadow the installed course package:
# PYTHONSAFEPATH keeps the notebook's folder off sys.path in the grading kernel.
os.environ["PYTHONSAFEPATH"] = "1"

# A test cell that deleted or edited is put back from the gradebook.
c.OverwriteCells.add_missing_cells = True

# Anything a warning prints on stderr (torch, numpy, matplotlib) must not zero a correct answer.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"\w*Warning: "

# `nbgrader zip_collect A` (or `course-grade-class A --zip-collect`) unpacks an LMS download put in
# downloaded/A/archive/: each file named <student_id>_<anything>_<notebook>.ipynb, e.g. Canvas's
# "alice_12345_67890_01_attention.ipynb", goes to submitted/alice/A/01_attention.ipynb.
c.FileNameCollectorPlugin.named_regexp = r"^.*/(?P<student_id>[^_/]+)_(?:[^/]*_)?(?P<file_id>\d\d_[a-z0-9_]+\.ipynb)$"

# Keep a flood of output from swamping the autograded notebook.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 20

# Feedback shows the check's message for a failed hidden test but never the hidden test's code.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
