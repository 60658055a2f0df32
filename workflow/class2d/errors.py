"""The exceptions users see: bad input named by file, bad settings named by config key.

    >>> raise InputError("particles.star", "no CTF columns (rlnDefocusU)")
    class2d.errors.InputError: particles.star: no CTF columns (rlnDefocusU)
    >>> raise ConfigError("select.mode", "must be one of auto, list, thresholds, got 'best'")
    class2d.errors.ConfigError: config select.mode: must be one of auto, list, thresholds, got 'best'
"""

from __future__ import annotations

import os

#: settings that are gone → the problem a config still using one is told
REPLACED = {key: "no longer a setting: give the particle's diameter once, as the top-level "
                 "particle_diameter_A (Å; 0: 70 % of the box), and every stage derives its "
                 "circle from it (class2d.discs)"
            for key in ("prepare.diameter_A", "classify.mask_diameter_A",
                        "classify.particle_diameter_A", "select.particle_diameter_A")}


def replaced_setting(key: str) -> str | None:
    """What to tell a config that sets ``key`` (``section.name``), if it is a retired one."""
    return REPLACED.get(key)


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
    if getattr(problem, "validator", None) == "additionalProperties":
        known = set(problem.schema.get("properties", {}))
        for name in sorted(set(problem.instance) - known):
            full = f"{key}.{name}" if problem.absolute_path else name
            if replaced_setting(full):
                return str(ConfigError(full, replaced_setting(full)))
    return str(ConfigError(key, problem.message))
