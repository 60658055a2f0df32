"""The one exception users see: bad input, named by file and problem.

    >>> raise InputError("particles.star", "no CTF columns (rlnDefocusU)")
    class2d.errors.InputError: particles.star: no CTF columns (rlnDefocusU)
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
