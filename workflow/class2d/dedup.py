"""Remove duplicate picks: particles whose aligned centres lie too close on one micrograph.

    >>> paths = remove_duplicates("results/classify/particles.star", "results/dedup",
    ...                           min_separation_A=20.0, score="error")
    >>> paths["particles.star"], paths["rejected.star"]

The same particle picked twice gives two boxes a few Å apart whose *aligned* centres
coincide: 2D alignment moves each box's content onto the class average, so the particle
centre on the micrograph is (RELION 3.1)

    centre [Å] = rlnCoordinate [px] · micrograph_apix − rlnOrigin{X,Y}Angst [Å].

Any two particles of one micrograph whose centres are closer than ``min_separation_A``
are duplicates (as CryoSPARC's *Remove Duplicate Particles*).  Pairs are found with a
KD-tree per micrograph.  Groups (A near B near C) are resolved greedily by score, as
non-maximum suppression: the best particle of the micrograph is kept and its neighbours
rejected, then the best of those left, and so on; so in a chain A–B–C where B is best
only B stays, where A is best A and C both stay (they are not close to each other).

Scores (higher wins; ties go to the earlier row):
``score="error"``: the lower ``c2dAlignmentError`` (the classifier's per-particle
residual), or else the higher ``rlnMaxValueProbDistribution``;
``score="pick"``: the higher ``rlnAutopickFigureOfMerit`` (CryoSPARC: ``pick_stats/ncc_score``).

Micrograph pixel size (Å/px of ``rlnCoordinateX/Y``), first found of: the optics group's
``rlnMicrographPixelSize``, its ``rlnMicrographOriginalPixelSize``, the ``.cs`` field
``location/micrograph_psize_A``, the ``micrograph_apix`` argument, the particle image
pixel size (with a warning: right only for particles extracted without binning).
"""

from __future__ import annotations

import logging
import os

import numpy as np
from scipy.spatial import cKDTree

from class2d.errors import ConfigError, InputError
from class2d.io import ParticleTable, read_particles, write_particle_set
from class2d.io.paths import factorize

logger = logging.getLogger(__name__)

#: per-particle score columns for each ``score`` choice, in order of preference,
#: with the sign that makes higher better
SCORE_COLUMNS = {
    "error": (("c2dAlignmentError", -1.0), ("rlnMaxValueProbDistribution", 1.0)),
    "pick": (("rlnAutopickFigureOfMerit", 1.0), ("pick_stats/ncc_score", 1.0)),
}
#: where the micrograph pixel size is looked up: optics columns, then per-particle columns
OPTICS_APIX = ("rlnMicrographPixelSize", "rlnMicrographOriginalPixelSize")
PARTICLE_APIX = ("location/micrograph_psize_A",)
LOCATION_COLUMNS = ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY")


def remove_duplicates(particles_path: str | os.PathLike, out_dir: str | os.PathLike,
                      min_separation_A: float = 20.0, score: str = "error",
                      micrograph_apix: float | None = None,
                      pass_through_without_locations: bool = False) -> dict[str, str]:
    """Split particles into kept and rejected duplicates; write both as STAR and ``.cs``.

    particles_path: classified particles (``.star`` or ``.cs``) with pick locations;
    min_separation_A: Å, centres closer than this on one micrograph are duplicates;
    score: ``"error"`` or ``"pick"`` (see the module docstring);
    micrograph_apix: Å/px of the pick coordinates, used when the metadata has none;
    pass_through_without_locations: inputs without micrograph names or coordinates keep
    every particle (with a warning) instead of raising ``InputError``.
    Writes ``out_dir/particles.{star,cs}`` (kept) and ``out_dir/rejected.{star,cs}``
    (with ``c2dDuplicateDistanceAngst``, the distance to the particle that displaced it).
    Returns {file name: path} of what it wrote.
    """
    if not min_separation_A > 0:
        raise ConfigError("dedup.min_separation_A", f"must be > 0 Å, got {min_separation_A}")
    if score not in SCORE_COLUMNS:
        raise ConfigError("dedup.score", f"must be one of {', '.join(SCORE_COLUMNS)}, "
                                         f"got {score!r}")
    table = read_particles(particles_path)
    source = os.fspath(particles_path)
    missing = [c for c in LOCATION_COLUMNS if c not in table.particles.columns]
    if missing:
        problem = (f"no pick locations ({', '.join(missing)} missing): duplicates cannot be "
                   f"found")
        if not pass_through_without_locations:
            raise InputError(source, problem + " (set pass_through_without_locations to keep "
                                               "every particle, or switch dedup off)")
        logger.warning("%s: %s; keeping all %d particles", source, problem, table.n)
        keep, distance = np.ones(table.n, bool), np.full(table.n, np.nan)
    else:
        centres = particle_centres(table, micrograph_apix)
        scores = particle_scores(table, score)
        _, micrographs = factorize(table.particles["rlnMicrographName"].to_numpy())
        keep, distance = suppress_duplicates(centres, micrographs, scores, min_separation_A)
    logger.info("%s: %d of %d particles are duplicates (closer than %g Å); %d kept",
                source, int((~keep).sum()), table.n, min_separation_A, int(keep.sum()))
    rejected = table.subset(~keep).with_columns(c2dDuplicateDistanceAngst=distance[~keep])
    paths = write_particle_set(table.subset(keep), out_dir, "particles", template=table)
    paths.update(write_particle_set(rejected, out_dir, "rejected", template=table))
    return paths


def particle_centres(table: ParticleTable, micrograph_apix: float | None = None) -> np.ndarray:
    """Aligned particle centres on their micrographs: (n, 2) float64, Å (x, y).

    centre = rlnCoordinate · micrograph_apix − rlnOriginAngst; particles without
    ``rlnOriginX/YAngst`` columns count as unshifted.
    """
    p = table.particles
    apix = micrograph_pixel_size(table, micrograph_apix)
    coords = p[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise InputError(table.source, f"particle {np.argmax(bad) + 1} has no pick coordinate")
    if not all(f"rlnOrigin{axis}Angst" in p for axis in "XY"):
        logger.warning("%s: no rlnOriginX/YAngst: using the pick coordinates unshifted",
                       table.source)
        return coords * apix[:, None]
    origins = np.nan_to_num(p[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(np.float64))
    return coords * apix[:, None] - origins


def micrograph_pixel_size(table: ParticleTable, fallback: float | None = None) -> np.ndarray:
    """(n,) Å/px of each particle's pick coordinates (see the module docstring for the order).

    fallback: Å/px (> 0, even when the metadata has its own), or None.
    """
    if fallback is not None and not fallback > 0:
        raise ConfigError("dedup.micrograph_apix", f"must be > 0 Å/px, got {fallback}")
    for name in OPTICS_APIX:
        if name in table.optics.columns:
            values = table.optics_column(name).astype(np.float64)
            if np.all(np.isfinite(values) & (values > 0)):
                _check_fallback(table, values, fallback, name)
                return values
    for name in PARTICLE_APIX:
        if name in table.particles.columns:
            values = table.particles[name].to_numpy(np.float64)
            if np.all(np.isfinite(values) & (values > 0)):
                _check_fallback(table, values, fallback, name)
                return values
    if fallback is not None:
        return np.full(table.n, float(fallback))
    logger.warning("%s: no micrograph pixel size in the metadata and none given: taking the "
                   "particle pixel size (wrong if the particles were extracted binned)",
                   table.source)
    return table.pixel_size()


def _check_fallback(table: ParticleTable, values: np.ndarray, fallback: float | None,
                    name: str) -> None:
    if fallback is not None and not np.allclose(values, fallback):
        logger.warning("%s: micrograph pixel size %g Å/px from %s (metadata wins over the "
                       "micrograph_apix argument %g)", table.source, values[0], name, fallback)


def particle_scores(table: ParticleTable, score: str) -> np.ndarray:
    """(n,) float64, higher is better; NaN becomes the worst score."""
    for column, sign in SCORE_COLUMNS[score]:
        if column in table.particles.columns:
            values = sign * table.particles[column].to_numpy(np.float64)
            logger.info("%s: duplicates ranked by %s %s", table.source,
                        "lower" if sign < 0 else "higher", column)
            return np.where(np.isfinite(values), values, -np.inf)
    names = " or ".join(column for column, _ in SCORE_COLUMNS[score])
    other = "pick" if score == "error" else "error"
    raise InputError(table.source, f"no {names} column to rank duplicates by "
                                   f"(score={score!r}; try score={other!r})")


def suppress_duplicates(centres: np.ndarray, micrographs: np.ndarray, scores: np.ndarray,
                        min_separation: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression within each micrograph.

    centres: (n, 2) positions (any unit); micrographs: (n,) int code of each particle's
    micrograph; scores: (n,) higher is better; min_separation: same unit as ``centres``.
    Returns keep (n,) bool and distance (n,) float64: for a rejected particle the distance
    to the kept particle that displaced it (NaN for kept ones).
    """
    n = len(centres)
    pairs = _close_pairs(centres, micrographs, min_separation)
    keep, distance = np.ones(n, bool), np.full(n, np.nan)
    if len(pairs) == 0:
        return keep, distance
    # best first; ties by row order
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -scores))] = np.arange(n)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    involved = np.unique(pairs)
    for node in involved[np.argsort(rank[involved])]:
        if not keep[node]:
            continue
        neighbours = both[starts[node]:starts[node + 1], 1]
        # neighbours still kept rank lower than `node` (a better one would have removed it)
        displaced = neighbours[keep[neighbours]]
        keep[displaced] = False
        distance[displaced] = np.hypot(*(centres[displaced] - centres[node]).T)
    return keep, distance


def _close_pairs(centres: np.ndarray, micrographs: np.ndarray, radius: float) -> np.ndarray:
    """(m, 2) row pairs (i < j) on one micrograph within ``radius``: one KD-tree each."""
    order = np.argsort(micrographs, kind="stable")
    bounds = np.flatnonzero(np.diff(micrographs[order])) + 1
    found = []
    for rows in np.split(order, bounds):
        if len(rows) < 2:
            continue
        local = cKDTree(centres[rows]).query_pairs(radius, output_type="ndarray")
        if len(local):
            found.append(rows[local])
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    return np.sort(pairs, axis=1)
