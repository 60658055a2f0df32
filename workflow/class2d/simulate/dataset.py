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
from class2d.simulate.layout import (Picks, duplicate_picks, fibonacci_views,
                                     first_pick_content, most_distinct, place_particles,
                                     random_views)
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


class Plan(NamedTuple):
    """Everything about a simulated set but its images: O(n) numbers, never O(n · box²).

    Particles are drawn in an internal order (first picks, then duplicates) and written in
    output order (grouped by micrograph): output row ``new_row[j]`` holds particle j.
    """

    table: ParticleTable
    """RELION 3.1 particle table, output order (see :class:`Dataset`)"""
    truth: pd.DataFrame
    """ground truth, output order (see :class:`Dataset`)"""
    references: np.ndarray
    """(K, box, box) float64, unscaled noise-free projections of the classes"""
    phantoms: tuple[Phantom, ...]
    """the 3D objects"""
    content: dict[str, np.ndarray]
    """per particle (internal order): ``view1``, ``view2``, ``edge`` (see :func:`~class2d.simulate.layout.first_pick_content`), ``neighbours`` (n, k, 7) views like ``view1``"""
    origins: np.ndarray
    """(n, 2) Å, ``rlnOriginX/YAngst`` per particle (internal order)"""
    ctf_params: CTFParams
    """per particle (internal order)"""
    new_row: np.ndarray
    """(n,) int64, the output row of each particle"""
    snr_sample: np.ndarray
    """internal rows whose mean signal variance sets the noise level: the first
    ``SNR_SAMPLE`` good particles (all of them in sets of up to that many)"""
    noise_seed: np.random.SeedSequence
    """seeds the noise, drawn in internal order image after image"""
    box: int
    apix: float
    snr: float
    ctf_pad: int
    colour: tuple[float, float, float]
    """the noise's (exponent, corner Å, floor): exponent 0 for white noise (see
    :func:`~class2d.simulate.imaging.coloured_noise`)"""


#: good particles whose signal variance sets the noise level (all of them up to this many)
SNR_SAMPLE = 5000


def simulate(n_particles: int = 2000, box: int = 64, apix: float = 3.0, snr: float = 0.1,
             n_objects: int | None = None, junk_fraction: float = 0.1,
             duplicate_fraction: float = 0.05, n_micrographs: int = 20, seed: int = 0,
             **options) -> Dataset:
    """Simulate a particle set with known views, classes, junk and duplicate picks, in memory.

    The arguments are :func:`plan_dataset`'s.  Memory: ~24 · n · box² bytes (images, clean
    images, the float64 rendering); :func:`~class2d.simulate.output.write_simulated` writes
    large sets to disk in bounded memory, with the same images.
    """
    started = time.perf_counter()
    plan = plan_dataset(n_particles, box, apix, snr, n_objects, junk_fraction,
                        duplicate_fraction, n_micrographs, seed, **options)
    clean = render_clean(plan, np.arange(n_particles))
    alone = (render_clean(plan, plan.snr_sample, crowd=False)
             if plan.content["neighbours"].size else clean[plan.snr_sample])
    scale = noise_scale(plan, signal_variance(alone))
    clean32, images = add_noise(clean, scale, np.random.default_rng(plan.noise_seed),
                                plan.colour, plan.apix)
    order = np.argsort(plan.new_row)
    logger.info("simulated %d particles (%d junk, %d duplicates, %d classes) in %.2f s",
                n_particles, int((plan.truth["junk"] != "").sum()),
                int((plan.truth["duplicate_of"] >= 0).sum()), len(plan.references),
                time.perf_counter() - started)
    return Dataset(plan.table, images[order], plan.truth,
                   (plan.references * scale).astype(np.float32), clean32[order], plan.phantoms,
                   scale)


def render_clean(plan: Plan, rows: np.ndarray, crowd: bool = True) -> np.ndarray:
    """Noise-free, CTF-modulated images of particles ``rows`` (internal order), unscaled:
    (m, box, box) float64, with their neighbours unless ``crowd`` is false (the SNR is the
    particle's alone).  Each image depends on its particle alone, not on the others
    rendered with it."""
    views = (plan.content["view1"][rows], plan.content["view2"][rows])
    if crowd:
        views += tuple(np.moveaxis(plan.content["neighbours"][rows], 1, 0))
    scene = _scene(plan.phantoms, views, plan.content["edge"][rows], plan.origins[rows, 0],
                   plan.origins[rows, 1], plan.apix)
    n = len(plan.new_row)
    ctf = CTFParams(*(np.broadcast_to(values, (n,))[rows] for values in plan.ctf_params))
    return form_images(scene, ctf, plan.box, plan.apix, pad=plan.ctf_pad)


def noise_scale(plan: Plan, variances: np.ndarray) -> float:
    """Image units per projection unit (1 / noise s.d.) from the sample's signal variances."""
    return 1.0 / np.sqrt(variances.mean() / plan.snr) if variances.mean() > 0 else 1.0


def add_noise(clean: np.ndarray, scale: float, rng: np.random.Generator,
              colour: tuple[float, float, float] = (0.0, 0.0, 0.0),
              apix: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) float32 images: ``clean · scale`` plus noise of s.d. 1 from ``rng``:
    white, or coloured when ``colour`` (exponent, corner Å, floor) has an exponent > 0
    (:func:`~class2d.simulate.imaging.coloured_noise`; apix: Å/px).

    Consecutive calls continue one noise stream: the images do not depend on how the
    particles were split into calls."""
    clean32 = (clean * scale).astype(np.float32)
    exponent, corner_A, floor = colour
    if exponent:
        noise = coloured_noise(rng, len(clean32), clean32.shape[-1], apix, exponent, corner_A,
                               floor)
    else:
        noise = rng.standard_normal(clean32.shape, dtype=np.float32)
    return clean32, clean32 + noise


def plan_dataset(n_particles: int = 2000, box: int = 64, apix: float = 3.0, snr: float = 0.1,
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
                 neighbours: int = 0) -> Plan:
    """Draw everything about a particle set but its images (see :class:`Plan`).

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
    (1 + (f·noise_corner_A)²)^(−noise_exponent/2) + noise_floor, cut from a larger canvas
    (:func:`~class2d.simulate.imaging.coloured_noise`; denoised micrographs: about 6);
    noise_corner_A: Å, default the particle diameter.  neighbours: other particles (random
    objects, views and ψ) drawn around every pick, their centres 0.8–1.3 diameters from
    its particle's, so that the box holds parts of them as on a crowded micrograph.
    """
    _check(n_particles, box, snr, n_objects, junk_fraction, duplicate_fraction, junk_types)
    # the sixth stream (crowding) leaves the first five, and so every set without
    # neighbours, as they were
    *streams, noise_seed, crowd_seed = np.random.SeedSequence(seed).spawn(6)
    rng_phantom, rng_views, rng_junk, rng_picks = (np.random.default_rng(s) for s in streams)
    diameter = diameter_fraction * box * apix
    phantoms, ref_rot, ref_tilt, references = _classes(rng_phantom, n_objects, n_references,
                                                       diameter, box, apix)

    n_dup = min(int(round(duplicate_fraction * n_particles)), n_particles - 1)
    n_first = n_particles - n_dup
    n_junk = int(round(junk_fraction * n_first))
    junk = np.full(n_first, "", dtype=object)
    junk[rng_junk.choice(n_first, n_junk, replace=False)] = np.resize(np.asarray(junk_types), n_junk)
    content = first_pick_content(rng_views, junk, n_objects, ref_rot, ref_tilt, diameter, apix,
                                  references.max(axis=(1, 2)).mean(), box)
    content["neighbours"] = _neighbours(np.random.default_rng(crowd_seed), n_first, neighbours,
                                        n_objects, ref_rot, ref_tilt, diameter)

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
    good = content["junk"] == ""
    snr_sample = (np.flatnonzero(good) if good.any() else np.arange(n_particles))[:SNR_SAMPLE]

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
    return Plan(table, truth, references, phantoms,
                {name: content[name] for name in ("view1", "view2", "edge", "neighbours")},
                np.column_stack([origin_x, origin_y]), ctf_params, new_row, snr_sample,
                noise_seed, box, apix, snr, ctf_pad,
                (noise_exponent, noise_corner_A or diameter, noise_floor))


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
