"""Class averages with their table: ``classes.star`` + ``classes.mrcs`` (or RELION's model.star).

    >>> class_set = read_classes("results/classify/classes.star")
    >>> class_set.images.shape, class_set.apix          # (K, d, d) float32, Å/px
    >>> numbers, rows = particle_classes(class_set, table)   # each particle's class row
    >>> write_classes(class_set, [0, 3], "results/select")   # classes.{mrcs,star}

A class file is a STAR loop block (``data_classes``, or the first block with
``rlnReferenceImage``) with one row per class: ``rlnReferenceImage`` (``k@stack.mrcs``,
1-based), ``rlnClassNumber`` (1-based; the row number when absent) and, usually,
``rlnImagePixelSize``; other columns (``rlnEstimatedResolution``, ``c2dMeanPosterior``…)
are carried along.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np
import pandas as pd

from class2d.errors import InputError
from class2d.io.mrc import read_header, read_stack, write_stack
from class2d.io.paths import factorize, find_base_dir, resolve_paths, split_image_names
from class2d.io.star import read_star_blocks, write_star_blocks
from class2d.io.table import ParticleTable

logger = logging.getLogger(__name__)


class ClassSet(NamedTuple):
    """Class averages and their table (one ``classes.star`` or RELION ``model.star``)."""

    table: pd.DataFrame
    """one row per class, with ``rlnClassNumber`` (1-based) and ``rlnReferenceImage``"""
    images: np.ndarray
    """(K, d, d) float32, row k is the average of ``table`` row k"""
    apix: float
    """Å/px of the averages"""
    path: str
    """the STAR file"""


def read_classes(path: str | os.PathLike) -> ClassSet:
    """Read class averages from a ``classes.star`` (or RELION ``run_itNNN_model.star``).

    The block is ``data_classes`` or else the first with ``rlnReferenceImage``
    (``k@stack.mrcs``, 1-based, relative to the STAR's directory or an ancestor);
    ``rlnClassNumber`` defaults to the row number; the pixel size is ``rlnImagePixelSize``
    or else the stack header's.
    """
    path = os.fspath(path)
    blocks = read_star_blocks(path)
    candidates = [blocks["classes"]] if "classes" in blocks else []
    candidates += [b for name, b in blocks.items() if name != "classes"]
    candidates = [pd.DataFrame([b]) if isinstance(b, dict) else b for b in candidates]
    found = [b for b in candidates if isinstance(b, pd.DataFrame) and "rlnReferenceImage" in b]
    if not found or len(found[0]) == 0:
        raise InputError(path, "no class averages (no data block with rlnReferenceImage rows)")
    table = found[0].reset_index(drop=True)
    if "rlnClassNumber" not in table:
        table.insert(0, "rlnClassNumber", np.arange(1, len(table) + 1))
    if table["rlnClassNumber"].duplicated().any():
        raise InputError(path, "rlnClassNumber repeats a class")
    numbers, stacks = split_image_names(table["rlnReferenceImage"].to_numpy())
    base = find_base_dir(os.path.dirname(os.path.abspath(path)), stacks[0])
    stacks = resolve_paths(stacks, base)
    images = np.zeros((len(table),) + _box_of(stacks[0], path), np.float32)
    unique, which = factorize(stacks)
    for k, stack_path in enumerate(unique):
        rows = np.flatnonzero(which == k)
        stack = read_stack(stack_path) if os.path.isfile(stack_path) else None
        if stack is None or stack.shape[1:] != images.shape[1:]:
            problem = "not found" if stack is None else f"holds {stack.shape[-1]} px images"
            raise InputError(path, f"class average stack {stack_path} {problem}")
        index = np.maximum(numbers[rows], 1) - 1
        if index.max() >= stack.shape[0]:
            raise InputError(path, f"{stack_path} has {stack.shape[0]} images, not "
                                   f"{index.max() + 1}")
        images[rows] = stack[index]
    header_apix = read_header(stacks[0]).header_apix
    if "rlnImagePixelSize" in table:
        apix = float(table["rlnImagePixelSize"].iloc[0])
    elif header_apix > 0:
        apix = header_apix
    else:
        raise InputError(path, "no pixel size (no rlnImagePixelSize, none in the stack header)")
    return ClassSet(table, np.stack(images), apix, path)


def _box_of(stack_path: str, source: str) -> tuple[int, int]:
    if not os.path.isfile(stack_path):
        raise InputError(source, f"class average stack {stack_path} not found")
    header = read_header(stack_path)
    return header.ny, header.nx


def write_classes(class_set: ClassSet, rows: np.ndarray, out_dir: str | os.PathLike,
                  stem: str = "classes", images: np.ndarray | None = None,
                  apix: float | None = None) -> dict[str, str]:
    """Write the given rows as ``{stem}.mrcs`` and ``{stem}.star`` (block ``data_classes``).

    ``images``/``apix`` replace the averages (one per row) and their pixel size.
    Returns {file name: path}.
    """
    out_dir = os.fspath(out_dir)
    rows = np.asarray(rows, np.int64)
    images = class_set.images[rows] if images is None else images
    apix = class_set.apix if apix is None else apix
    stack, star = (os.path.join(out_dir, f"{stem}.{ext}") for ext in ("mrcs", "star"))
    table = class_set.table.iloc[rows].reset_index(drop=True)
    table["rlnReferenceImage"] = [f"{k + 1}@{stem}.mrcs" for k in range(len(rows))]
    table["rlnImagePixelSize"] = apix
    write_stack(stack, images, apix)
    write_star_blocks({"classes": table}, star)
    return {f"{stem}.mrcs": stack, f"{stem}.star": star}


def particle_classes(class_set: ClassSet, table: ParticleTable) -> tuple[np.ndarray, np.ndarray]:
    """(class numbers (K,), each particle's row in the class table (n,)); InputError when a
    particle's class is missing from the class set."""
    if "rlnClassNumber" not in table.particles.columns:
        raise InputError(table.source, "no rlnClassNumber: particles are not classified")
    numbers = class_set.table["rlnClassNumber"].to_numpy(np.int64)
    assigned = table.numbers("rlnClassNumber", np.int64)
    unknown = np.setdiff1d(assigned, numbers)
    if unknown.size:
        raise InputError(table.source, f"particles of class {unknown[0]}, which is not in "
                                       f"{class_set.path}")
    return numbers, pd.Series(np.arange(len(numbers)), index=numbers).loc[assigned].to_numpy()
