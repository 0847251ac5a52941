"""Checks the exercise notebooks call: one module per chapter, one shared mechanism (`core`).

Importing a chapter's checks seals the course's modules and records the library functions the
checks rely on; do it in the notebook's first cell, before any answer runs.
"""

import sys

from .core import CheckFailed, protect

__all__ = ["CheckFailed"]

protect(sys.modules[__name__], sys.modules[__package__.rsplit(".", 1)[0]])
