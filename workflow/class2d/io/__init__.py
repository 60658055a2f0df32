"""Particle I/O: RELION STAR, CryoSPARC ``.cs`` and MRC stacks, one in-memory table.

    >>> from class2d import io
    >>> table = io.read_particles("run_data.star")        # or "particles.cs"
    >>> io.require_ctf(table)                              # InputError if CTF values are missing
    >>> images = io.read_images(table, rows=range(100))    # (100, D, D) float32
    >>> io.write_particles(table, "out/particles.cs")      # .star or .cs, by extension
"""

from __future__ import annotations

import os

from class2d.errors import InputError
from class2d.io.cs import read_cs, write_cs
from class2d.io.mrc import StackHeader, read_header, read_images, read_stack, write_stack
from class2d.io.star import read_star, write_star
from class2d.io.table import ParticleTable, require_ctf

__all__ = [
    "ParticleTable", "StackHeader", "read_cs", "read_header", "read_images", "read_particles",
    "read_stack", "read_star", "require_ctf", "write_cs", "write_particles", "write_stack",
    "write_star",
]


def _kind(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".star", ".cs"):
        raise InputError(path, "unknown particle file type (expected .star or .cs)")
    return suffix


def read_particles(path: str | os.PathLike) -> ParticleTable:
    """Read a RELION ``.star`` or CryoSPARC ``.cs`` particle file (chosen by extension)."""
    path = os.fspath(path)
    return read_star(path) if _kind(path) == ".star" else read_cs(path)


def write_particles(table: ParticleTable, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write ``table`` as RELION 3.1 ``.star`` or CryoSPARC ``.cs`` (chosen by extension)."""
    path = os.fspath(path)
    if _kind(path) == ".star":
        write_star(table, path, overwrite=overwrite)
    else:
        write_cs(table, path, overwrite=overwrite)
