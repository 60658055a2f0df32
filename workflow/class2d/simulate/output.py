"""A simulated dataset on disk: particles, images, references and the ground truth.

    >>> star = write_dataset(simulate(2000), "demo")      # "demo/particles.star"
    >>> truth = read_truth("demo/truth.star")              # rows as in particles.star
    >>> write_simulated("big", chunk=512, n_particles=100_000, box=256, apix=1.0, seed=0)
    >>> simulate_demo("results/demo", seed=0, n_objects=0)   # what the workflow's rule calls
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pandas as pd
import starfile

from class2d.budget import DEFAULT_MEMORY_GB, simulate_chunk
from class2d.io import write_particles, write_star_blocks
from class2d.io.mrc import write_stack
from class2d.io.stack_writer import stack_writer
from class2d.io.table import ParticleTable
from class2d.progress import Progress
from class2d.simulate.dataset import (STACK_NAME, Dataset, add_noise, noise_scale, plan_dataset,
                                      render_clean)
from class2d.simulate.imaging import signal_variance

logger = logging.getLogger(__name__)

#: the files :func:`write_dataset` makes, in the order it writes them
FILES = (STACK_NAME, "references.mrcs", "truth.star", "particles.star")


def write_dataset(dataset: Dataset, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``particles.star`` (last), ``particles.mrcs``, ``references.mrcs``, ``truth.star``.

    Each file is written to a temporary name and renamed into place, and
    ``particles.star`` comes last, so it exists only when the rest are complete.
    Refuses to replace any of them unless ``overwrite``.  Returns the STAR path.
    """
    paths = _paths(out_dir, overwrite)
    # through the writer of write_simulated, so that both give the same header statistics
    with stack_writer(paths[STACK_NAME], *dataset.images.shape[:2], _apix(dataset.table)) as stack:
        stack.write(0, dataset.images)
    return _write_metadata(paths, dataset.table, dataset.truth, dataset.references)


def write_simulated(out_dir: str | os.PathLike, chunk: int = 1024, overwrite: bool = False,
                    **kwargs) -> str:
    """Simulate and write a data set of any size, ``chunk`` images in memory at a time.

    ``kwargs`` go to :func:`~class2d.simulate.dataset.plan_dataset` (``seed`` included).
    The files and their images are those of ``write_dataset(simulate(**kwargs))``, and the
    bytes do not depend on ``chunk``.  Memory: O(n) numbers plus ~24 · chunk · box² bytes.
    The noise level comes from the first ``SNR_SAMPLE`` good particles, rendered once
    more.  Returns the STAR path.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1 image, got {chunk}")
    paths = _paths(out_dir, overwrite)
    plan = plan_dataset(**kwargs)
    n = len(plan.new_row)
    variances = np.concatenate([signal_variance(render_clean(plan, plan.snr_sample[lo:lo + chunk],
                                                               crowd=False))
                                for lo in range(0, plan.snr_sample.size, chunk)])
    scale = noise_scale(plan, variances)
    rng = np.random.default_rng(plan.noise_seed)
    with (Progress(f"simulate {paths[STACK_NAME]}", n, logger) as progress,
          stack_writer(paths[STACK_NAME], n, plan.box, plan.apix) as stack):
        for lo in range(0, n, chunk):
            rows = np.arange(lo, min(lo + chunk, n))
            _, images = add_noise(render_clean(plan, rows), scale, rng, plan.colour, plan.apix)
            stack.write_rows(plan.new_row[rows], images)
            progress.advance(rows.size)
    return _write_metadata(paths, plan.table, plan.truth,
                           (plan.references * scale).astype(np.float32))


def _apix(table: ParticleTable) -> float:
    return float(table.optics["rlnImagePixelSize"].iloc[0])


def _paths(out_dir: str | os.PathLike, overwrite: bool) -> dict[str, str]:
    """The path of each of FILES; ``FileExistsError`` if one exists and not ``overwrite``."""
    out_dir = os.fspath(out_dir)
    paths = {name: os.path.join(out_dir, name) for name in FILES}
    if not overwrite:
        existing = [p for p in paths.values() if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"{existing[0]}: exists (refusing to overwrite)")
    os.makedirs(out_dir, exist_ok=True)
    return paths


def _write_metadata(paths: dict[str, str], table: ParticleTable, truth: pd.DataFrame,
                    references: np.ndarray) -> str:
    """Write references, truth and (last) particles.star beside the stack; the STAR path."""
    write_stack(paths["references.mrcs"], references, _apix(table))
    write_star_blocks({"truth": truth}, paths["truth.star"])
    out_dir = os.path.dirname(paths["particles.star"])
    write_particles(dataclasses.replace(table, base_dir=out_dir), paths["particles.star"])
    logger.info("wrote %d simulated particles to %s", table.n, out_dir)
    return paths["particles.star"]


def read_truth(path: str | os.PathLike) -> pd.DataFrame:
    """The ground truth written by :func:`write_dataset` (``junk`` '' for good particles)."""
    truth = starfile.read(path, always_dict=True)["truth"]
    truth["junk"] = truth["junk"].fillna("").astype(str)
    return truth


def simulate_demo(out_dir: str | os.PathLike, seed: int = 0, n_objects: int = 0,
                  memory_gb: float = DEFAULT_MEMORY_GB, **kwargs) -> str:
    """Simulate and write the demo data set; ``n_objects`` 0 means random views.

    memory_gb: sets the images simulated at a time; ``kwargs`` go to
    :func:`~class2d.simulate.dataset.plan_dataset`.  Returns the STAR path.
    """
    chunk = simulate_chunk(memory_gb, kwargs.get("box", 64), kwargs.get("ctf_pad", 2))
    return write_simulated(out_dir, chunk, overwrite=True, seed=seed,
                           n_objects=n_objects or None, **kwargs)


#: the labelled sets of the accuracy benchmark (``bench/bench_accuracy.py``) and of the
#: seen-once test: as a user's data would look, 3 Å/px, the CTF per micrograph over
#: 0.5–3.5 µm with up to 1,000 Å astigmatism, 1/16 each of noise, ice/carbon-edge and
#: aggregate picks and 1/16 duplicate picks, 100 particles per micrograph
LABELLED_SET = dict(apix=3.0, junk_fraction=3 / 15, duplicate_fraction=1 / 16,
                    defocus_range=(5000.0, 35000.0), max_astigmatism=1000.0)


def write_labelled(out_dir: str | os.PathLike, n_particles: int, box: int, seed: int,
                   kind: str = "objects", snr: float = 0.1,
                   memory_gb: float = DEFAULT_MEMORY_GB) -> str:
    """Write a LABELLED_SET of ``n_particles`` in ``box`` px: ``kind`` "objects" (16
    distinct objects) or "views" (the phantom at uniformly random views).  Returns the
    STAR path."""
    if kind not in ("objects", "views"):
        raise ValueError(f"kind must be 'objects' or 'views', got {kind!r}")
    return write_simulated(out_dir, simulate_chunk(memory_gb, box, 2), overwrite=True,
                           n_particles=n_particles, box=box, seed=seed, snr=snr,
                           n_objects=16 if kind == "objects" else None,
                           n_micrographs=max(20, n_particles // 100), **LABELLED_SET)
