"""Grading with nbgrader's own machinery, for learners and instructors.

    course-grade exercises/01_attention/01_attention.ipynb   # a learner grades their own notebook
    course-scan 01_attention                                 # instructor: scan submitted answers
    course-grade-class 01_attention                          # instructor: scan, autograde (parallel),
                                                             # feedback, export, report

`course.py` finds the course and drives nbgrader in-process, `results.py` reads grades and feedback
sentences back, `scan.py` reads answer cells for forbidden code, `learner.py` and `classroom.py`
are the two commands.
"""

from .fastimport import skip_slow_optional_imports

skip_slow_optional_imports()  # before any grading module imports nbgrader (see fastimport.py)
