"""Select 2D classes: by a list, by thresholds, automatically, or from the selection page.

    >>> paths = select_classes("results/classify/classes.star",
    ...                        "results/classify/particles.star", "results/select")
    >>> select_classes(..., mode="list", classes=[1, 2, 5])
    >>> select_classes(..., mode="thresholds", min_particles=100, max_resolution_A=20.0)
    >>> select_classes(..., selection_file="selection.json")   # saved by selection.html

Every mode writes the same files: ``particles.{star,cs}`` (particles of the selected
classes), ``rejected.{star,cs}``, ``classes.{mrcs,star}`` (the selected averages only;
``rlnReferenceImage`` points into the new stack, ``rlnClassNumber`` keeps the original
number, which the particles' ``rlnClassNumber`` still refers to) and ``selection.html``,
a page to review the choice and save another (``{"selected": [class numbers]}``).  A
``selection_file`` that exists overrides ``mode``.

Particles inside the selected classes
-------------------------------------
``max_particle_zscore`` also rejects the particles of the selected classes that do not fit
their class: those whose ``rlnParticleSelectZScore`` (``.cs``: ``class2d/select_zscore``;
written by the classifier, see :mod:`class2d.em.outliers`) is above a threshold, as
CryoSPARC's *Subset Particles by Statistic*.  A number is the threshold; ``"auto"`` fits
two Gaussians to the z-scores of the selected classes' particles (CryoSPARC's "cluster by
Gaussian fitting") and cuts where the upper one becomes the likelier, kept within
AUTO_ZSCORE_RANGE; ``None`` keeps every particle of the selected classes.  The page shows,
per class, the share of its particles above the threshold.

The automatic rule
------------------
Each average (box D px) is split into a central disc (radius: half the particle
diameter, default 0.35·D) and an annulus out to the classifier's mask radius (default
0.45·D; both ``class2d.discs``), cut into 8 sectors of 45°.  With the annulus median as
background level:

* ``contrast`` = √(mean square in the disc − that of the quietest sector): the central
  signal above the solvent noise;
* ``edge_ratio`` = (mean square of the loudest sector − that of the quietest) / contrast²:
  signal that reaches the mask edge in some direction (ice or carbon edges, a neighbour
  or aggregate, a particle too big for its mask); noise-only averages score ~1–3 too;
* ``offcentre`` = distance of the centre of mass of |average − background| from the box
  centre, as a fraction of D.

A class is junk if it is empty, or ``edge_ratio`` > 0.2, or ``offcentre`` > 0.1, or its
contrast is below 0.25 × the reference contrast (particle-weighted median over the
classes passing the first tests: faint or empty averages), or, where the classifier
estimated resolutions, its resolution is worse than 2.5 × the reference resolution
(weighted median over the classes passing all other tests).  ``quality`` is the smallest
margin over these tests (threshold / value or value / threshold), ≥ 1 for a good class;
the page sorts by it.  Particle counts are not a criterion (rare views make small
classes); add ``min_particles`` etc. to the automatic rule if wanted.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import pandas as pd

from class2d import discs
from class2d.class_frame import class_frame_average
from class2d.errors import ConfigError, InputError
from class2d.fourier import pixel_grid, pixel_radius
from class2d.io import (ClassSet, ParticleTable, particle_classes, read_classes, read_particles,
                        write_classes, write_particle_set)
from class2d.report_select import write_selection_page

logger = logging.getLogger(__name__)

MODES = ("auto", "list", "thresholds")
#: per-particle z-score columns (STAR, then ``.cs``) and the range of the automatic threshold
ZSCORE_COLUMNS = ("rlnParticleSelectZScore", "class2d/select_zscore")
AUTO_ZSCORE_RANGE = (2.5, 6.0)
#: automatic rule (see the module docstring)
EDGE_RATIO_MAX = 0.2
OFFCENTRE_MAX = 0.1
CONTRAST_MIN = 0.25
RESOLUTION_FACTOR = 2.5
N_SECTORS = 8
#: the automatic rule's reasons that a class's outliers can cause (``refit_classes``), and
#: the fewest particles left without them for a class to be judged again
SHAPE_REASONS = {"signal at the mask edge", "off-centre"}
MIN_REFIT = 10


def select_classes(classes_star: str | os.PathLike, particles_path: str | os.PathLike,
                   out_dir: str | os.PathLike, mode: str = "auto",
                   classes: list[int] | None = None, min_particles: int | None = None,
                   max_resolution_A: float | None = None, min_posterior: float | None = None,
                   max_eca: float | None = None, selection_file: str | os.PathLike | None = None,
                   particle_diameter_A: float = 0.0,
                   max_particle_zscore: float | str | None = "auto") -> dict[str, str]:
    """Keep the particles of the chosen classes; write the files listed in the module docstring.

    mode: ``"auto"``, ``"list"`` (``classes``: class numbers) or ``"thresholds"``
    (``min_particles``, ``max_resolution_A`` Å, ``min_posterior`` 0–1, ``max_eca``: each
    ``None`` is off; in ``"auto"`` those given apply on top of the automatic rule);
    selection_file: JSON ``{"selected": [...]}``; when it exists it overrides ``mode``;
    particle_diameter_A: Å, for the automatic rule (0: 70 % of the box, ``discs``);
    max_particle_zscore: a number, ``"auto"`` or None (see "Particles inside the selected
    classes" above).
    Returns {file name: path} of what it wrote.
    """
    if mode not in MODES:
        raise ConfigError("select.mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    class_set = read_classes(classes_star)
    table = read_particles(particles_path)
    summary = summarize(class_set, table, particle_diameter_A)
    thresholds = dict(min_particles=min_particles, max_resolution_A=max_resolution_A,
                      min_posterior=min_posterior, max_eca=max_eca)
    passes = threshold_mask(summary, class_set.path, **thresholds)
    automatic = False
    if selection_file is not None and os.path.isfile(selection_file):
        chosen = _in_list(summary, read_selection(selection_file),
                          functools.partial(InputError, selection_file))
        how = f"selection file {os.fspath(selection_file)}"
    elif mode == "list":
        if not classes:
            raise ConfigError("select.classes", "mode 'list' needs a non-empty list of class "
                                                "numbers")
        chosen = _in_list(summary, classes, functools.partial(ConfigError, "select.classes"))
        how = f"list {list(classes)}"
    elif mode == "thresholds":
        given = {name: value for name, value in thresholds.items() if value is not None}
        chosen, how = passes, f"thresholds {given}"
    else:
        chosen, how = summary["auto"].to_numpy() & passes, "automatic rule"
        automatic = True
    outliers = particle_outliers(table, summary, in_classes(table, summary, chosen),
                                 max_particle_zscore)
    if automatic and outliers.any():
        chosen = chosen | refit_classes(summary, table, outliers, particle_diameter_A) & passes
    summary["selected"] = chosen
    logger.info("%s: %d of %d classes selected (%s)", class_set.path, int(chosen.sum()),
                len(chosen), how)
    in_chosen = in_classes(table, summary, chosen)

    out_dir = os.fspath(out_dir)
    paths = {"selection.html": write_selection_page(
        os.path.join(out_dir, "selection.html"), class_set.images, summary, class_set.apix,
        how=how, selection_file=selection_file)}
    if not chosen.any():
        # (Snakemake removes a failed job's outputs, so the page cannot be pointed to)
        raise InputError(class_set.path, f"no class selected ({how}): the later stages "
                                         f"would have no particles; choose at least one")
    if "zscore_threshold" in summary.attrs:
        logger.info("%s: %d of %d particles of the selected classes have %s > %.2f: rejected",
                    table.source, int((outliers & in_chosen).sum()), int(in_chosen.sum()),
                    ZSCORE_COLUMNS[0], summary.attrs["zscore_threshold"])
    keep = in_chosen & ~outliers
    logger.info("%s: %d of %d particles in the selected classes, %d of them kept", table.source,
                int(in_chosen.sum()), table.n, int(keep.sum()))
    paths.update(write_particle_set(table.subset(keep), out_dir, "particles", template=table))
    paths.update(write_particle_set(table.subset(~keep), out_dir, "rejected", template=table))
    paths.update(write_classes(class_set, np.flatnonzero(chosen), out_dir))
    return paths


def in_classes(table: ParticleTable, summary: pd.DataFrame, chosen: np.ndarray) -> np.ndarray:
    """(n,) bool: the particles of the classes ``chosen`` ((K,) bool over ``summary``)."""
    return table.particles["rlnClassNumber"].isin(
        summary["rlnClassNumber"].to_numpy()[chosen]).to_numpy()


def particle_outliers(table: ParticleTable, summary: pd.DataFrame, in_chosen: np.ndarray,
                      max_zscore: float | str | None) -> np.ndarray:
    """(n,) bool: particles whose z-score is above the threshold ``max_zscore`` sets (see
    the module docstring; ``"auto"`` fits it to the particles ``in_chosen``), in any class.
    Adds ``zscore_drop`` (share of each class's particles above it) to ``summary`` and the
    threshold to ``summary.attrs["zscore_threshold"]``."""
    none = np.zeros(table.n, bool)
    if max_zscore is None:
        return none
    if isinstance(max_zscore, str) and max_zscore != "auto" or (
            not isinstance(max_zscore, str) and not max_zscore > 0):
        raise ConfigError("select.max_particle_zscore",
                          f"must be a number > 0, auto or null, got {max_zscore!r}")
    z = particle_zscores(table)
    if z is None:
        if max_zscore == "auto":
            logger.warning("%s: no %s: every particle of the selected classes kept",
                           table.source, ZSCORE_COLUMNS[0])
            return none
        raise InputError(table.source, f"no {' or '.join(ZSCORE_COLUMNS)}: cannot reject "
                                       f"particles by it (set max_particle_zscore to null)")
    how = "auto"
    if max_zscore == "auto":
        threshold = auto_zscore_threshold(z[in_chosen & np.isfinite(z)])
    else:
        threshold, how = float(max_zscore), "given"
    above = np.nan_to_num(z, nan=np.inf) > threshold
    class_of = table.particles["rlnClassNumber"].to_numpy()
    summary["zscore_drop"] = [above[class_of == k].mean() if (class_of == k).any() else 0.0
                              for k in summary["rlnClassNumber"]]
    summary.attrs["zscore_threshold"] = threshold
    logger.info("%s: particle z-score threshold %.2f (%s)", table.source, threshold, how)
    return above


def refit_classes(summary: pd.DataFrame, table: ParticleTable, outliers: np.ndarray,
                  particle_diameter_A: float = 0.0) -> np.ndarray:
    """(K,) bool: classes the automatic rule rejects for their shape alone (signal at the
    mask edge, off-centre) that pass those tests without their ``outliers`` (n,) bool:
    judged on the average of the others made from their images in the class frame
    (``class_frame.class_frame_average``).  Such a class shows one particle whose average
    took up the junk it absorbed (edges, neighbours); its outliers are left out anyway.
    Sets those classes' ``reasons`` in ``summary``."""
    out = np.zeros(len(summary), bool)
    class_of = table.particles["rlnClassNumber"].to_numpy()
    apix = float(table.pixel_size()[0]) if table.n else 1.0
    for k, (number, reasons) in enumerate(zip(summary["rlnClassNumber"], summary["reasons"])):
        members = class_of == number
        fits = members & ~outliers
        if not reasons or set(reasons.split(", ")) - SHAPE_REASONS or not (
                members & outliers).any() or fits.sum() < MIN_REFIT:
            continue
        average = class_frame_average(table, np.flatnonzero(fits), particle_diameter_A)
        shape = class_features(average[None], apix, particle_diameter_A).iloc[0]
        out[k] = shape["edge_ratio"] <= EDGE_RATIO_MAX and shape["offcentre"] <= OFFCENTRE_MAX
        logger.info("class %d (%s): the average of its %d particles that fit has edge ratio "
                    "%.3f, off-centre %.3f: %s", number, reasons, int(fits.sum()),
                    shape["edge_ratio"], shape["offcentre"],
                    "kept without its outliers" if out[k] else "rejected")
        if out[k]:
            summary.loc[k, "reasons"] = (f"{reasons} in the average of all its particles; kept "
                                         f"without its {int((members & outliers).sum())} "
                                         f"outliers")
    return out


def particle_zscores(table: ParticleTable) -> np.ndarray | None:
    """(n,) float64 per-particle z-scores (the first column of ZSCORE_COLUMNS present)."""
    for column in ZSCORE_COLUMNS:
        if column in table.particles.columns:
            return table.numbers(column)
    return None


def auto_zscore_threshold(z: np.ndarray) -> float:
    """Where the upper of two Gaussians fitted to ``z`` (EM, from the median and MAD and
    the top decile) becomes the likelier, within AUTO_ZSCORE_RANGE; the range's upper end
    when it never does (or there are fewer than 10 values)."""
    low, high = AUTO_ZSCORE_RANGE
    if z.size < 10:
        return high
    centre = np.median(z)
    mean = np.array([centre, np.percentile(z, 95)])
    sd = np.array([1.4826 * np.median(np.abs(z - centre)), z.std()])
    sd = np.maximum(sd, 1e-3)
    weight = np.array([0.9, 0.1])
    for _ in range(200):
        density = weight * np.exp(-0.5 * ((z[:, None] - mean) / sd) ** 2) / sd
        resp = density / np.maximum(density.sum(axis=1, keepdims=True), 1e-300)
        weight = np.maximum(resp.mean(axis=0), 1e-6)
        mean = (resp * z[:, None]).sum(axis=0) / (weight * z.size)
        sd = np.maximum(np.sqrt((resp * (z[:, None] - mean) ** 2).sum(axis=0)
                                / (weight * z.size)), 1e-3)
    upper = int(np.argmax(mean))
    grid = np.linspace(low, high, 351)
    density = weight * np.exp(-0.5 * ((grid[:, None] - mean) / sd) ** 2) / sd
    likelier = np.flatnonzero(density[:, upper] >= density[:, 1 - upper])
    return float(grid[likelier[0]]) if likelier.size else high


def summarize(class_set: ClassSet, table: ParticleTable,
              particle_diameter_A: float = 0.0) -> pd.DataFrame:
    """Per class: number, particle count and share, statistics, features, automatic choice."""
    numbers, class_index = particle_classes(class_set, table)
    counts = np.bincount(class_index, minlength=len(numbers))
    summary = pd.DataFrame({"rlnClassNumber": numbers, "particles": counts,
                            "share": counts / max(counts.sum(), 1)})
    columns = {"resolution_A": "rlnEstimatedResolution", "posterior": "c2dMeanPosterior",
               "eca": "c2dEffectiveClasses"}
    for name, column in columns.items():
        summary[name] = (class_set.table[column].to_numpy(np.float64)
                         if column in class_set.table else np.nan)
    if summary["posterior"].isna().all() and "rlnMaxValueProbDistribution" in table.particles:
        means = table.particles.groupby("rlnClassNumber")["rlnMaxValueProbDistribution"].mean()
        summary["posterior"] = means.reindex(numbers).to_numpy(np.float64)
    features = class_features(class_set.images, class_set.apix, particle_diameter_A)
    summary = pd.concat([summary, features], axis=1)
    return auto_choice(summary)


def class_features(images: np.ndarray, apix: float,
                   particle_diameter_A: float = 0.0) -> pd.DataFrame:
    """``contrast``, ``edge_ratio``, ``offcentre`` of each average (see the module docstring).

    images: (K, D, D); apix: Å/px; particle_diameter_A: Å (0: 0.7·D·apix).
    """
    box = images.shape[-1]
    y, x = pixel_grid(box)
    radius = pixel_radius(box)
    outer, edge = discs.mask_radius_px(box, apix, particle_diameter_A)
    inner = discs.particle_radius_px(box, apix, particle_diameter_A)
    widest = outer - edge
    if inner > widest:
        logger.warning("the solvent between the particle (%.0f Å) and the class mask "
                       "(%.0f Å) is narrower than the mask's soft edge; the automatic rule "
                       "uses a disc of %.0f Å", 2 * inner * apix, 2 * outer * apix,
                       2 * widest * apix)
        inner = widest
    disc = radius < inner
    annulus = (radius >= inner) & (radius < outer)
    sector = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * N_SECTORS).astype(np.int64) % N_SECTORS
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    centred = flat - np.median(flat[:, annulus.ravel()], axis=1, keepdims=True)
    power = centred ** 2
    in_disc = power[:, disc.ravel()].mean(axis=1)
    sectors = np.stack([power[:, (annulus & (sector == s)).ravel()].mean(axis=1)
                        for s in range(N_SECTORS)], axis=1)
    quiet, loud = sectors.min(axis=1), sectors.max(axis=1)
    excess = in_disc - quiet
    with np.errstate(divide="ignore", invalid="ignore"):
        edge_ratio = np.where(excess > 0, (loud - quiet) / excess, np.inf)
    weight = np.abs(centred) * (radius < outer).ravel()
    total = weight.sum(axis=1)
    com = np.stack([weight @ x.ravel(), weight @ y.ravel()], axis=1)
    offcentre = np.where(total > 0, np.hypot(*com.T) / np.maximum(total, 1e-300) / box, 0.0)
    return pd.DataFrame({"contrast": np.sqrt(np.maximum(excess, 0.0)),
                         "edge_ratio": edge_ratio, "offcentre": offcentre})


def auto_choice(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``quality``, ``auto`` (bool) and ``reasons`` (why junk) to a class summary."""
    summary = summary.copy()
    weights = summary["particles"].to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        margins = {"signal at the mask edge": EDGE_RATIO_MAX / summary["edge_ratio"].to_numpy(),
                   "off-centre": OFFCENTRE_MAX / summary["offcentre"].to_numpy()}
        shape_ok = (weights > 0) & (np.minimum(*margins.values()) >= 1)
        reference = _weighted_median(summary["contrast"].to_numpy(), weights * shape_ok)
        margins["faint"] = summary["contrast"].to_numpy() / (CONTRAST_MIN * reference)
        resolution = summary["resolution_A"].to_numpy(np.float64)
        if np.isfinite(resolution).any():
            good = (weights > 0) & (np.min(np.stack(list(margins.values())), axis=0) >= 1)
            best = _weighted_median(resolution, weights * good * np.isfinite(resolution))
            margins["low resolution"] = np.where(np.isfinite(resolution),
                                                 RESOLUTION_FACTOR * best / resolution, np.inf)
    table = np.nan_to_num(np.stack(list(margins.values())), nan=0.0, posinf=1e9)
    summary["quality"] = table.min(axis=0)
    summary["auto"] = (summary["quality"] >= 1) & (weights > 0)
    reasons = [", ".join(name for name, row in zip(margins, table[:, k]) if row < 1)
               for k in range(len(summary))]
    summary["reasons"] = ["empty" if w == 0 else r for w, r in zip(weights, reasons)]
    return summary


def threshold_mask(summary: pd.DataFrame, source: str, min_particles: int | None = None,
                   max_resolution_A: float | None = None, min_posterior: float | None = None,
                   max_eca: float | None = None) -> np.ndarray:
    """(K,) bool: classes passing every threshold given (``None``: not applied)."""
    passes = np.ones(len(summary), bool)
    tests = (("particles", min_particles, np.greater_equal, "particle counts"),
             ("resolution_A", max_resolution_A, np.less_equal, "rlnEstimatedResolution"),
             ("posterior", min_posterior, np.greater_equal, "c2dMeanPosterior"),
             ("eca", max_eca, np.less_equal, "c2dEffectiveClasses"))
    for column, limit, compare, label in tests:
        if limit is None:
            continue
        values = summary[column].to_numpy(np.float64)
        if np.isnan(values).all():
            raise InputError(source, f"no {label}: cannot apply a threshold on it")
        passes &= compare(np.nan_to_num(values, nan=np.inf if compare is np.less_equal
                                        else -np.inf), limit)
    return passes


def read_selection(path: str | os.PathLike) -> list[int]:
    """Class numbers from a selection file: JSON ``{"selected": [1, 4, ...]}``."""
    try:
        with open(path) as handle:
            content = json.load(handle)
        selected = content["selected"]
        return [int(number) for number in selected]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(path, f'not a selection file (JSON {{"selected": [class numbers]}}): '
                               f"{type(err).__name__}: {err}") from err


def _in_list(summary: pd.DataFrame, numbers, error) -> np.ndarray:
    """Mask of the classes ``numbers`` names; an unknown number raises ``error(problem)``
    (an ``InputError`` naming the selection file, or a ``ConfigError`` naming the key)."""
    known = summary["rlnClassNumber"].to_numpy()
    unknown = sorted(set(int(n) for n in numbers) - set(known.tolist()))
    if unknown:
        raise error(f"class {unknown[0]} does not exist (the classes are "
                    f"{known.min()}–{known.max()})")
    return np.isin(known, list(numbers))


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    keep = (weights > 0) & np.isfinite(values)
    if not keep.any():
        return np.nan
    order = np.argsort(values[keep])
    cumulative = np.cumsum(weights[keep][order])
    return float(values[keep][order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
