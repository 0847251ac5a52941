"""Grading with nbgrader's own machinery, for learners and instructors.

    course-grade exercises/01_attention/01_attention.ipynb   # a learner grades their own notebook
    course-scan 01_attention                                 # instructor: scan submitted answers
    course-grade-class 01_attention                          # instructor: scan, autograde (parallel),
                                                             # feedback, export, report

`course.py` finds the course and drives nbgrader in-process, `results.py` reads grades and feedback
sentences back, `scan.py` reads answer cells for forbidden code, `zygote.py` forks grading kernels
from a pre-imported process, `learner.py` and `classroom.py` are the two commands.
"""

import os as _os
import sys as _sys
from pathlib import Path as _Path

from .fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before any grading module imports nbgrader (see fastimport.py)

# nbgrader runs the `alembic` command by name when it creates a gradebook. Called by path
# (.venv/bin/course-grade) without an activated environment, that command is not on PATH: put this
# interpreter's bin/ first, so the console scripts work either way.
_BIN = str(_Path(_sys.executable).parent)
if _BIN not in _os.environ.get("PATH", "").split(_os.pathsep):
    _os.environ["PATH"] = _BIN + _os.pathsep + _os.environ.get("PATH", "")
