"""A simulated particle set with its ground truth, in memory and on disk.

    >>> data = simulate(2000, box=64, apix=3.0, snr=0.1, seed=0)
    >>> data.images.shape, data.truth["junk"].value_counts()
    >>> write_dataset(data, "demo")          # demo/particles.star, particles.mrcs, ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from class2d.ctf import CTFParams
from class2d.io.table import ParticleTable
from class2d.simulate.imaging import Scene, coloured_noise, form_images, signal_variance
from class2d.simulate.layout import (Picks, duplicate_picks, fibonacci_views, most_distinct,
                                     place_particles, random_views, view_directions)
from class2d.simulate.phantom import (Phantom, euler_matrix, make_phantom, projected_gaussians,
                                      render)

logger = logging.getLogger(__name__)

#: the kinds of junk pick, as written in ``truth["junk"]``
JUNK_TYPES = ("noise", "edge", "aggregate")

#: mean and s.d. of ``rlnAutopickFigureOfMerit`` per kind of pick ('' = a good particle)
PICK_SCORES = {"": (1.0, 0.25), "noise": (0.3, 0.2), "edge": (1.3, 0.3), "aggregate": (1.1, 0.25)}

STACK_NAME = "particles.mrcs"


class Dataset(NamedTuple):
    """Simulated particles, their images and what is really in them."""

    table: ParticleTable
    """RELION 3.1 particle table (pick coordinates, micrographs, CTF, pick score); no poses"""
    images: np.ndarray
    """(n, box, box) float32, CTF-modulated particles (and neighbours) plus noise of s.d. 1"""
    truth: pd.DataFrame
    """(n rows) ``true_class``, ``phantom`` (index into ``phantoms``), ``rlnAngleRot/Tilt/Psi``
    (degrees), ``rlnOriginXAngst/YAngst`` (Å), ``junk`` ('' for a good particle),
    ``duplicate_of`` (row of the first pick, -1), ``micrograph`` (0-based), ``centre_x/y``
    (true centre, micrograph px); class, phantom and angles are -1/NaN for junk"""
    references: np.ndarray
    """(K, box, box) float32, noise-free CTF-free projection of each class at ψ = 0, origin 0,
    in the units of ``images``"""
    clean: np.ndarray
    """(n, box, box) float32, ``images`` without the noise"""
    phantoms: tuple[Phantom, ...]
    """the 3D objects (one for random views, K for K objects); ``project(phantoms[p], ...)
    * scale`` is in the units of ``images``"""
    scale: float
    """image units per unit of :func:`~class2d.simulate.phantom.project` (1 / noise s.d.)"""


def simulate(n_particles: int = 2000, box: int = 64, apix: float = 3.0, snr: float = 0.1,
             n_objects: int | None = None, junk_fraction: float = 0.1,
             duplicate_fraction: float = 0.05, n_micrographs: int = 20, seed: int = 0, *,
             junk_types: Sequence[str] = JUNK_TYPES, n_references: int = 16,
             diameter_fraction: float = 0.6,
             defocus_range: tuple[float, float] = (8000.0, 25000.0),
             max_astigmatism: float = 1000.0, voltage: float = 300.0, cs: float = 2.7,
             amplitude_contrast: float = 0.1, micrograph_apix: float = 1.0,
             micrograph_size: int = 4096, min_separation: float | None = None,
             duplicate_distance: tuple[float, float] = (6.0, 15.0), pick_sigma: float = 5.0,
             ctf_pad: int = 2, noise_exponent: float = 0.0,
             noise_corner_A: float | None = None, noise_floor: float = 0.0,
             neighbours: int = 0) -> Dataset:
    """Simulate a particle set with known views, classes, junk and duplicate picks.

    n_particles: rows in total (duplicates included); box: px (even); apix: Å/px;
    snr: mean over good particles of var(noise-free image) / noise variance.
    n_objects: ``None`` for one phantom at uniformly random views, ``true_class`` the
    nearest of its ``n_references`` most distinct views; K for K distinct objects (of
    max(4K, 48) phantoms at random views, the K projections that differ most up to
    rotation), equally many particles each, ``true_class`` = ``phantom`` = the object.
    junk_fraction: of the first picks, split evenly over ``junk_types``;
    duplicate_fraction: of all rows, second picks ``duplicate_distance`` Å (low, high)
    from a first pick.  defocus_range (Å), max_astigmatism (Å): per micrograph;
    voltage kV, cs mm.  micrograph_apix (Å/px), micrograph_size (px): the micrographs the
    picks lie on; min_separation (Å, default the particle diameter): between any two
    distinct particles on a micrograph; pick_sigma (Å): pick error per axis.
    ctf_pad: the CTF is applied on a canvas this many times the box (1 = in the box).
    noise_exponent: 0 for white noise; > 0 for noise whose power falls as
    (1 + (f·noise_corner_A)²)^(−noise_exponent/2), cut from a larger canvas (see
    :func:`~class2d.simulate.imaging.coloured_noise`; denoised micrographs: about 6);
    noise_corner_A: Å, default the particle diameter; noise_floor: white power added to
    that spectrum (relative to its peak).  neighbours: other particles (random objects,
    views and ψ) drawn around every pick, their centres 0.8–1.3 diameters
    from its particle's, so that the box holds parts of them as on a crowded micrograph.
    """
    _check(n_particles, box, snr, n_objects, junk_fraction, duplicate_fraction, junk_types)
    started = time.perf_counter()
    rng_phantom, rng_views, rng_junk, rng_picks, rng_noise, rng_crowd = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))
    diameter = diameter_fraction * box * apix
    phantoms, ref_rot, ref_tilt, references = _classes(rng_phantom, n_objects, n_references,
                                                       diameter, box, apix)
    n_classes = len(ref_rot)

    n_dup = min(int(round(duplicate_fraction * n_particles)), n_particles - 1)
    n_first = n_particles - n_dup
    n_junk = int(round(junk_fraction * n_first))
    junk = np.full(n_first, "", dtype=object)
    junk[rng_junk.choice(n_first, n_junk, replace=False)] = np.resize(np.asarray(junk_types), n_junk)
    content = _first_pick_content(rng_views, junk, n_objects, ref_rot, ref_tilt, diameter, apix,
                                  references.max(axis=(1, 2)).mean(), box)
    content["neighbours"] = _neighbours(rng_crowd, n_first, neighbours, n_objects, ref_rot,
                                        ref_tilt, diameter)

    micrograph = rng_picks.permutation(np.resize(np.arange(n_micrographs), n_first))
    min_separation = diameter if min_separation is None else min_separation
    # every box, second picks' included, lies inside its micrograph
    margin = 0.5 * box * apix + 2.0 * pick_sigma + duplicate_distance[1]
    first = place_particles(rng_picks, micrograph, micrograph_size,
                            margin_px=margin / micrograph_apix,
                            min_separation_px=min_separation / micrograph_apix,
                            pick_sigma_px=pick_sigma / micrograph_apix)
    duplicate_of = rng_picks.choice(n_first, n_dup, replace=n_dup > n_first)
    second = duplicate_picks(rng_picks, first, duplicate_of,
                             (duplicate_distance[0] / micrograph_apix,
                              duplicate_distance[1] / micrograph_apix))
    picks = Picks(*(np.concatenate(pair) for pair in zip(first, second)))
    source = np.concatenate([np.arange(n_first), duplicate_of])
    content = {name: values[source] for name, values in content.items()}
    origin_x = (picks.coord_x - picks.centre_x) * micrograph_apix
    origin_y = (picks.coord_y - picks.centre_y) * micrograph_apix

    defocus_u = rng_picks.uniform(*defocus_range, n_micrographs)
    defocus_v = defocus_u - rng_picks.uniform(0.0, max_astigmatism, n_micrographs)
    defocus_angle = rng_picks.uniform(-180.0, 180.0, n_micrographs)
    mic = picks.micrograph
    ctf_params = CTFParams(defocus_u[mic], defocus_v[mic], defocus_angle[mic],
                           np.full(n_particles, voltage), np.full(n_particles, cs),
                           np.full(n_particles, amplitude_contrast))

    views = (content["view1"], content["view2"])
    clean = form_images(_scene(phantoms, views, content["edge"], origin_x, origin_y, apix),
                        ctf_params, box, apix, pad=ctf_pad)
    good = content["junk"] == ""
    variances = signal_variance(clean[good] if good.any() else clean)
    if neighbours:      # after the SNR: it is the particle's, not its neighbours'
        crowd = tuple(np.moveaxis(content["neighbours"], 1, 0))
        clean += form_images(_scene(phantoms, crowd, np.zeros((n_particles, 4)), origin_x,
                                    origin_y, apix), ctf_params, box, apix, pad=ctf_pad)
    noise_sd = np.sqrt(variances.mean() / snr) if variances.mean() > 0 else 1.0
    scale = 1.0 / noise_sd
    clean32 = (clean * scale).astype(np.float32)
    if noise_exponent:
        noise = coloured_noise(rng_noise, n_particles, box, apix, noise_exponent,
                               noise_corner_A or diameter, noise_floor)
    else:
        noise = rng_noise.standard_normal(clean32.shape, dtype=np.float32)
    images = clean32 + noise

    scores = np.empty(n_particles)
    for kind, (mean, sd) in PICK_SCORES.items():
        rows = content["junk"] == kind
        scores[rows] = rng_picks.normal(mean, sd, rows.sum())

    # rows grouped by micrograph, as extraction writes them; duplicates among the others
    shuffled = rng_picks.permutation(n_particles)
    order = shuffled[np.argsort(mic[shuffled], kind="stable")]
    new_row = np.empty(n_particles, np.int64)
    new_row[order] = np.arange(n_particles)
    original = np.concatenate([np.full(n_first, -1), new_row[duplicate_of]])

    truth = pd.DataFrame({
        "true_class": content["true_class"], "phantom": content["phantom"],
        "rlnAngleRot": content["rot"], "rlnAngleTilt": content["tilt"],
        "rlnAnglePsi": content["psi"],
        "rlnOriginXAngst": origin_x, "rlnOriginYAngst": origin_y,
        "junk": content["junk"].astype(str), "duplicate_of": original,
        "micrograph": mic, "centre_x": picks.centre_x, "centre_y": picks.centre_y,
    }).iloc[order].reset_index(drop=True)
    table = _particle_table(picks, ctf_params, scores, order, apix, box, micrograph_apix)
    logger.info("simulated %d particles (%d junk, %d duplicates, %d classes) in %.2f s",
                n_particles, int((truth["junk"] != "").sum()), n_dup, n_classes,
                time.perf_counter() - started)
    return Dataset(table, images[order], truth,
                   (references * scale).astype(np.float32), clean32[order], phantoms, scale)


def _check(n_particles: int, box: int, snr: float, n_objects: int | None, junk_fraction: float,
           duplicate_fraction: float, junk_types: Sequence[str]) -> None:
    if n_particles < 1 or box < 8 or box % 2:
        raise ValueError(f"need n_particles ≥ 1 and an even box ≥ 8, got {n_particles}, {box}")
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")
    if n_objects is not None and n_objects < 1:
        raise ValueError(f"n_objects must be ≥ 1 or None, got {n_objects}")
    if not (0 <= junk_fraction <= 1 and 0 <= duplicate_fraction < 1):
        raise ValueError("junk_fraction must be in [0, 1] and duplicate_fraction in [0, 1)")
    unknown = set(junk_types) - set(JUNK_TYPES)
    if unknown or (junk_fraction > 0 and not junk_types):
        raise ValueError(f"junk_types must be a non-empty subset of {JUNK_TYPES}")


def _classes(rng: np.random.Generator, n_objects: int | None, n_references: int,
             diameter: float, box: int, apix: float
             ) -> tuple[tuple[Phantom, ...], np.ndarray, np.ndarray, np.ndarray]:
    """The phantoms and the view of each class: phantoms, rot (K,), tilt (K,), references.

    K objects: of max(4K, 48) phantoms, each at a random view, the K most distinct.
    Random views: one phantom; the classes are its K most distinct views.
    references: (K, box, box) float64, each class at ψ = 0, origin 0.
    """
    n_classes = n_objects or n_references
    n_candidates = max(4 * n_classes, 48)
    if n_objects:
        candidates = [make_phantom(diameter, seed=int(s))
                      for s in rng.integers(2 ** 32, size=n_candidates)]
        rot, tilt = random_views(rng, n_candidates)
        chosen, _ = most_distinct(candidates, rot, tilt, n_objects, box, apix)
        phantoms = tuple(candidates[c] for c in chosen)
        ref_phantom = np.arange(n_classes)
    else:
        phantoms = (make_phantom(diameter, seed=int(rng.integers(2 ** 32))),)
        rot, tilt = fibonacci_views(n_candidates)
        chosen, _ = most_distinct(phantoms * n_candidates, rot, tilt, n_references, box, apix)
        ref_phantom = np.zeros(n_classes, np.int64)
    rot, tilt = rot[chosen], tilt[chosen]
    matrices = euler_matrix(rot, tilt, np.zeros(n_classes))
    references = render(*(np.concatenate(parts) for parts in zip(*(
        projected_gaussians(phantoms[p], matrices[[k]], np.zeros((1, 2)), apix)
        for k, p in enumerate(ref_phantom)))), box)
    return phantoms, rot, tilt, references


def _particle_table(picks: Picks, ctf_params: CTFParams, scores: np.ndarray, order: np.ndarray,
                    apix: float, box: int, micrograph_apix: float) -> ParticleTable:
    """The RELION 3.1 table of the picks, rows in ``order``: no poses, as after extraction."""
    n = len(order)
    particles = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@{STACK_NAME}" for i in range(n)],
        "rlnMicrographName": [f"micrographs/mic_{m + 1:03d}.mrc" for m in picks.micrograph[order]],
        "rlnCoordinateX": picks.coord_x[order], "rlnCoordinateY": picks.coord_y[order],
        "rlnDefocusU": ctf_params.defocus_u[order], "rlnDefocusV": ctf_params.defocus_v[order],
        "rlnDefocusAngle": ctf_params.defocus_angle[order],
        "rlnOpticsGroup": np.ones(n, np.int64),
        "rlnAutopickFigureOfMerit": scores[order],
    })
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [micrograph_apix],
        "rlnMicrographPixelSize": [micrograph_apix],
        "rlnVoltage": [ctf_params.voltage[0]], "rlnSphericalAberration": [ctf_params.cs[0]],
        "rlnAmplitudeContrast": [ctf_params.amplitude_contrast[0]],
        "rlnImagePixelSize": [apix], "rlnImageSize": [box], "rlnImageDimensionality": [2],
    })
    return ParticleTable(particles, optics)


def _first_pick_content(rng: np.random.Generator, junk: np.ndarray, n_objects: int | None,
                        ref_rot: np.ndarray, ref_tilt: np.ndarray, diameter: float, apix: float,
                        particle_peak: float, box: int) -> dict[str, np.ndarray]:
    """What each first pick holds, relative to its true centre (one entry per pick).

    rot/tilt/psi/phantom: the particle's pose and object (NaN/-1 for junk); view1/view2:
    (rot, tilt, psi, x Å, y Å, present, phantom) of up to two projected objects; edge:
    (height, angle, offset px from the true centre, width px).
    """
    n = len(junk)
    good = junk == ""
    n_classes = len(ref_rot)
    true_class = np.full(n, -1, np.int64)
    if n_objects:
        true_class[good] = rng.permutation(np.resize(np.arange(n_classes), good.sum()))
        rot, tilt = ref_rot[true_class], ref_tilt[true_class]
        phantom = true_class.copy()
    else:
        rot, tilt = random_views(rng, n)
        nearest = view_directions(rot, tilt) @ view_directions(ref_rot, ref_tilt).T
        true_class[good] = np.argmax(nearest[good], axis=1)
        phantom = np.where(good, 0, -1)
    psi = rng.uniform(-180.0, 180.0, n)
    view1 = np.column_stack([rot, tilt, psi, np.zeros((n, 2)), good | (junk == "aggregate"),
                             np.maximum(phantom, 0)])
    view2 = np.zeros((n, 7))

    aggregate = np.flatnonzero(junk == "aggregate")
    if aggregate.size:
        # two objects side by side, the pair's midpoint near the pick: they cross the box edge
        if n_objects:
            pair = rng.integers(0, n_classes, (aggregate.size, 2))
            angles = np.stack([ref_rot[pair], ref_tilt[pair]], axis=-1)
        else:
            pair = np.zeros((aggregate.size, 2))
            angles = np.stack(random_views(rng, 2 * aggregate.size), -1).reshape(-1, 2, 2)
        direction = rng.uniform(0.0, 2.0 * np.pi, aggregate.size)
        unit = np.column_stack([np.cos(direction), np.sin(direction)])
        half_gap = 0.5 * diameter * rng.uniform(0.8, 1.0, (aggregate.size, 1))
        middle = rng.uniform(-0.05, 0.05, (aggregate.size, 2)) * box * apix
        view1[aggregate, :2] = angles[:, 0]
        view1[aggregate, 3:5] = middle - half_gap * unit
        view1[aggregate, 6] = pair[:, 0]
        view2[aggregate] = np.column_stack([angles[:, 1], rng.uniform(-180.0, 180.0, aggregate.size),
                                            middle + half_gap * unit, np.ones(aggregate.size),
                                            pair[:, 1]])

    edge = np.zeros((n, 4))
    edges = np.flatnonzero(junk == "edge")
    if edges.size:
        # carbon: a sharp step; ice: a gradual one
        sharp = rng.random(edges.size) < 0.5
        edge[edges] = np.column_stack([
            particle_peak * rng.uniform(0.7, 1.5, edges.size),
            rng.uniform(-180.0, 180.0, edges.size),
            rng.uniform(-0.3, 0.3, edges.size) * box,
            np.where(sharp, rng.uniform(0.5, 1.5, edges.size), rng.uniform(4.0, 10.0, edges.size)),
        ])
    nan = np.where(good, 1.0, np.nan)
    return {"junk": junk, "true_class": true_class, "phantom": phantom, "rot": rot * nan,
            "tilt": tilt * nan, "psi": psi * nan, "view1": view1, "view2": view2, "edge": edge}


def _neighbours(rng: np.random.Generator, n: int, count: int, n_objects: int | None,
                ref_rot: np.ndarray, ref_tilt: np.ndarray, diameter: float) -> np.ndarray:
    """(n, count, 7) views (as ``view1``) of the other particles around each first pick:
    a random object (or a random view of the phantom) at random ψ, its centre 0.8–1.3
    diameters (Å) from the pick's true centre in a random direction."""
    size = (n, count)
    if n_objects:
        obj = rng.integers(0, len(ref_rot), size)
        rot, tilt, phantom = ref_rot[obj], ref_tilt[obj], obj
    else:
        rot, tilt = (a.reshape(size) for a in random_views(rng, n * count))
        phantom = np.zeros(size, np.int64)
    distance = diameter * rng.uniform(0.8, 1.3, size)
    direction = rng.uniform(0.0, 2.0 * np.pi, size)
    return np.stack([rot, tilt, rng.uniform(-180.0, 180.0, size), distance * np.cos(direction),
                     distance * np.sin(direction), np.ones(size), phantom], axis=-1)


def _scene(phantoms: tuple[Phantom, ...], views: tuple[np.ndarray, ...], edges: np.ndarray,
           origin_x: np.ndarray, origin_y: np.ndarray, apix: float) -> Scene:
    """The scene of every pick: ``views`` (each (n, 7), as ``view1``) and ``edges`` (n, 4),
    moved so that the pick's true centre lies at −origin."""
    origin = np.column_stack([origin_x, origin_y])
    n, m = len(origin), len(phantoms[0].amplitudes)
    parts = []
    for view in views:
        peaks, centres, precisions = np.zeros((n, m)), np.zeros((n, m, 2)), np.ones((n, m, 3))
        for index, phantom in enumerate(phantoms):
            rows = np.flatnonzero((view[:, 5] > 0) & (view[:, 6] == index))
            matrices = euler_matrix(view[rows, 0], view[rows, 1], view[rows, 2])
            peaks[rows], centres[rows], precisions[rows] = projected_gaussians(
                phantom, matrices, view[rows, 3:5] - origin[rows], apix)
        parts.append((peaks, centres, precisions))
    edge = edges.copy()
    theta = np.deg2rad(edge[:, 1])
    # the edge's offset is from the true centre; the image centre is `origin` away from it
    edge[:, 2] -= (origin_x * np.cos(theta) + origin_y * np.sin(theta)) / apix
    return Scene(*(np.concatenate(arrays, axis=1) for arrays in zip(*parts)), edge)
