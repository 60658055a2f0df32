"""Particle I/O: RELION STAR, CryoSPARC ``.cs`` and MRC stacks, one in-memory table.

    >>> from class2d import io
    >>> table = io.read_particles("run_data.star")        # or "particles.cs"
    >>> io.require_ctf(table)                              # InputError if CTF values are missing
    >>> images = io.read_images(table, rows=range(100))    # (100, D, D) float32
    >>> io.write_particles(table, "out/particles.cs")      # .star or .cs, by extension
    >>> io.write_particle_set(kept, "out", "particles", template=table)  # .star and .cs
    >>> classes = io.read_classes("classify/classes.star")   # averages + their table

Every file format of the package lives here: particles (``star``, ``cs``, ``table``),
image stacks (``mrc``), class sets (``classes``), any other STAR table
(``star.write_star_blocks``) and checkpoint arrays (``npz``).

Each name loads its submodule when first used: tables need pandas (0.2-0.6 s to import on
2 cores), which a classification job, reading only arrays (``npz``, ``mrc``), does without.
"""
from __future__ import annotations

import importlib

#: every public name → the submodule that defines it
_WHERE = {
    "ClassSet": "classes", "particle_classes": "classes", "read_classes": "classes",
    "write_classes": "classes", "read_cs": "cs", "write_cs": "cs", "write_cs_fields": "cs",
    "StackHeader": "mrc",
    "read_header": "mrc", "read_images": "mrc", "read_stack": "mrc", "write_stack": "mrc",
    "write_npz": "npz", "read_particles": "particles", "write_particle_set": "particles",
    "write_particles": "particles", "read_star": "star", "write_star": "star",
    "write_star_blocks": "star", "ParticleTable": "table", "require_ctf": "table",
    "SIGN_COLUMN": "table",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    """``io.read_particles`` and the like: imports the submodule on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
