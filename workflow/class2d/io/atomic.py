"""Write-then-rename, so that no reader ever sees a half-written file.

    >>> with atomic_path("out/classes.mrcs") as tmp:
    ...     write_something(tmp)           # renamed to out/classes.mrcs on success
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary file keeps the final suffix (writers such as mrcfile look at it).
    On error it is removed and ``path`` is left as it was; an ``OSError`` that names no
    file (a full disk fails a ``write``) is raised again naming ``path``.  Temporary files
    of ``path`` left by a killed process are removed first (one job writes a path at a
    time: Snakemake locks its outputs).  With ``overwrite=False`` an existing ``path``
    raises ``FileExistsError`` before anything is written.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path}: exists (refusing to overwrite)")
    directory, name = os.path.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    prefix = f".{stem}.tmp"
    for stale in os.listdir(directory or "."):
        if (stale.startswith(prefix) and stale.endswith(suffix)
                and stale[len(prefix):len(stale) - len(suffix)].isdigit()):
            os.remove(os.path.join(directory, stale))
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror, path) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | os.PathLike, record: dict) -> None:
    """``record`` as a JSON file, written under a temporary name and renamed."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)


def read_json(path: str | os.PathLike) -> dict | None:
    """What :func:`write_json` wrote; None where the file is missing or not whole JSON."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
