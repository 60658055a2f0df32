"""Remove duplicate picks: particles whose aligned centres or picks lie too close on one micrograph.

    >>> paths = remove_duplicates("results/classify/particles.star", "results/dedup",
    ...                           min_separation_A=20.0, score="error")
    >>> paths["particles.star"], paths["rejected.star"]

The same particle picked twice gives two boxes a few Å apart whose *aligned* centres
coincide: 2D alignment moves each box's content onto the class average, so the particle
centre on the micrograph is (RELION 3.1)

    centre [Å] = rlnCoordinate [px] · micrograph_apix − rlnOrigin{X,Y}Angst [Å].

With the class averages (``classes_star``), the aligned centre is moved to where the
centre of mass of the particle's class average (density above 0.2 of its maximum, as the
classifier recentres) lies on the micrograph: ``+ R(−ψ)·c`` for an average whose centre of
mass is c Å from its box centre (``rlnAnglePsi`` ψ; a class point p appears at R(−ψ)·p in
the particle).  Two classes of one object centred differently then give one particle
the same centre; without it, their aligned centres lie the classes' offset apart (and
distinct particles of an off-centred class can come closer than they are).

Any two particles of one micrograph whose aligned centres are closer than
``min_separation_A``, or whose pick coordinates (``rlnCoordinate · micrograph_apix``, no
shift) are closer than ``pick_separation_A`` (default: the same distance), are duplicates
(as CryoSPARC's *Remove Duplicate Particles*, which compares the picks' locations).  The
pick criterion catches the pairs the aligned centres miss: two picks of one particle put
into two classes of the same object centred differently, whose aligned centres then lie
20–50 Å apart.  The log says how many pairs each criterion found.  Pairs are found with a
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
from class2d.fourier import centre_of_mass_shifts
from class2d.io import (ClassSet, ParticleTable, particle_classes, read_classes, read_particles,
                        write_particle_set)
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
#: density above this share of an average's maximum counts for its centre of mass (the
#: classifier's default recenter_threshold)
CENTRE_THRESHOLD = 0.2


def remove_duplicates(particles_path: str | os.PathLike, out_dir: str | os.PathLike,
                      min_separation_A: float = 20.0, score: str = "error",
                      micrograph_apix: float | None = None,
                      pass_through_without_locations: bool = False,
                      pick_separation_A: float | None = None,
                      classes_star: str | os.PathLike | None = None) -> dict[str, str]:
    """Split particles into kept and rejected duplicates; write both as STAR and ``.cs``.

    particles_path: classified particles (``.star`` or ``.cs``) with pick locations;
    min_separation_A: Å, centres closer than this on one micrograph are duplicates;
    score: ``"error"`` or ``"pick"`` (see the module docstring);
    micrograph_apix: Å/px of the pick coordinates, used when the metadata has none;
    pass_through_without_locations: inputs without micrograph names or coordinates keep
    every particle (with a warning) instead of raising ``InputError``;
    pick_separation_A: Å, picks closer than this on one micrograph are duplicates whatever
    their aligned centres (``None``: ``min_separation_A``; 0: aligned centres only);
    classes_star: the classes' ``classes.star`` (or None): centres corrected by the centre
    of mass of each particle's class average (see the module docstring).
    Writes ``out_dir/particles.{star,cs}`` (kept) and ``out_dir/rejected.{star,cs}``
    (with ``c2dDuplicateDistanceAngst`` and ``c2dDuplicatePickDistanceAngst``, the distances
    of the aligned centres and of the picks to the particle that displaced it, Å).
    Returns {file name: path} of what it wrote.
    """
    if not min_separation_A > 0:
        raise ConfigError("dedup.min_separation_A", f"must be > 0 Å, got {min_separation_A}")
    pick_separation_A = min_separation_A if pick_separation_A is None else pick_separation_A
    if not pick_separation_A >= 0:
        raise ConfigError("dedup.pick_separation_A", f"must be ≥ 0 Å, got {pick_separation_A}")
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
        keep = np.ones(table.n, bool)
        distance = pick_distance = np.full(table.n, np.nan)
    else:
        centres = particle_centres(table, micrograph_apix)
        if classes_star is not None:
            centres += class_centre_offsets(read_classes(classes_star), table)
        picks = pick_locations(table, micrograph_apix)
        _, micrographs = factorize(table.particles["rlnMicrographName"].to_numpy())
        pairs = duplicate_pairs(centres, micrographs, min_separation_A, picks,
                                pick_separation_A, source)
        displaced_by = displacing_particles(pairs, particle_scores(table, score))
        keep = displaced_by < 0
        distance, pick_distance = _distances(centres, displaced_by), _distances(picks, displaced_by)
    logger.info("%s: %d of %d particles are duplicates (aligned centres closer than %g Å or "
                "picks closer than %g Å); %d kept", source, int((~keep).sum()), table.n,
                min_separation_A, pick_separation_A, int(keep.sum()))
    rejected = table.subset(~keep).with_columns(c2dDuplicateDistanceAngst=distance[~keep],
                                                c2dDuplicatePickDistanceAngst=pick_distance[~keep])
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
    coords = _pick_px(table)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise InputError(table.source, f"particle {np.argmax(bad) + 1} has no pick coordinate")
    if not all(f"rlnOrigin{axis}Angst" in p for axis in "XY"):
        logger.warning("%s: no rlnOriginX/YAngst: using the pick coordinates unshifted",
                       table.source)
        return coords * apix[:, None]
    origins = np.nan_to_num(np.column_stack([table.numbers(f"rlnOrigin{axis}Angst")
                                             for axis in "XY"]))
    return coords * apix[:, None] - origins


def class_centre_offsets(class_set: ClassSet, table: ParticleTable) -> np.ndarray:
    """(n, 2) float64 Å (x, y): where the centre of mass of each particle's class average
    lies in the particle relative to its aligned centre, R(−ψ)·c (see the module docstring)."""
    _, rows = particle_classes(class_set, table)
    com = -centre_of_mass_shifts(np.asarray(class_set.images, np.float64),
                                 CENTRE_THRESHOLD) * class_set.apix
    psi = np.radians(-np.nan_to_num(table.numbers("rlnAnglePsi"))
                     if "rlnAnglePsi" in table.particles else np.zeros(table.n))
    c = com[rows]
    cos, sin = np.cos(psi), np.sin(psi)
    return np.column_stack([cos * c[:, 0] - sin * c[:, 1], sin * c[:, 0] + cos * c[:, 1]])


def pick_locations(table: ParticleTable, micrograph_apix: float | None = None) -> np.ndarray:
    """Pick coordinates on their micrographs, unshifted: (n, 2) float64, Å (x, y)."""
    apix = micrograph_pixel_size(table, micrograph_apix)
    return _pick_px(table) * apix[:, None]


def _pick_px(table: ParticleTable) -> np.ndarray:
    """(n, 2) float64 px on the micrograph (x, y): ``rlnCoordinateX/Y`` as numbers."""
    return np.column_stack([table.numbers("rlnCoordinateX"), table.numbers("rlnCoordinateY")])


def micrograph_pixel_size(table: ParticleTable, fallback: float | None = None) -> np.ndarray:
    """(n,) Å/px of each particle's pick coordinates (see the module docstring for the order).

    fallback: Å/px (> 0, even when the metadata has its own), or None.
    """
    if fallback is not None and not fallback > 0:
        raise ConfigError("dedup.micrograph_apix", f"must be > 0 Å/px, got {fallback}")
    for name in OPTICS_APIX:
        if name in table.optics.columns:
            values = table.optics_column(name)
            if np.all(np.isfinite(values) & (values > 0)):
                _check_fallback(table, values, fallback, name)
                return values
    for name in PARTICLE_APIX:
        if name in table.particles.columns:
            values = table.numbers(name)
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
            values = sign * table.numbers(column)
            logger.info("%s: duplicates ranked by %s %s", table.source,
                        "lower" if sign < 0 else "higher", column)
            return np.where(np.isfinite(values), values, -np.inf)
    names = " or ".join(column for column, _ in SCORE_COLUMNS[score])
    other = "pick" if score == "error" else "error"
    raise InputError(table.source, f"no {names} column to rank duplicates by "
                                   f"(score={score!r}; try score={other!r})")


def suppress_duplicates(centres: np.ndarray, micrographs: np.ndarray, scores: np.ndarray,
                        min_separation: float, picks: np.ndarray | None = None,
                        pick_separation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression within each micrograph.

    centres: (n, 2) aligned positions (any unit); micrographs: (n,) int code of each
    particle's micrograph; scores: (n,) higher is better; min_separation: same unit as
    ``centres``; picks: (n, 2) pick positions in that unit, duplicates when closer than
    ``pick_separation`` (None or 0: not used).
    Returns keep (n,) bool and distance (n,) float64: for a rejected particle the distance
    of its aligned centre to that of the kept particle that displaced it (NaN for kept ones).
    """
    pairs = duplicate_pairs(centres, micrographs, min_separation, picks, pick_separation)
    displaced_by = displacing_particles(pairs, scores)
    keep = displaced_by < 0
    return keep, _distances(centres, displaced_by)


def duplicate_pairs(centres: np.ndarray, micrographs: np.ndarray, min_separation: float,
                    picks: np.ndarray | None = None, pick_separation: float = 0.0,
                    source: str = "particles") -> np.ndarray:
    """(m, 2) row pairs (i < j) of one micrograph whose ``centres`` lie closer than
    ``min_separation`` or whose ``picks`` lie closer than ``pick_separation`` (see
    :func:`suppress_duplicates`); logs how many each criterion found (source: the input)."""
    pairs = _close_pairs(centres, micrographs, min_separation)
    if picks is None or not pick_separation > 0:
        logger.info("%s: %d pairs of duplicates by aligned centre", source, len(pairs))
        return pairs
    by_pick = _close_pairs(picks, micrographs, pick_separation)
    n = len(centres)
    common = np.intersect1d(pairs[:, 0] * n + pairs[:, 1], by_pick[:, 0] * n + by_pick[:, 1]).size
    logger.info("%s: %d pairs of duplicates: %d by aligned centre and pick, %d by aligned "
                "centre only, %d by pick only", source, len(pairs) + len(by_pick) - common,
                common, len(pairs) - common, len(by_pick) - common)
    return np.unique(np.concatenate([pairs, by_pick]), axis=0)


def displacing_particles(pairs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Greedy non-maximum suppression over duplicate ``pairs`` (m, 2): (n,) int64, for each
    rejected particle the row of the kept particle that displaced it, −1 for kept ones.
    scores: (n,) higher is better; ties go to the earlier row."""
    n = len(scores)
    displaced_by = np.full(n, -1, np.int64)
    if len(pairs) == 0:
        return displaced_by
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -scores))] = np.arange(n)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    involved = np.unique(pairs)
    for node in involved[np.argsort(rank[involved])]:
        if displaced_by[node] >= 0:
            continue
        neighbours = both[starts[node]:starts[node + 1], 1]
        # neighbours still kept rank lower than `node` (a better one would have removed it)
        displaced_by[neighbours[displaced_by[neighbours] < 0]] = node
    return displaced_by


def _distances(positions: np.ndarray, displaced_by: np.ndarray) -> np.ndarray:
    """(n,) distance of each rejected particle to the one that displaced it; NaN if kept."""
    distance = np.full(len(positions), np.nan)
    gone = np.flatnonzero(displaced_by >= 0)
    distance[gone] = np.hypot(*(positions[gone] - positions[displaced_by[gone]]).T)
    return distance


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
