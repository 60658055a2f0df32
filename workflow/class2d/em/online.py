"""Online EM as CryoSPARC runs it: initial classes, mini-batch iterations, sharded full passes.

    >>> state = init_classes(stack, params, backend)                     # iteration 0
    >>> state = online_iteration(stack, state, params, backend)          # 1 … n
    >>> part = full_pass_shard(stack, state, params, backend, shard=0)   # one per shard
    >>> state, assignments = gather_full_pass(state, [part], params)

Every random choice is drawn from ``numpy.random.default_rng([seed, iteration])`` so a
resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Iterable, Mapping

import numpy as np

from class2d.em import mstep
from class2d.em.estep import BatchData, Entries, score_batch, select_entries
from class2d.em.grids import FrequencySet, PoseGrid
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState, Statistics
from class2d.fourier import centered_rfft2, frc_resolution, rfft_frequencies
from class2d.prepare import PreparedStack
from class2d.progress import Progress

logger = logging.getLogger(__name__)

#: online iterations insert coefficients up to this multiple of the alignment radius
INSERT_MARGIN = 1.5
#: a class holding less than this share of an even split is replaced (see _split_largest)
SPLIT_SHARE = 0.25
#: two class averages this alike (up to rotation) are one view: the smaller class is refilled
DUPLICATE_CORRELATION = 0.92
#: a class is split only into groups of at least this many batch particles
MIN_SPLIT = 10
#: the class-pruning prepass scores classes up to half the alignment radius …
PREPASS_FRACTION = 0.5
#: … when that is at least this many Fourier px (below, the full search is cheap anyway)
PREPASS_MIN_RADIUS = 6.0


@dataclasses.dataclass
class PassContext:
    """What one pass needs besides the state: data, frequency sets, pose grids.

    poses: the global search (particles not seen before);
    local: shifts around each seen particle's last shift, all rotations
    align_index: positions of the alignment coefficients within the reconstruction set
    prepass: positions within the alignment set of the class-pruning prepass's
    coefficients, or None for no prepass
    """

    stack: PreparedStack
    align: FrequencySet
    recon: FrequencySet
    align_index: np.ndarray
    poses: PoseGrid
    local: PoseGrid
    n_shells: int
    prepass: np.ndarray | None

    @functools.cached_property
    def ctf_params(self):
        """The particles' CTF parameters, read from the STAR file when a pass first needs them."""
        return self.stack.table().ctf_params()


def make_context(stack: PreparedStack, params: ClassifyParams, res_A: float,
                 full: bool = False) -> PassContext:
    """Frequencies and poses at alignment resolution ``res_A``.  Online iterations insert
    only up to INSERT_MARGIN × the alignment radius (the classes sharpen as the resolution
    rises, as CryoSPARC's do); full passes insert up to the maximum resolution."""
    box, apix = stack.box, stack.apix
    r_recon = min(box / 2, box * apix / params.max_res_A)
    r_align = min(r_recon, box * apix / res_A)
    if not full:
        r_recon = min(r_recon, INSERT_MARGIN * r_align)
    r_min = box * apix / params.min_align_res_A if params.min_align_res_A else 1.0
    side, step = params.shift_grid(res_A, box, apix)
    psi_step = params.psi_step(res_A, box, apix)
    local_side = min(side, 2 * params.local_shift_steps + 1)
    recon = FrequencySet.within(box, r_recon, 1.0)
    align_index = np.flatnonzero((recon.radius >= r_min) & (recon.radius <= r_align))
    align = recon.subset(align_index)
    r_pre = PREPASS_FRACTION * r_align
    prepass = None
    if params.class_prune_margin > 0 and r_pre >= max(PREPASS_MIN_RADIUS, r_min):
        prepass = np.flatnonzero(align.radius <= r_pre)
    return PassContext(stack=stack, align=align, recon=recon, align_index=align_index,
                       poses=PoseGrid.make(psi_step, side, step),
                       local=PoseGrid.make(psi_step, local_side, step),
                       n_shells=box // 2 + 1, prepass=prepass)


def load_spectra(stack: PreparedStack, rows: np.ndarray,
                 shifts: np.ndarray | None = None) -> np.ndarray:
    """Spectra (n, d, d//2+1) complex64 of prepared images, moved back by ``shifts`` (n, 2)
    px first when given (so that a search around 0 is a search around those shifts)."""
    spectra = centered_rfft2(stack.images(rows).astype(np.float32, copy=False))
    if shifts is not None:
        fy, fx = rfft_frequencies(stack.box)
        ex = np.exp(2j * np.pi * fx * shifts[:, :1]).astype(np.complex64)      # (n, d//2+1)
        ey = np.exp(2j * np.pi * fy[:, 0] * shifts[:, 1:]).astype(np.complex64)  # (n, d)
        spectra = spectra * ey[:, :, None] * ex[:, None, :]
    return spectra.astype(np.complex64, copy=False)


def accumulate(backend, data: BatchData, entries: Entries, grids: np.ndarray, pad: int,
               n_shells: int, halves: np.ndarray) -> Statistics:
    """Sufficient statistics of a batch's entries: insertion into the half set of each
    particle (``halves``: (N,) 0/1), noise residuals of each particle's best entry."""
    k_count = grids.shape[0]
    stats = Statistics.zeros(k_count, grids.shape[-1], n_shells)
    fr = data.freqs
    split = Entries.build(entries.rows, 2 * entries.classes + halves[entries.rows], entries.psi,
                          entries.tx, entries.ty, entries.weight, 2 * k_count)
    size = grids.shape[-1]
    backend.backproject(stats.num.reshape(2 * k_count, size, size),
                        stats.den.reshape(2 * k_count, size, size), split.offsets, split.rows,
                        split.psi, split.tx, split.ty, split.weight, data.x, data.ctf,
                        data.alpha, data.inv_sigma2, fr.fx, fr.fy, fr.wf, pad, fr.box)
    best = entries.best_per_row()
    ones = np.ones(best.size, np.float32)
    resid = backend.noise_residuals(grids, entries.classes[best], entries.rows[best],
                                    entries.psi[best], entries.tx[best], entries.ty[best], ones,
                                    data.x, data.ctf, data.alpha, fr.fx, fr.fy, fr.wf, fr.shell,
                                    pad, fr.box, n_shells)
    stats.noise_sum = resid.sum(axis=0)
    stats.noise_count = best.size * np.bincount(fr.shell, fr.wf.astype(np.float64), n_shells)
    stats.counts = np.bincount(entries.classes, entries.weight.astype(np.float64), k_count)
    return stats


def initial_sigma2(stack: PreparedStack, rng: np.random.Generator, n_shells: int) -> np.ndarray:
    """Noise power per shell, first guess: the particles' own mean power per shell."""
    rows = np.sort(rng.choice(stack.n, min(stack.n, 500), replace=False))
    spectra = load_spectra(stack, rows)
    freqs = FrequencySet.within(stack.box, stack.box / 2, 0.0)
    power = np.abs(freqs.take(spectra)) ** 2
    sums = np.bincount(freqs.shell, power.sum(axis=0), n_shells)
    counts = np.bincount(freqs.shell, minlength=n_shells) * rows.size
    return np.maximum(sums / np.maximum(counts, 1), 1e-12)


def _finish_mstep(stats: Statistics, tau2: np.ndarray, sigma2_prev: np.ndarray,
                  params: ClassifyParams, box: int, apix: float, pad: int,
                  recenter: bool) -> tuple[np.ndarray, Statistics, np.ndarray, np.ndarray]:
    """Classes, noise and signal models from statistics: (refs, stats, sigma2, tau2)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma2 = np.where(stats.noise_count > 0, stats.noise_sum / stats.noise_count, sigma2_prev)
    if params.white_noise:
        sigma2 = np.full_like(sigma2, np.average(sigma2[1:], weights=stats.noise_count[1:] + 1e-12))
    sigma2[0] = sigma2[1]
    refs = mstep.reconstruct(stats.num.sum(axis=1), stats.den.sum(axis=1), tau2, pad, box,
                             params.tau2_fudge)
    radius, edge = params.mask_radius_px(box, apix)
    refs, shifts = mstep.postprocess(refs, mask_radius=radius, mask_edge=edge,
                                     recenter=recenter and params.recenter,
                                     recenter_threshold=params.recenter_threshold,
                                     clamp_solvent=params.clamp_solvent,
                                     non_negative=params.non_negative)
    if np.any(shifts):
        num = np.stack([mstep.shift_grids(stats.num[:, h], shifts, pad) for h in (0, 1)], axis=1)
        stats = dataclasses.replace(stats, num=num)
    refs[stats.counts <= 0] = 0.0
    tau2 = np.maximum(mstep.shell_power(refs), 1e-12)
    # shells that no particle has reached yet get a weak prior (SNR 1 per coefficient), so
    # that the first data inserted there are not smothered by an empty class's zero power
    reached = mstep.shell_mean(stats.den.sum(axis=1), pad, tau2.shape[1]) > 0
    tau2 = np.where(reached, tau2, sigma2[None, :])
    return refs, stats, sigma2, tau2


def class_resolution(state: ClassState, params: ClassifyParams) -> np.ndarray:
    """(K,) Å: where each class's spectral SNR, τ²·⟨Σ w·α²·CTF²/σ²⟩ per shell, first
    falls below 1 (RELION's rlnEstimatedResolution of a class).

    Not the FRC of half-set averages: both halves are aligned to the same reference, so
    their noise correlates and the FRC stays high up to Nyquist (on the demo data 5 of 20
    classes claimed 6 Å, Nyquist, against 17–27 Å from their FRC with the true projection;
    this estimate gives 19–24 Å)."""
    n_shells = state.tau2.shape[1]
    weight = mstep.shell_mean(state.stats.den.sum(axis=1), state.pad, n_shells)
    ssnr = params.tau2_fudge * state.tau2 * weight
    return np.array([frc_resolution(curve, state.box, state.apix, threshold=1.0)
                     for curve in ssnr])


def init_classes(stack: PreparedStack, params: ClassifyParams, backend) -> ClassState:
    """Iteration 0: each class the average of a random subset at random rotations."""
    rng = np.random.default_rng([params.seed, 0])
    ctx = make_context(stack, params, params.first_res_A)
    k_count, pad, box = params.n_classes, params.zeropad, stack.box
    per_class = max(3, min(stack.n // k_count, 20))
    rows = rng.choice(stack.n, size=per_class * k_count, replace=per_class * k_count > stack.n)
    sigma2 = initial_sigma2(stack, rng, ctx.n_shells)
    alpha = np.ones(stack.n, np.float32)
    unique_rows, local = np.unique(rows, return_inverse=True)
    data = BatchData.build(load_spectra(stack, unique_rows), ctx.ctf_params.take(unique_rows),
                           alpha[unique_rows], ctx.recon, sigma2, stack.apix)
    classes = np.repeat(np.arange(k_count), per_class)
    zeros = np.zeros(rows.size)
    entries = Entries.build(local, classes, rng.uniform(0, 2 * np.pi, rows.size), zeros, zeros,
                            np.ones(rows.size), k_count)
    empty_grids = np.zeros((k_count, pad * box, pad * box), np.complex64)
    stats = accumulate(backend, data, entries, empty_grids, pad, ctx.n_shells,
                       (unique_rows % 2).astype(np.int64))
    refs, stats, _, tau2 = _finish_mstep(stats, np.tile(sigma2, (k_count, 1)), sigma2, params,
                                         box, stack.apix, pad, recenter=False)
    return ClassState(iteration=0, references=refs, stats=stats, sigma2=sigma2, tau2=tau2,
                      alpha=alpha, classes=np.full(stack.n, -1, np.int32),
                      shifts=np.zeros((stack.n, 2), np.float32), apix=stack.apix, pad=pad,
                      history=[])


RESULT_KEYS = ("rows", "best_class", "psi", "tx", "ty", "gamma", "ess", "pmax", "nsig",
               "loglik", "ratio")


def score_rows(stack: PreparedStack, state: ClassState, params: ClassifyParams, backend,
               ctx: PassContext, rows: np.ndarray, inv_temp: float, hard: bool):
    """E-step and statistics over ``rows``: (stats, per-row results sorted by row).

    Particles seen before search all rotations but only shifts near their last shift;
    the others search the whole shift range.
    """
    grids = mstep.reference_grids(state.references, state.pad)
    log_prior = np.log(np.maximum(state.stats.counts / max(state.stats.counts.sum(), 1e-12),
                                  1e-3 / state.n_classes))
    force_max = params.use_force_max
    n_top = 1 if force_max else params.max_poses
    total = Statistics.zeros(state.n_classes, grids.shape[-1], ctx.n_shells)
    results = {key: [] for key in RESULT_KEYS}
    flops = e_seconds = 0.0
    seen = state.classes[rows] >= 0
    progress = Progress("E-step", rows.size, logger)
    for group, poses in ((rows[seen], ctx.local), (rows[~seen], ctx.poses)):
        # chunks of equal size: a small last chunk would make small, slow products
        n_chunks = -(-group.size // params.estep_batch(stack.box))
        for chunk in np.array_split(group, n_chunks) if n_chunks else ():
            prev = state.shifts[chunk] if poses is ctx.local else None
            spectra = load_spectra(stack, chunk, prev)
            ctf_chunk = ctx.ctf_params.take(chunk)
            alpha = state.alpha[chunk]
            recon = BatchData.build(spectra, ctf_chunk, alpha, ctx.recon, state.sigma2,
                                    stack.apix)
            data = recon.subset(ctx.align_index, ctx.align)
            tic = time.perf_counter()
            scores = score_batch(backend, data, grids, poses, log_prior, inv_temp, n_top,
                                 force_max, ctx.prepass, params.class_prune_margin)
            e_seconds += time.perf_counter() - tic
            flops += scores.flops
            entries = select_entries(scores, poses, hard=hard)
            total = total + accumulate(backend, recon, entries, grids, state.pad, ctx.n_shells,
                                       (chunk % 2).astype(np.int64))
            best = scores.best_class
            n = np.arange(chunk.size)
            psi, tx, ty = poses.pose(scores.top_i[n, best, 0], scores.refine[n, best])
            if prev is not None:
                tx, ty = tx + prev[:, 0], ty + prev[:, 1]
            pose_p = np.exp(scores.top_s[n, best, 0] - scores.lse[n, best])
            for key, value in zip(RESULT_KEYS, (
                    chunk, best, psi, tx, ty, scores.gamma[n, best],
                    1.0 / (scores.gamma ** 2).sum(axis=1), scores.gamma[n, best] * pose_p,
                    scores.nsig[n, best], scores.loglik, scores.ratio[n, best])):
                results[key].append(value)
            progress.advance(chunk.size)
    out = {key: np.concatenate(value) for key, value in results.items()}
    order = np.argsort(out["rows"], kind="stable")
    out = {key: value[order] for key, value in out.items()}
    out["flops"] = flops
    out["estep_seconds"] = e_seconds
    return total, out


def aligned_images(stack: PreparedStack, rows: np.ndarray, psi: np.ndarray, tx: np.ndarray,
                   ty: np.ndarray) -> np.ndarray:
    """Particles brought into their class's frame (undo shift t, then rotation ψ): (m, d, d)."""
    from scipy import ndimage

    images = stack.images(rows)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        moved = ndimage.shift(image, (-ty[i], -tx[i]), order=1, mode="constant")
        out[i] = ndimage.rotate(moved, np.degrees(psi[i]), reshape=False, order=1, mode="constant")
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


def duplicate_classes(references: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Classes whose average is the same view as a larger class's, up to an in-plane
    rotation (normalised correlation ≥ DUPLICATE_CORRELATION): the smaller of each pair."""
    from scipy import ndimage

    k_count, box, _ = references.shape
    angles = np.arange(0.0, 360.0, 5.0)

    def unit(images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1) - images.reshape(len(images), -1).mean(1)[:, None]
        return flat / np.maximum(np.linalg.norm(flat, axis=1), 1e-12)[:, None]

    plain = unit(references)
    turned = unit(np.stack([ndimage.rotate(ref, a, reshape=False, order=1)
                            for ref in references for a in angles]))
    best = (plain @ turned.T).reshape(k_count, k_count, angles.size).max(axis=2)
    best = np.maximum(best, best.T)
    np.fill_diagonal(best, 0.0)
    out = set()
    for a, b in zip(*np.nonzero(np.triu(best >= DUPLICATE_CORRELATION))):
        if counts[a] > 0 and counts[b] > 0:
            out.add(int(a if counts[a] < counts[b] else b))
    return np.array(sorted(out), np.int64)


def _split_largest(stack: PreparedStack, stats: Statistics, out: dict, state: ClassState,
                   ctx: PassContext, params: ClassifyParams, backend) -> Statistics:
    """Replace classes that emptied out, or that repeat a larger class's view, by halves of
    the largest class, split along the first principal component of its aligned particles
    in this batch (a class that merged several views splits into them)."""
    k_count = stats.counts.size
    even = stats.counts.sum() / k_count
    small = np.flatnonzero(stats.counts < SPLIT_SHARE * even)
    if params.refill_duplicate_views:
        small = np.union1d(small, duplicate_classes(state.references, stats.counts))
    if small.size == 0:
        return stats
    num, den, counts = stats.num.copy(), stats.den.copy(), stats.counts.copy()
    grids = np.zeros((k_count, num.shape[-1], num.shape[-1]), np.complex64)
    blur = max(1.0, 0.25 * ctx.align.box / max(float(ctx.align.shell.max()), 1.0))
    done = 0
    for k in small:
        j = int(np.argmax(counts))
        sel = np.flatnonzero(out["best_class"] == j)
        if sel.size < 2 * MIN_SPLIT:
            break
        rows, psi, tx, ty = (out[key][sel] for key in ("rows", "psi", "tx", "ty"))
        group = split_groups(aligned_images(stack, rows, psi, tx, ty), blur)
        if min(group.sum(), (~group).sum()) < MIN_SPLIT:
            continue
        data = BatchData.build(load_spectra(stack, rows), ctx.ctf_params.take(rows),
                               state.alpha[rows], ctx.recon, state.sigma2, stack.apix)
        entries = Entries.build(np.arange(rows.size), np.where(group, k, j), psi, tx, ty,
                                np.ones(rows.size), k_count)
        part = accumulate(backend, data, entries, grids, state.pad, ctx.n_shells,
                          (rows % 2).astype(np.int64))
        for c in (j, k):
            num[c], den[c], counts[c] = part.num[c], part.den[c], part.counts[c]
        done += 1
    if done:
        logger.info("split the largest class to refill %d emptied class(es)", done)
    return dataclasses.replace(stats, num=num, den=den, counts=counts)


def _updated(state: ClassState, out: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-particle class and shift memory after a pass; the share of changed classes."""
    rows = out["rows"]
    classes, shifts = state.classes.copy(), state.shifts.copy()
    changed = float(np.mean(classes[rows] != out["best_class"]))
    classes[rows] = out["best_class"]
    shifts[rows] = np.stack([out["tx"], out["ty"]], axis=1)
    return classes, shifts, changed


def online_iteration(stack: PreparedStack, state: ClassState, params: ClassifyParams,
                     backend) -> ClassState:
    """One online-EM iteration on a random mini-batch; returns the next state."""
    n = state.iteration + 1
    rng = np.random.default_rng([params.seed, n])
    size = min(stack.n, params.batch_per_class * params.n_classes)
    rows = np.sort(rng.choice(stack.n, size=size, replace=False))
    res = params.resolution_at(n)
    ctx = make_context(stack, params, res)
    tic = time.perf_counter()
    batch, out = score_rows(stack, state, params, backend, ctx, rows,
                            1.0 / params.temperature_at(n), hard=False)
    stats = state.stats.blend(batch, params.step_size_at(n))
    if n < params.online_iterations:
        stats = _split_largest(stack, stats, out, state, ctx, params, backend)
    refs, stats, sigma2, tau2 = _finish_mstep(stats, state.tau2, state.sigma2, params,
                                              stack.box, stack.apix, state.pad, recenter=True)
    alpha = state.alpha.copy()
    if params.per_particle_scale and n > 1:
        alpha[rows] = np.clip(out["ratio"], 0.2, 5.0)
    classes, shifts, changed = _updated(state, out)
    row = _history_row(n, "online", res, ctx, out, stats, changed, time.perf_counter() - tic)
    logger.info("iteration %(iteration)d: res %(res_A).1f Å, %(poses)d poses, logL %(loglik).4g, "
                "changed %(changed).3f, %(gflops).1f GFLOP in %(seconds).1f s", row)
    return ClassState(iteration=n, references=refs, stats=stats, sigma2=sigma2, tau2=tau2,
                      alpha=alpha, classes=classes, shifts=shifts, apix=state.apix,
                      pad=state.pad, history=state.history + [row])


def _history_row(n, kind, res, ctx, out, stats, changed, seconds) -> dict:
    return {"iteration": n, "kind": kind, "res_A": float(res), "poses": int(ctx.poses.size),
            "local_poses": int(ctx.local.size), "frequencies": int(ctx.align.size),
            "particles": int(out["best_class"].size),
            "loglik": float(np.mean(out["loglik"])), "changed": changed,
            "class_sizes": [round(float(c), 2) for c in stats.counts],
            "gflops": out["flops"] / 1e9, "estep_seconds": round(float(out["estep_seconds"]), 3),
            "seconds": round(seconds, 3)}


def full_pass_shard(stack: PreparedStack, state: ClassState, params: ClassifyParams, backend,
                    shard: int, last: bool) -> dict:
    """E-step over every particle of one shard: statistics and per-particle results."""
    a, b = stack.shard_rows[shard]
    ctx = make_context(stack, params, params.align_res_A, full=True)
    tic = time.perf_counter()
    stats, out = score_rows(stack, state, params, backend, ctx, np.arange(a, b), 1.0,
                            hard=last and params.hard_last_iteration)
    out.update(stats.to_file())
    out["seconds"] = time.perf_counter() - tic
    return out


def gather_full_pass(stack: PreparedStack, state: ClassState, parts: Iterable[Mapping],
                     params: ClassifyParams) -> tuple[ClassState, dict]:
    """Sum the shards' statistics into the next state; concatenate per-particle results.

    parts: each shard's results, read once in order (an iterator that loads one shard file
    at a time holds one shard's statistics, not all of them)."""
    stats = None
    columns: dict[str, list] = {key: [] for key in RESULT_KEYS}
    totals = {"flops": 0.0, "estep_seconds": 0.0, "seconds": 0.0}
    for part in parts:
        shard = Statistics.from_file(part)
        stats = shard if stats is None else stats + shard
        for key in RESULT_KEYS:
            columns[key].append(np.asarray(part[key]))
        for key in totals:
            totals[key] += float(part[key])
    out = {key: np.concatenate(value) for key, value in columns.items()}
    out["flops"], out["estep_seconds"] = totals["flops"], totals["estep_seconds"]
    refs, stats, sigma2, tau2 = _finish_mstep(stats, state.tau2, state.sigma2, params,
                                              stack.box, stack.apix, state.pad, recenter=False)
    n = state.iteration + 1
    classes, shifts, changed = _updated(state, out)
    ctx = make_context(stack, params, params.align_res_A, full=True)
    row = _history_row(n, "full", params.align_res_A, ctx, out, stats, changed,
                       totals["seconds"])
    logger.info("full pass %(iteration)d: logL %(loglik).4g, changed %(changed).3f, "
                "%(gflops).1f GFLOP in %(seconds).1f s", row)
    new = ClassState(iteration=n, references=refs, stats=stats, sigma2=sigma2, tau2=tau2,
                     alpha=state.alpha, classes=classes, shifts=shifts, apix=state.apix,
                     pad=state.pad, history=state.history + [row])
    return new, out
