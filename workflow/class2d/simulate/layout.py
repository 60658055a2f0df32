"""Where simulated particles are: their views, micrographs, pick coordinates and duplicates.

    >>> chosen, similarity = most_distinct(phantoms, rot, tilt, k=16, box=64, apix=3.0)
    >>> picks = place_particles(rng, micrograph_of, n_micrographs=20, size_px=4096, ...)

Coordinates follow RELION 3.1: ``rlnCoordinateX/Y`` are micrograph pixels of the box
centre, ``rlnOriginX/YAngst`` is the shift that centres the particle, and the particle's
centre on the micrograph is ``coordinate − origin / micrograph_apix``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from class2d.simulate.phantom import Phantom, euler_matrix, projected_gaussians, render

logger = logging.getLogger(__name__)

#: in-plane step (degrees) when comparing candidate views up to rotation
SIMILARITY_PSI_STEP = 10.0


def view_directions(rot: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """Unit projection directions (n, 3): the third row of RELION's Euler matrix."""
    rot, tilt = np.deg2rad(rot), np.deg2rad(tilt)
    return np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], -1)


def random_views(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) degrees of n directions uniform on the sphere."""
    rot = rng.uniform(-180.0, 180.0, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1.0, 1.0, n)))
    return rot, tilt


def rotational_similarity(images: np.ndarray, rotated: np.ndarray) -> np.ndarray:
    """Largest correlation of each pair over in-plane rotations: (m, m), symmetric.

    images: (m, D, D); rotated: (m, r, D, D) the same images at r in-plane rotations.
    The images are centred (their centre of mass at the box centre), so no shift search.
    """
    def unit(a: np.ndarray) -> np.ndarray:
        a = a.reshape(*a.shape[:-2], -1)
        a = a - a.mean(axis=-1, keepdims=True)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    corr = np.einsum("arp,bp->abr", unit(rotated), unit(images)).max(axis=-1)
    return np.maximum(corr, corr.T)


def fibonacci_views(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) degrees of n nearly evenly spread directions over the whole sphere."""
    k = np.arange(n) + 0.5
    tilt = np.rad2deg(np.arccos(1.0 - 2.0 * k / n))
    rot = np.rad2deg(np.pi * (1.0 + 5.0 ** 0.5) * k) % 360.0 - 180.0
    return rot, tilt


def most_distinct(phantoms: Sequence[Phantom], rot: np.ndarray, tilt: np.ndarray, k: int,
                  box: int, apix: float) -> tuple[np.ndarray, np.ndarray]:
    """Choose the k candidate projections that differ most from each other up to rotation.

    Candidate c is ``phantoms[c]`` seen at (``rot[c]``, ``tilt[c]``) degrees.  Greedy
    farthest-point choice, scored by :func:`rotational_similarity` on half-size
    projections.  Returns the chosen candidates (k,) and their (k, k) similarity.
    """
    small_box, small_apix = box // 2, apix * box / (box // 2)
    psis = np.arange(0.0, 360.0, SIMILARITY_PSI_STEP)
    n, r = len(rot), len(psis)
    matrices = euler_matrix(np.repeat(rot, r), np.repeat(tilt, r), np.tile(psis, n)).reshape(n, r, 3, 3)
    # one render call for all candidates (they may be different phantoms)
    gaussians = [projected_gaussians(phantom, m, np.zeros((r, 2)), small_apix)
                 for phantom, m in zip(phantoms, matrices)]
    rotated = render(*(np.concatenate(parts) for parts in zip(*gaussians)), small_box)
    rotated = rotated.reshape(n, r, small_box, small_box)
    similarity = rotational_similarity(rotated[:, 0], rotated)
    chosen = [int(np.argmin(similarity.mean(axis=1)))]
    for _ in range(1, k):
        worst = similarity[:, chosen].max(axis=1)
        worst[chosen] = np.inf
        chosen.append(int(np.argmin(worst)))
    chosen = np.array(chosen)
    chosen_similarity = similarity[np.ix_(chosen, chosen)]
    logger.debug("%d most distinct of %d candidates: largest rotational similarity %.3f", k,
                 len(rot), np.max(chosen_similarity - 2.0 * np.eye(k)) if k > 1 else 0.0)
    return chosen, chosen_similarity


class Picks(NamedTuple):
    """Pick locations of particles on micrographs (every field (n,))."""

    micrograph: np.ndarray
    """int, 0-based micrograph index"""
    centre_x: np.ndarray
    """float, micrograph px, true particle centre"""
    centre_y: np.ndarray
    """float, micrograph px"""
    coord_x: np.ndarray
    """float (whole pixels), micrograph px, ``rlnCoordinateX``: the extraction box centre"""
    coord_y: np.ndarray
    """float (whole pixels), micrograph px, ``rlnCoordinateY``"""


def place_particles(rng: np.random.Generator, micrograph: np.ndarray, size_px: int,
                    margin_px: float, min_separation_px: float,
                    pick_sigma_px: float) -> Picks:
    """Scatter particles over their micrographs, each pick a little off its particle.

    micrograph: (n,) 0-based micrograph of each particle.  True centres and pick
    coordinates of any two particles on one micrograph are both ≥ ``min_separation_px``
    apart; centres keep ``margin_px`` from the edges; the pick error per axis is
    Gaussian (σ ``pick_sigma_px``, clipped at 2σ) and coordinates are whole pixels.
    """
    n = len(micrograph)
    centres = np.zeros((n, 2))
    coords = np.zeros((n, 2))
    for mic in np.unique(micrograph):
        rows = np.flatnonzero(micrograph == mic)
        placed_centres, placed_coords = np.empty((len(rows), 2)), np.empty((len(rows), 2))
        count = attempts = 0
        while count < len(rows):
            attempts += 1
            if attempts > 200 * len(rows) + 1000:
                raise ValueError(
                    f"cannot place {len(rows)} particles {min_separation_px:.0f} px apart on a "
                    f"{size_px} px micrograph; use more micrographs or a smaller separation")
            centre = rng.uniform(margin_px, size_px - margin_px, 2)
            error = np.clip(rng.normal(0.0, pick_sigma_px, 2), -2 * pick_sigma_px, 2 * pick_sigma_px)
            coord = np.rint(centre + error)
            if count and (
                    np.min(np.hypot(*(placed_centres[:count] - centre).T)) < min_separation_px
                    or np.min(np.hypot(*(placed_coords[:count] - coord).T)) < min_separation_px):
                continue
            placed_centres[count], placed_coords[count] = centre, coord
            count += 1
        centres[rows], coords[rows] = placed_centres, placed_coords
    return Picks(micrograph.astype(np.int64), centres[:, 0], centres[:, 1],
                 coords[:, 0], coords[:, 1])


def duplicate_picks(rng: np.random.Generator, picks: Picks, originals: np.ndarray,
                    distance_px: tuple[float, float]) -> Picks:
    """Second picks of the ``originals`` rows: same particle, coordinate moved a little.

    The new whole-pixel coordinate lies ``distance_px`` (low, high) from the original's
    coordinate in a random direction; the true centre is the original's.
    """
    low, high = distance_px
    coords = np.zeros((len(originals), 2))
    for i, row in enumerate(originals):
        start = np.array([picks.coord_x[row], picks.coord_y[row]])
        for _ in range(1000):
            angle = rng.uniform(0.0, 2.0 * np.pi)
            step = np.rint(rng.uniform(low, high) * np.array([np.cos(angle), np.sin(angle)]))
            if low <= np.hypot(*step) <= high:
                break
        else:
            raise ValueError(f"no whole-pixel step between {low:g} and {high:g} px")
        coords[i] = start + step
    return Picks(picks.micrograph[originals], picks.centre_x[originals],
                 picks.centre_y[originals], coords[:, 0], coords[:, 1])


def first_pick_content(rng: np.random.Generator, junk: np.ndarray, n_objects: int | None,
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
