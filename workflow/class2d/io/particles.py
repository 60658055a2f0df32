"""Particle files of either kind, chosen by extension: RELION ``.star`` or CryoSPARC ``.cs``.

    >>> table = read_particles("run_data.star")        # or "particles.cs"
    >>> write_particles(table, "out/particles.cs")
    >>> write_particle_set(kept, "out", "particles", template=table)   # .star and .cs

Reached as ``class2d.io.read_particles`` and so on.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from class2d.errors import InputError
from class2d.io.cs import read_cs, write_cs, write_cs_fields
from class2d.io.star import read_star, write_star
from class2d.io.table import ParticleTable

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
                       template: ParticleTable, warn_empty: bool = True) -> dict[str, str]:
    """Write ``{stem}.star`` and ``{stem}.cs``; an empty table gives files with no rows
    (and a warning, unless ``warn_empty`` is False: a set expected to be empty).

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
        write_cs_fields({name: np.zeros((0,) + dtype[name].shape, dtype[name].base)
                         for name in dtype.names}, 0, cs, template=dtype)
        if warn_empty:
            logger.warning("no particles for %s", star)
    return {f"{stem}.star": star, f"{stem}.cs": cs}
