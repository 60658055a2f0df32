"""What a 2D classifier writes for a simulated set, made from its ground truth.

    >>> data = simulate(3000, n_objects=4, duplicate_fraction=0.1, min_separation=24.0)
    >>> table, averages = classifier_output(data, shift_error_A=2.0, split_offset_A=(20.0, 50.0))
    >>> table.particles[["rlnClassNumber", "rlnOriginXAngst", "c2dAlignmentError"]]

For testing the stages after classification (duplicate removal, selection) without
running it.  ``split_offset_A`` makes the case that defeats duplicate removal by aligned
centres alone: every object is split into two classes centred differently (as a
classifier does when it cannot tell two centrings of one object apart), so that two
picks of one particle often go to different classes and their aligned centres then lie
the two classes' offset apart.
"""

from __future__ import annotations

import numpy as np

from class2d.fourier import shift_images
from class2d.io.table import ParticleTable
from class2d.simulate.dataset import Dataset


def classifier_output(data: Dataset, shift_error_A: float = 2.0,
                      split_offset_A: tuple[float, float] | None = None,
                      seed: int = 1) -> tuple[ParticleTable, np.ndarray]:
    """``data.table`` with the columns a classifier adds, from ``data.truth``, and the
    noise-free class averages: (C, box, box) float32, class number c in row c − 1 (the
    object's reference, moved by minus the class's offset; zeros for the junk class).

    shift_error_A: Å, s.d. of the Gaussian error added to each true origin axis;
    split_offset_A: None: class = the particle's object (``true_class + 1``), junk in class
    K + 1; (low, high) Å: each object has a second class (number ``K + 2 + object``)
    centred a random distance in [low, high) from the first in a random direction of the
    class frame, and each good particle joins one of its object's two classes at random
    (its origin then moves by that offset rotated into the particle's frame).
    Adds ``rlnClassNumber``, ``rlnAnglePsi`` (the true ψ, 0 for junk), ``rlnOriginX/YAngst``,
    ``rlnMaxValueProbDistribution`` (uniform 0.2–1) and ``c2dAlignmentError`` (uniform
    0.5–1.5, unrelated to the images).  seed: of every random draw.
    """
    rng = np.random.default_rng(seed)
    truth = data.truth
    n = len(truth)
    origins = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64)
    origins = origins + rng.normal(0.0, shift_error_A, origins.shape)
    posterior = rng.uniform(0.2, 1.0, n)
    error = rng.uniform(0.5, 1.5, n)
    objects = truth["true_class"].to_numpy()
    n_objects = len(data.references)
    psi = np.nan_to_num(truth["rlnAnglePsi"].to_numpy(np.float64))
    classes = np.where(objects >= 0, objects + 1, n_objects + 1)
    averages = np.concatenate([data.references, np.zeros_like(data.references[:1])])
    if split_offset_A is not None:
        distance = rng.uniform(*split_offset_A, n_objects)
        direction = rng.uniform(0.0, 2.0 * np.pi, n_objects)
        offset = distance[:, None] * np.column_stack([np.cos(direction), np.sin(direction)])
        second = (objects >= 0) & (rng.random(n) < 0.5)
        p = offset[objects[second]]
        # a class point p appears at R(−ψ)·p in the particle; the origin is minus the centre
        angle = np.radians(-psi[second])
        cos, sin = np.cos(angle), np.sin(angle)
        origins[second] -= np.column_stack([cos * p[:, 0] - sin * p[:, 1],
                                            sin * p[:, 0] + cos * p[:, 1]])
        classes[second] = n_objects + 2 + objects[second]
        apix = float(data.table.pixel_size()[0])
        averages = np.concatenate([averages, shift_images(data.references, -offset / apix)])
    return data.table.with_columns(
        rlnClassNumber=classes.astype(np.int64), rlnAnglePsi=psi,
        rlnOriginXAngst=origins[:, 0], rlnOriginYAngst=origins[:, 1],
        rlnMaxValueProbDistribution=posterior, c2dAlignmentError=error), averages
