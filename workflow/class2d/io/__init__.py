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
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from class2d.errors import InputError
from class2d.io.atomic import atomic_path
from class2d.io.classes import ClassSet, particle_classes, read_classes, write_classes
from class2d.io.cs import read_cs, write_cs
from class2d.io.mrc import StackHeader, read_header, read_images, read_stack, write_stack
from class2d.io.npz import write_npz
from class2d.io.star import read_star, write_star, write_star_blocks
from class2d.io.table import ParticleTable, require_ctf

__all__ = [
    "ClassSet", "ParticleTable", "StackHeader", "particle_classes", "read_classes", "read_cs",
    "read_header", "read_images", "read_particles", "read_stack", "read_star", "require_ctf",
    "write_classes", "write_cs", "write_npz", "write_particle_set", "write_particles",
    "write_stack", "write_star", "write_star_blocks",
]

logger = logging.getLogger(__name__)


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


def write_particle_set(table: ParticleTable, out_dir: str | os.PathLike, stem: str,
                       template: ParticleTable) -> dict[str, str]:
    """Write ``{stem}.star`` and ``{stem}.cs``; an empty table gives files with no rows.

    ``template`` (≥ 1 row, same columns) gives an empty ``.cs`` its fields:
    ``write_cs`` cannot write 0 rows that have pick locations.  Returns {file name: path}.
    """
    star, cs = (os.path.join(os.fspath(out_dir), f"{stem}.{ext}") for ext in ("star", "cs"))
    write_particles(table, star)
    if table.n:
        write_particles(table, cs)
    else:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(cs))) as scratch:
            proxy = os.path.join(scratch, os.path.basename(cs))
            write_particles(template.subset([0]), proxy)
            dtype = np.load(proxy).dtype
        with atomic_path(cs) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.zeros(0, dtype))
        logger.warning("no particles for %s", star)
    return {f"{stem}.star": star, f"{stem}.cs": cs}
