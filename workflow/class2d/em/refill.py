"""Refilling classes that emptied out or show another class's object, during online EM.

    >>> small = online_refills(stats, state, params, out)     # or the full pass's empty ones
    >>> stats, out, tau2 = refill_classes(stack, stats, out, state, params, ctx, backend, small,
    ...                                   rng)

A class to refill takes half of the currently largest class: that class's aligned
particles of the pass split in two along their first principal component (a class that
merged several views splits into them), each half inserted into one of the two classes,
then every particle aligned to both and moved to the better (``resorted``: at SNR 0.1 the
first split alone leaves two objects that shared a class mixed in both halves).
Online iterations refill from their batch, full passes from every particle (so that no
class is written empty while others hold hundreds, as CryoSPARC re-seeds its classes).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from class2d.em.estep import BatchData, Entries
from class2d.em.params import ClassifyParams
from class2d.em.passes import PassContext, PassSums, load_spectra, score_rows
from class2d.em.state import ClassState, Statistics
from class2d.em.twins import judged, one_object, twin_classes
from class2d.fourier import rotate_images
from class2d.prepare import PreparedStack
from class2d.timing import timer

logger = logging.getLogger(__name__)

#: a class holding less than this share of an even split is replaced (see refill_classes;
#: 0.25 left two classes of 38 and 41 particles, an aggregate and a mixed one, while two
#: objects shared a class of 235: bench/RESULTS.md, stop 30)
SPLIT_SHARE = 0.35
#: at most this share of the classes is refilled as twins in one iteration (the pairs
#: whose signals agree best first)
TWIN_SHARE = 0.1
#: a class is split only into groups of at least this many particles of the pass
MIN_SPLIT = 10
#: at most this many of the largest class's particles are split (the rest stay in it)
MAX_SPLIT = 2000
#: after the first split, the split particles are aligned anew to the two classes and each
#: goes to the better one, this many times (``resorted``)
SPLIT_ROUNDS = 2
#: a refilled class whose prior's power is below this share of its source's takes the
#: source's prior (see refill_classes)
FADED = 1e-3


def aligned_images(stack: PreparedStack, rows: np.ndarray, psi: np.ndarray, tx: np.ndarray,
                   ty: np.ndarray) -> np.ndarray:
    """Particles brought into their class's frame (undo shift t, then rotation ψ about the
    centre pixel, ``fourier.rotate_images``): (m, d, d)."""
    from scipy import ndimage

    images = stack.images(rows)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        moved = ndimage.shift(image, (-ty[i], -tx[i]), order=1, mode="constant")
        out[i] = rotate_images(moved, -np.degrees(psi[i]))
    return out


def split_groups(images: np.ndarray, blur_px: float) -> np.ndarray:
    """Two groups of aligned images by the sign of their first principal component: (m,) bool."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(images, (0, blur_px, blur_px)).reshape(len(images), -1)
    smooth = smooth - smooth.mean(axis=0)
    # the first principal component's scores are the top eigenvector of the (m, m) Gram
    # matrix (times its singular value): much cheaper than an SVD of the (m, d²) data
    _, vectors = np.linalg.eigh(smooth.astype(np.float64) @ smooth.T.astype(np.float64))
    score = vectors[:, -1]
    return score > np.median(score)


def insert_split(stack: PreparedStack, state: ClassState, ctx: PassContext, backend,
                 grids: np.ndarray, rows: np.ndarray, group: np.ndarray, poses: tuple,
                 batch: int) -> Statistics:
    """Statistics of two classes (0, 1) made by inserting ``rows`` (m,) hard at their poses
    (psi, tx, ty: (m,) each) into class ``group`` (m,) bool, ``batch`` particles at a time
    (``ClassifyParams.estep_batch``: the largest class of 10⁶ particles holds more than a
    job's memory), summed in one ``PassSums``: what one batch of them all would give, to
    float rounding."""
    psi, tx, ty = poses
    sums = PassSums(backend, grids.shape[0], grids.shape[-1], ctx.n_shells)
    for chunk in np.array_split(np.arange(rows.size), max(1, -(-rows.size // batch))):
        part = rows[chunk]
        data = BatchData.build(load_spectra(stack, part, ctx.window), ctx.ctf_params.take(part),
                               state.alpha[part], ctx.recon, state.sigma2, stack.apix)
        entries = Entries.build(np.arange(part.size), group[chunk].astype(np.int64), psi[chunk],
                                tx[chunk], ty[chunk], np.ones(part.size), 2)
        sums.add(data, entries, grids, state.pad, (part % 2).astype(np.int64))
    return sums.collect()


def splittable(out: dict, k_count: int) -> np.ndarray:
    """(K,) bool: the classes with particles enough in the pass ``out`` (its own assignment,
    ``best_class``) to be split in two groups of MIN_SPLIT."""
    return np.bincount(out["best_class"], minlength=k_count) >= 2 * MIN_SPLIT


def online_refills(stats: Statistics, state: ClassState, params: ClassifyParams,
                   out: dict, look_for_twins: bool = True) -> np.ndarray:
    """Classes an online iteration refills: those whose blended count fell below SPLIT_SHARE
    of an even share (the blended count, so that a class one batch leaves nearly empty is
    not refilled at once: refilled from the batch's counts, classes of simulated crowded
    particles kept emptying and refilling), those that drew less than SPLIT_SHARE of an
    even share of this pass ``out`` and of the pass before once annealing has ended
    (``faded``: while it runs, the hard counts of a pass say little), and with
    ``merge_twin_classes`` and ``look_for_twins`` the smaller class
    of (at most TWIN_SHARE of the classes') pairs that show one object (``em.twins``).

    Twins are refilled from the largest class even where its halves show one object (a new
    pair, merged at the end if it lasts): refilling only from classes whose halves differ
    raised the 16-object test's ARI on one seed of three (0.94, 0.96, 0.89 against 0.90,
    0.96, 0.89) but merged more of the projected-phantom demo's classes (39–47 of 50 left
    against 45–48, 13 of its 16 true views found on one seed against 15)."""
    counts = stats.counts
    small = np.flatnonzero(starved(counts))
    if params.temperature_at(state.iteration + 1) <= 1.0:
        small = np.union1d(small, faded(state, out))
    if params.merge_twin_classes and look_for_twins:
        twins, pairs = twin_classes(state, params.class_mask(state.box, state.apix),
                                    max(1, int(TWIN_SHARE * counts.size)))
        if pairs:
            logger.info("refilling %d class(es) showing another's object: %s", twins.size,
                        ", ".join(f"{p.drop + 1} ~ {p.keep + 1} ({p.signal:.2f})" for p in pairs))
        small = np.union1d(small, twins)
    return small


def faded(state: ClassState, out: dict) -> np.ndarray:
    """Classes that drew less than SPLIT_SHARE of an even share of the pass ``out`` and of
    the online iteration before it (``state.history``'s last row): a class losing its
    particles to others.  Its blended count falls by only the step size (0.17–0.2) an
    iteration late in a run, so on 3·10⁴ particles two classes of 0.9 % edge picks each
    were still above SPLIT_SHARE when the online iterations ended, while two objects shared
    a class (largest class 2× an object's share)."""
    last = state.history[-1] if state.history else {}
    if last.get("kind") != "online" or len(last.get("pass_sizes", ())) != state.n_classes:
        return np.zeros(0, np.int64)
    now = np.bincount(out["best_class"], minlength=state.n_classes)
    return np.flatnonzero(starved(now) & starved(np.asarray(last["pass_sizes"])))


def starved(counts: np.ndarray) -> np.ndarray:
    """(K,) bool: the classes whose count is below SPLIT_SHARE of an even share of
    ``counts`` (K,)."""
    return counts < SPLIT_SHARE * counts.sum() / counts.size


def resorted(stack: PreparedStack, state: ClassState, params: ClassifyParams, ctx: PassContext,
             backend, part: Statistics, rows: np.ndarray,
             tau2: np.ndarray) -> tuple[Statistics, np.ndarray, tuple, float]:
    """The two classes of a split (``part``: their statistics) sorted anew, SPLIT_ROUNDS
    times: ``rows`` aligned to both classes' references (Wiener-filtered with ``tau2``
    (2, S)) over every pose, each inserted hard at its best pose in the better class.
    Returns the statistics, (m,) bool: in the second class, the poses (psi, tx, ty) and the
    FLOPs of the products done.

    The first split, along the aligned images' first principal component, rarely parts two
    objects that share a class: at SNR 0.1 the noise of 200 images outweighs what tells
    them apart (a class of objects 13 and 4, 106 and 98 particles, split 38 + 64 against
    68 + 34).  Aligned to the two halves' averages, as an E-step would, each object's
    particles go to the half where they are more, and the halves draw apart."""
    flops = 0.0
    for _ in range(SPLIT_ROUNDS):
        part, out = score_rows(stack, judged(part, state, params, tau2), params, backend, ctx,
                               rows, 1.0, hard=True)
        flops += out["flops"]
    return part, out["best_class"] == 1, (out["psi"], out["tx"], out["ty"]), flops


@timer("refill")
def refill_classes(stack: PreparedStack, stats: Statistics, out: dict, state: ClassState,
                   params: ClassifyParams, ctx: PassContext, backend, small: np.ndarray,
                   rng: np.random.Generator,
                   distinct_only: bool = False) -> tuple[Statistics, dict, np.ndarray]:
    """Replace the classes ``small`` by halves of the largest class (by ``stats.counts``,
    updated as classes are replaced) of those with 2·MIN_SPLIT particles or more in this
    pass: its particles in this pass, split along the first
    principal component of their aligned images (a class that merged several views splits
    into them), then sorted between the two halves (``resorted``) where both keep
    MIN_SPLIT.

    At most MAX_SPLIT of those particles (and no more than ``memory_gb`` holds,
    ``ClassifyParams.split_sample``: their images are split together), drawn with ``rng``,
    are split (the rest stay);
    all of them are inserted anew, hard, at their best poses, and the two classes'
    statistics are replaced by theirs.  Returns the statistics and ``out`` with the moved
    particles' ``best_class`` set to their new class and the sorting's products added to
    its ``flops`` (so that an iteration's FLOPs count every product its E-step time does).

    With ``distinct_only`` a split is kept only where its halves do not show one object
    (``twins.one_object``): otherwise the largest class holds one object, and the classes
    left in ``small`` stay as they are (one emptied by a merge stays empty).

    Also returns the Wiener prior (K, S) the M-step is to use (``mstep.finish``):
    ``state.tau2``, but a refilled class whose own prior has faded (below FADED of the
    class it was split from) takes that class's.  A class of noise picks whose average
    faded to nothing (τ² 10⁻¹¹ after 16 iterations: each Wiener filter shrinks the power
    the next one takes as its prior) stayed blank when refilled, and the 135 particles of
    the object it was given were written out as a blank class.  Every refilled class
    taking the source's prior moved the 16-object ARI by −0.05 to +0.05 (mean +0.001) and
    spread the continuous views' classes (29.7° → 39.2°, 26.1° → 30.6°).
    """
    tau2 = state.tau2.copy()
    if small.size == 0:
        return stats, out, tau2
    num, den, counts = stats.num.copy(), stats.den.copy(), stats.counts.copy()
    best = out["best_class"].copy()
    poses_out = {key: out[key].copy() for key in ("psi", "tx", "ty")}
    # the two classes of a split, as classes 0 (j) and 1 (k) of their own statistics: a
    # split then costs what its particles do, not the K classes' grids (at 200 classes,
    # 37 refills took 55 s of a 61 s iteration when each summed into all of them)
    grids = np.zeros((2, num.shape[-1], num.shape[-1]), np.complex64)
    blur = max(1.0, 0.25 * ctx.align.box / max(float(ctx.align.shell.max()), 1.0))
    done, flops = 0, 0.0
    # the pass's own assignment (not one updated by an earlier split in this call), as
    # before this function reported moves: the simulated mixture of test_classify_quality
    # fell from ARI 0.94 to 0.88 with the updated one
    enough = np.flatnonzero(splittable(out, counts.size))
    most = params.split_sample(stack.box)
    for i, k in enumerate(small):
        # the largest class with particles enough in this pass (a twin may have lost its
        # particles to the other and still hold a large blended count)
        if enough.size == 0:
            logger.info("no class holds %d particles of this pass: class(es) %s not refilled",
                        2 * MIN_SPLIT, ", ".join(str(c + 1) for c in small[i:]))
            break
        j = int(enough[np.argmax(counts[enough])])
        sel = np.flatnonzero(out["best_class"] == j)
        sample = np.sort(rng.choice(sel.size, min(sel.size, MAX_SPLIT, most), replace=False))
        rows, psi, tx, ty = (out[key][sel] for key in ("rows", "psi", "tx", "ty"))
        group = np.zeros(sel.size, bool)
        group[sample] = split_groups(aligned_images(stack, rows[sample], psi[sample],
                                                    tx[sample], ty[sample]), blur)
        if min(group.sum(), sample.size - group.sum()) < MIN_SPLIT:
            continue
        part = insert_split(stack, state, ctx, backend, grids, rows, group, (psi, tx, ty),
                            params.estep_batch(stack.box))
        # sorted anew where both classes keep MIN_SPLIT (a class of one object tends to
        # go whole to one half: its first split stays)
        sorted_part, sorted_group, poses, spent = resorted(stack, state, params, ctx, backend,
                                                           part, rows, tau2[[j, j]])
        flops += spent
        if min(sorted_group.sum(), (~sorted_group).sum()) >= MIN_SPLIT:
            part, group, (psi, tx, ty) = sorted_part, sorted_group, poses
        if distinct_only and one_object(part, state, params, state.tau2[[j, j]]):
            logger.info("the largest class (%d) shows one object: class(es) %s not refilled",
                        j + 1, ", ".join(str(c + 1) for c in small[i:]))
            break
        for c, own in ((j, 0), (k, 1)):
            num[c], den[c], counts[c] = part.num[own], part.den[own], part.counts[own]
        if tau2[k].sum() < FADED * tau2[j].sum():
            tau2[k] = tau2[j]
        best[sel] = np.where(group, k, j)
        for key, value in (("psi", psi), ("tx", tx), ("ty", ty)):
            poses_out[key][sel] = value
        done += 1
    if done:
        logger.info("split the largest class to refill %d emptied class(es)", done)
    return (dataclasses.replace(stats, num=num, den=den, counts=counts),
            {**out, **poses_out, "best_class": best, "flops": out["flops"] + flops}, tau2)
