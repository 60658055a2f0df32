"""Twin classes: one object in two classes, at another in-plane angle or centre.

    >>> pairs = twin_pairs(state, mask)          # [Twin(a, b, angle, shift, signal), ...]
    >>> classes, pairs = twin_classes(state, mask, limit=5)   # the smaller of each pair

Neighbouring views of a continuous object look alike as well, so a threshold on likeness
(a correlation of the averages) also catches them, and refilling those split continuous
views.  The question asked here is whether two classes differ by more than their noise.
The pair's averages are aligned (rotation on a coarse grid, then finely with the shift), and
per resolution shell the Fourier ring correlation of their unfiltered averages is divided
by what two averages of one signal, each with its own noise, would reach: C_a·C_b, with
C = √(2·FRC_half / (1 + FRC_half)) an average's correlation with its noise-free signal
(Rosenthal & Henderson 2003) from its half-set FRC.  The ratio estimates the correlation
of the two signals; its mean over the shells both classes measure well (C_a·C_b ≥
MEASURED, weighted by ring size and (C_a·C_b)²) is near 1 for one object and falls for
two views, however alike, once the classes resolve where they differ.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from class2d.em import mstep
from class2d.em.mstep import shift_grids
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState, Statistics
from class2d.fourier import frc, pixel_radius, rotate_images, shift_images

logger = logging.getLogger(__name__)

#: rotation step of the first search (degrees), on the references' amplitude spectra
COARSE_STEP_DEG = 5.0
#: each class is compared closely with this many classes, those whose amplitude spectra
#: (which a shift leaves alone) match its own best at some rotation
PARTNERS = 3
#: rotation step of the close comparison around the first search's angle (degrees)
FINE_STEP_DEG = 1.0
#: shells where C_a·C_b reaches this are measured well enough to compare the signals
MEASURED = 0.5
#: a pair is compared only on at least this many well-measured shells
MIN_SHELLS = 3
#: mean signal correlation of a twin pair
TWIN_SIGNAL = 0.9


@dataclasses.dataclass(frozen=True)
class Twin:
    """Classes ``keep`` and ``drop`` (the one with fewer particles) show one object:
    ``drop``'s average turned by ``angle`` degrees (``fourier.rotate_images``) and then
    shifted by ``shift`` (x, y) px matches ``keep``'s; ``signal``: the mean correlation of
    their signals."""

    keep: int
    drop: int
    angle: float
    shift: tuple[float, float]
    signal: float


def _unit(images: np.ndarray) -> np.ndarray:
    """Images flattened, mean removed and scaled to unit norm: (n, d²)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def _rotated(image: np.ndarray, angles: np.ndarray, order: int) -> np.ndarray:
    return np.stack([rotate_images(image, a, order) for a in angles])


def _candidates(references: np.ndarray, live: np.ndarray) -> list[tuple[int, int, float]]:
    """(a, b, angle) of every pair of ``live`` classes where either is among the other's
    PARTNERS best matches: amplitude spectra up to a third of the Fourier radius (a shift
    does not change them), b's rotated by COARSE_STEP_DEG steps over half a turn (they are
    centrosymmetric: the angle found may be off by 180°)."""
    k_count, box, _ = references.shape
    angles = np.arange(0.0, 180.0, COARSE_STEP_DEG)
    amplitude = np.abs(np.fft.fftshift(np.fft.fft2(references), axes=(1, 2)))
    radius = pixel_radius(box)
    annulus = (radius >= 1) & (radius <= box / 3)
    plain = _unit(amplitude * annulus)
    turned = _unit(np.concatenate([_rotated(a, angles, 1) * annulus for a in amplitude]))
    score = (plain @ turned.T).reshape(k_count, k_count, angles.size)
    best = score.max(axis=2)
    best[~live] = best[:, ~live] = -np.inf
    np.fill_diagonal(best, -np.inf)
    top = np.argsort(-best, axis=1)[:, :PARTNERS]
    chosen = {(min(a, b), max(a, b)) for a in np.flatnonzero(live) for b in top[a]
              if np.isfinite(best[a, b])}
    return [(a, b, float(angles[score[a, b].argmax()])) for a, b in sorted(chosen)]


def _align(target: np.ndarray, image: np.ndarray, angle0: float) -> tuple[float, np.ndarray]:
    """(angle, shift (x, y) px) that best move ``image`` onto ``target``: rotations within
    a coarse step of ``angle0`` and of ``angle0`` + 180° by FINE_STEP_DEG, every circular
    shift, the peak refined to a sub-pixel by parabolas."""
    box = target.shape[-1]
    near = np.arange(-COARSE_STEP_DEG, COARSE_STEP_DEG + 1e-9, FINE_STEP_DEG)
    angles = np.concatenate([angle0 + near, angle0 + 180.0 + near])
    turned = _unit(_rotated(image, angles, 1)).reshape(-1, box, box)
    goal = np.fft.rfft2(_unit(target[None]).reshape(box, box))
    cc = np.fft.irfft2(goal[None] * np.conj(np.fft.rfft2(turned)), s=(box, box))
    r, y, x = np.unravel_index(np.argmax(cc), cc.shape)
    peak = cc[r]

    def refine(minus: float, centre: float, plus: float) -> float:
        curve = minus - 2 * centre + plus
        return 0.0 if curve >= 0 else 0.5 * (minus - plus) / curve

    dy = y + refine(peak[y - 1, x], peak[y, x], peak[(y + 1) % box, x])
    dx = x + refine(peak[y, x - 1], peak[y, x], peak[y, (x + 1) % box])
    wrap = lambda d: d - box if d > box / 2 else d      # noqa: E731 (circular shift)
    return float(angles[r]), np.array([wrap(dx), wrap(dy)])


def twin_pairs(state: ClassState, mask: np.ndarray) -> list[Twin]:
    """Every pair of classes (holding particles) that shows one object (see the module doc).

    mask: (d, d) the class mask, applied to the unfiltered averages before comparing them.
    """
    stats = state.stats
    live = stats.counts > 0
    pairs = _candidates(state.references, live)
    if not pairs:
        return []
    box, pad = state.box, state.pad
    halves = np.stack([mstep.unfiltered(stats.num[:, h], stats.den[:, h], state.sigma2, pad,
                                        box) for h in (0, 1)]) * mask
    full = mstep.unfiltered(stats.num.sum(axis=1), stats.den.sum(axis=1), state.sigma2, pad,
                            box) * mask
    half_frc = np.clip(frc(halves[0], halves[1]), 0.0, 1.0)
    reliable = np.sqrt(2 * half_frc / (1 + half_frc))          # C per class and shell
    ring = np.arange(reliable.shape[1], dtype=np.float64)      # ring size ∝ radius
    out = []
    for a, b, angle0 in pairs:
        keep, drop = (a, b) if stats.counts[a] >= stats.counts[b] else (b, a)
        if drop == a:               # the coarse angle turned b onto a: the inverse
            angle0 = -angle0
        angle, shift = _align(state.references[keep], state.references[drop], angle0)
        moved = shift_images(_rotated(full[drop], np.array([angle]), 3), shift[None])[0]
        both = reliable[a] * reliable[b]
        measured = both >= MEASURED
        measured[0] = False
        if measured.sum() < MIN_SHELLS:
            continue
        weight = ring * both ** 2 * measured
        signal = float((frc(full[keep], moved) / np.maximum(both, 1e-12) * weight).sum()
                       / weight.sum())
        if signal >= TWIN_SIGNAL:
            out.append(Twin(keep, drop, angle, (float(shift[0]), float(shift[1])), signal))
    return out


def merged(stats: Statistics, pairs: list[Twin], pad: int) -> tuple[Statistics, list[Twin]]:
    """Statistics with each pair's ``drop`` class moved into its ``keep`` class (its sums
    turned and shifted into ``keep``'s frame, cubic interpolation on the padded grid) and
    left empty (counts 0); pairs taken in order of agreement, skipping those that touch a
    class already dropped.  Returns the statistics and the pairs merged."""
    num, den, counts = stats.num.copy(), stats.den.copy(), stats.counts.copy()
    done: list[Twin] = []
    dropped: set[int] = set()
    for pair in sorted(pairs, key=lambda p: -p.signal):
        if pair.keep in dropped or pair.drop in dropped:
            continue
        turned = rotate_images(num[pair.drop], pair.angle, 3)
        num[pair.keep] += shift_grids(turned, np.tile(pair.shift, (2, 1)), pad)
        den[pair.keep] += np.maximum(rotate_images(den[pair.drop], pair.angle, 3), 0.0)
        counts[pair.keep] += counts[pair.drop]
        num[pair.drop], den[pair.drop], counts[pair.drop] = 0.0, 0.0, 0.0
        dropped.add(pair.drop)
        done.append(pair)
    return dataclasses.replace(stats, num=num, den=den, counts=counts), done


def twin_classes(state: ClassState, mask: np.ndarray, limit: int) -> tuple[np.ndarray, list[Twin]]:
    """The smaller class of each of the ``limit`` twin pairs whose signals agree best:
    (classes (n,) int64, those pairs)."""
    pairs = sorted(twin_pairs(state, mask), key=lambda pair: -pair.signal)[:limit]
    return np.unique(np.asarray([pair.drop for pair in pairs], np.int64)), pairs


def merge_twins(stats: Statistics, state: ClassState,
                params: ClassifyParams) -> tuple[Statistics, np.ndarray]:
    """At the end of online EM: every twin pair of ``state``'s classes merged in ``stats``
    (``merged``), the classes left empty returned (n,) int64.  An empty class is not scored
    again (``passes.score_rows``), so the full pass assigns its particles anew."""
    stats, done = merged(stats, twin_pairs(state, params.class_mask(state.box, state.apix)),
                         state.pad)
    if done:
        logger.info("merged %d class(es) into the class showing the same object: %s",
                    len(done), ", ".join(f"{p.drop + 1} into {p.keep + 1} (turned {p.angle:.0f}°,"
                                         f" signal correlation {p.signal:.2f})" for p in done))
    return stats, np.asarray([p.drop for p in done], np.int64)
