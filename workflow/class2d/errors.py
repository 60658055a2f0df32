"""The exceptions users see: bad input named by file, bad settings named by config key.

    >>> raise InputError("particles.star", "no CTF columns (rlnDefocusU)")
    class2d.errors.InputError: particles.star: no CTF columns (rlnDefocusU)
    >>> raise ConfigError("select.mode", "must be one of auto, list, thresholds, got 'best'")
    class2d.errors.ConfigError: config select.mode: must be one of auto, list, thresholds, got 'best'
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")


class ConfigError(ValueError):
    """A bad setting. ``str(err)`` is one line: ``config <key>: <problem>``.

    key: the setting as a user writes it in config.yaml, section first (``classify.n_classes``)
    """

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config {key}: {problem}")


def schema_problem(err: Exception) -> str:
    """``config <key>: <problem>`` for a failed validation of the config against its schema
    (Snakemake's ``WorkflowError`` around jsonschema's ``ValidationError``)."""
    problem = err
    while problem is not None and not hasattr(problem, "absolute_path"):
        problem = problem.__cause__ or problem.__context__
    if problem is None:
        return f"config: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    key = ".".join(str(part) for part in problem.absolute_path) or "(top level)"
    return str(ConfigError(key, problem.message))
