"""A simulated dataset on disk: particles, images, references and the ground truth.

    >>> star = write_dataset(simulate(2000), "demo")      # "demo/particles.star"
    >>> truth = read_truth("demo/truth.csv")               # rows as in particles.star
"""

from __future__ import annotations

import dataclasses
import logging
import os

import pandas as pd

from class2d.io import write_particles
from class2d.io.atomic import atomic_path
from class2d.io.mrc import write_stack
from class2d.simulate.dataset import STACK_NAME, Dataset

logger = logging.getLogger(__name__)

#: the files :func:`write_dataset` makes, in the order it writes them
FILES = (STACK_NAME, "references.mrcs", "truth.csv", "particles.star")


def write_dataset(dataset: Dataset, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``particles.star`` (last), ``particles.mrcs``, ``references.mrcs``, ``truth.csv``.

    Each file is written to a temporary name and renamed into place, and
    ``particles.star`` comes last, so it exists only when the rest are complete.
    Refuses to replace any of them unless ``overwrite``.  Returns the STAR path.
    """
    out_dir = os.fspath(out_dir)
    paths = {name: os.path.join(out_dir, name) for name in FILES}
    if not overwrite:
        existing = [p for p in paths.values() if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"{existing[0]}: exists (refusing to overwrite)")
    os.makedirs(out_dir, exist_ok=True)
    apix = float(dataset.table.optics["rlnImagePixelSize"].iloc[0])
    write_stack(paths[STACK_NAME], dataset.images, apix)
    write_stack(paths["references.mrcs"], dataset.references, apix)
    with atomic_path(paths["truth.csv"]) as tmp:
        dataset.truth.to_csv(tmp, index=False, na_rep="nan")
    table = dataclasses.replace(dataset.table, base_dir=out_dir)
    write_particles(table, paths["particles.star"])
    logger.info("wrote %d simulated particles to %s", dataset.table.n, out_dir)
    return paths["particles.star"]


def read_truth(path: str | os.PathLike) -> pd.DataFrame:
    """The ground truth written by :func:`write_dataset` (``junk`` '' for good particles)."""
    return pd.read_csv(path, keep_default_na=False, na_values=["nan"])
