"""Image names (``N@path``) and the directories their relative paths are resolved against.

    >>> numbers, paths = split_image_names(["3@Extract/job7/a.mrcs", "b.mrc"])
    >>> numbers, paths                                     # 1-based, 0 = whole file
    (array([3, 0]), array(['Extract/job7/a.mrcs', 'b.mrc'], dtype=object))
    >>> relocate_paths(paths, "/data/project", "/work/results")   # for a file written elsewhere

RELION numbers images from 1 and resolves relative paths against the directory it runs
in (the project directory); a STAR file is usually read from there or from a job
directory below it, so readers look for the first image in the STAR's directory and
then in its ancestors (``find_base_dir``).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def split_image_names(names) -> tuple[np.ndarray, np.ndarray]:
    """``"12@stack.mrcs"`` → (12, ``"stack.mrcs"``); a name without ``@`` → (0, name).

    names: (n,) str
    returns: numbers (n,) int64, 1-based (0 where the name has no ``@``); paths (n,) object
    """
    names = pd.Series(np.asarray(names, dtype=object)).astype(str)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] < 2:
        return np.zeros(len(names), np.int64), names.to_numpy(dtype=object)
    has_at = parts[1].notna().to_numpy()
    numbers = np.zeros(len(names), np.int64)
    if has_at.any():
        numbers[has_at] = parts[0][has_at].astype(np.int64).to_numpy()
    paths = np.where(has_at, parts[1].to_numpy(dtype=object), parts[0].to_numpy(dtype=object))
    return numbers, paths.astype(object)


def join_image_names(numbers: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Inverse of ``split_image_names``: (n,) object of ``"N@path"`` (or ``path`` where N is 0)."""
    numbers = np.asarray(numbers, np.int64)
    paths = pd.Series(np.asarray(paths, dtype=object)).astype(str)
    joined = pd.Series(numbers).astype(str) + "@" + paths
    return np.where(numbers > 0, joined.to_numpy(dtype=object), paths.to_numpy(dtype=object))


def factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values (k,) object, codes (n,) int64) such that ``distinct[codes] == values``.

    Hash-based (``pandas.factorize``): far faster than ``np.unique`` on strings.
    """
    codes, distinct = pd.factorize(pd.Series(np.asarray(values, dtype=object)).astype(str))
    return np.asarray(distinct, dtype=object), codes.astype(np.int64)


def resolve_paths(paths: np.ndarray, base_dir: str) -> np.ndarray:
    """Absolute, normalised paths: relative ones joined to ``base_dir``.  (n,) object."""
    unique, inverse = factorize(paths)
    resolved = np.array([p if os.path.isabs(p) else os.path.normpath(os.path.join(base_dir, p))
                         for p in unique], dtype=object)
    return resolved[inverse] if len(inverse) else np.empty(0, dtype=object)


def find_base_dir(start_dir: str, relative_path: str | None) -> str:
    """The directory that ``relative_path`` exists under: ``start_dir`` or its nearest ancestor.

    Falls back to ``start_dir`` (absolute) when the path is absolute, missing or found nowhere.
    """
    start_dir = os.path.abspath(start_dir)
    if not relative_path or os.path.isabs(relative_path):
        return start_dir
    directory = start_dir
    while True:
        if os.path.exists(os.path.join(directory, relative_path)):
            if directory != start_dir:
                logger.info("image paths resolve against %s (an ancestor of %s), as RELION "
                            "resolves them against its project directory", directory, start_dir)
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return start_dir
        directory = parent


def relocate_paths(paths: np.ndarray, base_dir: str, out_dir: str) -> np.ndarray:
    """Rewrite relative paths (relative to ``base_dir``) so that they resolve from ``out_dir``.

    Only paths to files that exist are rewritten: a missing file is most likely relative to a
    directory this program does not know (a CryoSPARC or RELION project), so its path is kept
    as written.  Rewritten paths are relative when ``out_dir`` and the file share a directory
    below ``/``, else absolute.  (n,) object.
    """
    paths = np.asarray(paths, dtype=object)
    base_dir, out_dir = os.path.abspath(base_dir), os.path.abspath(out_dir)
    if os.path.realpath(base_dir) == os.path.realpath(out_dir) or len(paths) == 0:
        return paths
    unique, inverse = factorize(paths)
    moved = []
    for path in unique:
        full = os.path.normpath(os.path.join(base_dir, path))
        if os.path.isabs(path) or not os.path.exists(full):
            moved.append(path)
        elif os.path.commonpath([full, out_dir]) == os.sep:
            moved.append(full)
        else:
            moved.append(os.path.relpath(full, out_dir))
    return np.array(moved, dtype=object)[inverse]
