"""Write-then-rename, so that no reader ever sees a half-written file.

    >>> with atomic_path("out/classes.mrcs") as tmp:
    ...     write_something(tmp)           # renamed to out/classes.mrcs on success
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary name beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary file keeps the final suffix (writers such as mrcfile look at it).
    On error it is removed and ``path`` is left as it was.  With ``overwrite=False``
    an existing ``path`` raises ``FileExistsError`` before anything is written.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path}: exists (refusing to overwrite)")
    directory, name = os.path.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    stem, suffix = os.path.splitext(name)
    tmp = os.path.join(directory, f".{stem}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
