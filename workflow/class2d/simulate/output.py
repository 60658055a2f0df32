"""A simulated dataset on disk: particles, images, references and the ground truth.

    >>> star = write_dataset(simulate(2000), "demo")      # "demo/particles.star"
    >>> truth = read_truth("demo/truth.star")              # rows as in particles.star
    >>> simulate_demo("results/demo", seed=0, n_objects=0)   # what the workflow's rule calls
"""

from __future__ import annotations

import dataclasses
import logging
import os

import pandas as pd
import starfile

from class2d.io import write_particles, write_star_blocks
from class2d.io.mrc import write_stack
from class2d.simulate.dataset import STACK_NAME, Dataset, simulate

logger = logging.getLogger(__name__)

#: the files :func:`write_dataset` makes, in the order it writes them
FILES = (STACK_NAME, "references.mrcs", "truth.star", "particles.star")


def write_dataset(dataset: Dataset, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``particles.star`` (last), ``particles.mrcs``, ``references.mrcs``, ``truth.star``.

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
    write_star_blocks({"truth": dataset.truth}, paths["truth.star"])
    table = dataclasses.replace(dataset.table, base_dir=out_dir)
    write_particles(table, paths["particles.star"])
    logger.info("wrote %d simulated particles to %s", dataset.table.n, out_dir)
    return paths["particles.star"]


def read_truth(path: str | os.PathLike) -> pd.DataFrame:
    """The ground truth written by :func:`write_dataset` (``junk`` '' for good particles)."""
    truth = starfile.read(path, always_dict=True)["truth"]
    truth["junk"] = truth["junk"].fillna("").astype(str)
    return truth


def simulate_demo(out_dir: str | os.PathLike, seed: int = 0, n_objects: int = 0,
                  **kwargs) -> str:
    """Simulate and write the demo data set; ``n_objects`` 0 means random views.

    ``kwargs`` go to :func:`~class2d.simulate.dataset.simulate`.  Returns the STAR path.
    """
    dataset = simulate(seed=seed, n_objects=n_objects or None, **kwargs)
    return write_dataset(dataset, out_dir, overwrite=True)
