"""One pass of the E-step and its sufficient statistics over a set of particle rows.

    >>> ctx = make_context(stack, params, res_A=12.0)          # frequencies and pose grids
    >>> stats, out = score_rows(stack, state, params, backend, ctx, rows, 1.0, hard=False)
    >>> out["best_class"], out["psi"], out["tx"]              # (n,) each, sorted by row

Used by the online iterations and full passes (``online.py``) and by the class refill
(``refill.py``); the maths of scoring is in ``estep.py``, of the classes in ``mstep.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from class2d.em import mstep
from class2d.em.estep import BatchData, Entries, score_batch, select_entries
from class2d.em.grids import FrequencySet, PoseGrid
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState, Statistics
from class2d.fourier import centered_rfft2, circular_mask, shell_index
from class2d.prepare import PreparedStack
from class2d.progress import Progress
from class2d.timing import timer

logger = logging.getLogger(__name__)

#: online iterations insert coefficients up to this multiple of the alignment radius
INSERT_MARGIN = 1.5
#: particles are windowed when their power beyond a quarter of the Fourier radius falls by
#: more than this factor under the window (the box edge carries it; see particle_window) …
EDGE_POWER_RATIO = 2.0
#: … measured on this many particles
EDGE_SAMPLE = 200
#: the class-pruning prepass scores classes up to half the alignment radius …
PREPASS_FRACTION = 0.5
#: … when that is at least this many Fourier px (below, the full search is cheap anyway)
PREPASS_MIN_RADIUS = 6.0
#: particles not seen before are located at this fraction of the alignment radius (at least
#: PREPASS_MIN_RADIUS Fourier px) before their search at full resolution
LOCATE_FRACTION = 0.25


@dataclasses.dataclass
class PassContext:
    """What one pass needs besides the state: data, frequency sets, pose grids.

    poses: the global search (particles not seen before);
    local: shifts around each seen particle's last shift, all rotations
    align_index: positions of the alignment coefficients within the reconstruction set
    low: positions within the alignment set of the coefficients within LOCATE_FRACTION of
    its radius (at least PREPASS_MIN_RADIUS), on which particles not seen before are located
    (``locate``); None where the prepass radius is below PREPASS_MIN_RADIUS
    prepass: positions within the alignment set of the coefficients within PREPASS_FRACTION
    of its radius, when classes are pruned (class_prune_margin > 0) and that radius is at
    least PREPASS_MIN_RADIUS; else None
    window: (d, d) float32 real-space window every particle image is multiplied by before
    its Fourier transform (the class mask, soft edge included)
    """

    stack: PreparedStack
    align: FrequencySet
    recon: FrequencySet
    align_index: np.ndarray
    poses: PoseGrid
    local: PoseGrid
    n_shells: int
    low: np.ndarray | None
    prepass: np.ndarray | None
    window: np.ndarray

    @property
    def ctf_params(self):
        """The particles' CTF parameters (the prepared stack's, loaded once per stack)."""
        return self.stack.ctf_params


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
    low = prepass = None
    if r_pre >= max(PREPASS_MIN_RADIUS, r_min):
        low = np.flatnonzero(align.radius <= max(LOCATE_FRACTION * r_align, PREPASS_MIN_RADIUS))
        if params.class_prune_margin > 0:
            prepass = np.flatnonzero(align.radius <= r_pre)
    return PassContext(stack=stack, align=align, recon=recon, align_index=align_index,
                       poses=PoseGrid.make(psi_step, side, step),
                       local=PoseGrid.make(psi_step, local_side, step),
                       n_shells=box // 2 + 1, low=low, prepass=prepass,
                       window=particle_window(params, stack))


def particle_window(params: ClassifyParams, stack: PreparedStack) -> np.ndarray:
    """(d, d) float32 window every particle image is multiplied by before scoring,
    insertion and noise estimation: the class mask where the box edge carries the power
    (``edge_power_ratio`` above EDGE_POWER_RATIO), ones elsewhere (RELION masks particles
    at their diameter, CryoSPARC windows them).

    A box cut from a micrograph is not periodic: its edge is a discontinuity whose power
    falls only as f⁻³, concentrated on the Fourier axes, and neighbours and micrograph edges
    lie inside it.  Where the micrograph's own spectrum is steep (denoised, EMPIAR-10017:
    f⁻⁶ inside the particle) that leakage was 98 % of the power at 12 Å (σ² 129 against
    1.9 windowed, on the axes 10× the rest), which a per-shell noise model cannot describe:
    the online EM changed 41–79 % of its particles in each of its last 10 iterations and
    the full pass put 392 of 1,200 in one class, 2 classes empty and 5 under 4.  Windowed,
    its last 8 iterations change 0.5–2 %, the full pass 0.6 %, into 12 classes of 5–18 %.
    Particles in white noise (ratio 0.94 on test_config_keys' stack) are left as they are:
    there the window only perturbs (a 3-iteration run of 120 particles fell from ARI > 0.9
    to 0.67–0.86 with windows from 2 to 10 % of the radius).
    """
    radius, edge = params.mask_radius_px(stack.box, stack.apix)
    window = circular_mask(stack.box, radius, edge).astype(np.float32)
    if edge_power_ratio(stack, radius, edge) > EDGE_POWER_RATIO:
        return window
    return np.ones_like(window)


@functools.lru_cache(maxsize=8)
def _edge_power_ratio(meta: tuple, radius: float, edge: float) -> float:
    stack = PreparedStack(*meta)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(stack.n, min(stack.n, EDGE_SAMPLE), replace=False))
    images = stack.images(rows).astype(np.float32, copy=False)
    window = circular_mask(stack.box, radius, edge).astype(np.float32)
    high = shell_index(stack.box) >= stack.box // 4
    raw = (np.abs(centered_rfft2(images)) ** 2)[:, high].mean()
    windowed = (np.abs(centered_rfft2(images * window)) ** 2)[:, high].mean()
    return float(raw / max(windowed / np.mean(window ** 2), 1e-30))


def edge_power_ratio(stack: PreparedStack, radius: float, edge: float) -> float:
    """Mean power of the particles beyond a quarter of the box's Fourier radius, unwindowed
    over windowed (by ``circular_mask(box, radius, edge)``, its mean square divided out),
    on EDGE_SAMPLE particles drawn with seed 0 (so every job decides alike): 1 for
    stationary noise, 21 on the real EMPIAR-10017 particles, 13–18 on simulated coloured
    noise cut from a larger canvas."""
    return _edge_power_ratio(dataclasses.astuple(stack), float(radius), float(edge))


def load_spectra(stack: PreparedStack, rows: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Spectra (n, d, d//2+1) complex64 of prepared images multiplied by ``window`` (d, d)
    (``particle_window``); ``BatchData.shifted`` moves them (the window moves with them)."""
    spectra = centered_rfft2(stack.images(rows).astype(np.float32, copy=False) * window)
    return spectra.astype(np.complex64, copy=False)


def locate(backend, data: BatchData, grids: np.ndarray, poses: PoseGrid, low: np.ndarray,
           log_prior: np.ndarray, inv_temp: float, force_max: bool) -> tuple[np.ndarray, float]:
    """Shifts (n, 2) px of particles not seen before, and the FLOPs spent finding them: the
    best pose of the best class on the low-resolution coefficients (``low``, positions in
    ``data.freqs``; ``PassContext.low``) over the whole shift range of ``poses`` on its
    coarser grid, refined to a sub-step by parabolas.

    The search at full resolution then needs only the local shifts around these (RELION's
    adaptive oversampling: the coarse pass picks where the fine one looks).  At 6 Å in an
    86-px box a class has 23,409 global poses on 2,902 coefficients; located here on 3,321
    poses and 188 coefficients, then searched on 2,025 local poses, a particle not seen
    before costs 0.23 GFLOP against 0.59 located at half the radius (full pass of 1,000
    such particles into 50 classes; both agree on 97 % of the classes, and each agrees with
    a pass from their last online shifts on 76 %, with 13 % of shifts more than 2 px
    apart), and its pose matrices take 5 MB per class instead of 543 MB.
    """
    coarse = poses.coarser()
    scores = score_batch(backend, data.subset(low, data.freqs.subset(low)), grids, coarse,
                         log_prior, inv_temp, 1, force_max)
    n = np.arange(data.x.shape[0])
    best = scores.best_class
    _, tx, ty = coarse.pose(scores.top_i[n, best, 0], scores.refine[n, best])
    return np.stack([tx, ty], axis=1).astype(np.float32), scores.flops


class PassSums:
    """Sufficient statistics of a pass, batch by batch: insertion into the backend's
    ``InsertionSums`` (on the card with CUDA, zeroed there once and read back once), the
    per-class counts and per-shell noise sums on the host.

        >>> sums = PassSums(backend, k_count, grid, n_shells)
        >>> sums.add(data, entries, grids, pad, halves)          # once per batch
        >>> stats = sums.collect()                               # Statistics, once

    On the CPU a pass's statistics equal those of the per-chunk Statistics this replaced
    to float64 rounding: num and den within 1.1e-15 of their largest node, counts and noise
    bit for bit (measured: 150 and 300 rows of 32 px, 6 classes, in 4 and 7 chunks).
    """

    def __init__(self, backend, k_count: int, grid: int, n_shells: int):
        self.backend = backend
        self.insertion = backend.InsertionSums(2 * k_count, grid)
        self.counts = np.zeros(k_count)
        self.noise_sum = np.zeros(n_shells)
        self.noise_count = np.zeros(n_shells)

    def add(self, data: BatchData, entries: Entries, grids: np.ndarray, pad: int,
            halves: np.ndarray) -> None:
        """Insert a batch's entries into the half set of each particle (``halves``: (N,)
        0/1) and add the noise residuals of each particle's best entry."""
        k_count, n_shells = self.counts.size, self.noise_sum.size
        fr = data.freqs
        split = Entries.build(entries.rows, 2 * entries.classes + halves[entries.rows],
                              entries.psi, entries.tx, entries.ty, entries.weight, 2 * k_count)
        self.insertion.insert(split.offsets, split.rows, split.psi, split.tx, split.ty,
                              split.weight, data.x, data.ctf, data.alpha, data.inv_sigma2,
                              fr.fx, fr.fy, fr.wf, pad, fr.box)
        best = entries.best_per_row()
        ones = np.ones(best.size, np.float32)
        resid = self.backend.noise_residuals(
            grids, entries.classes[best], entries.rows[best], entries.psi[best],
            entries.tx[best], entries.ty[best], ones, data.x, data.ctf, data.alpha, fr.fx,
            fr.fy, fr.wf, fr.shell, pad, fr.box, n_shells)
        self.noise_sum += resid.sum(axis=0)
        self.noise_count += best.size * np.bincount(fr.shell, fr.wf.astype(np.float64),
                                                    n_shells)
        self.counts += np.bincount(entries.classes, entries.weight.astype(np.float64), k_count)

    def collect(self) -> Statistics:
        """The pass's Statistics (num, den (K, 2, G, G)); ends the accumulator."""
        num, den = self.insertion.collect()
        shape = (self.counts.size, 2) + num.shape[1:]
        return Statistics(num=num.reshape(shape), den=den.reshape(shape), counts=self.counts,
                          noise_sum=self.noise_sum, noise_count=self.noise_count)


def accumulate(backend, data: BatchData, entries: Entries, grids: np.ndarray, pad: int,
               n_shells: int, halves: np.ndarray) -> Statistics:
    """Sufficient statistics of one batch's entries (``PassSums`` of that batch alone)."""
    sums = PassSums(backend, grids.shape[0], grids.shape[-1], n_shells)
    sums.add(data, entries, grids, pad, halves)
    return sums.collect()


def class_log_prior(counts: np.ndarray) -> np.ndarray:
    """(K,) log prior of each class from its (blended) particle count, floored at 10⁻³/K;
    a class merged into its twin (count 0) gets −inf and is not scored (``score_batch``)."""
    with np.errstate(divide="ignore"):
        return np.where(counts > 0, np.log(np.maximum(counts / max(counts.sum(), 1e-12),
                                                      1e-3 / counts.size)), -np.inf)


RESULT_KEYS = ("rows", "best_class", "psi", "tx", "ty", "gamma", "ess", "pmax", "nsig",
               "loglik", "ratio")


@timer("E-step")
def score_rows(stack: PreparedStack, state: ClassState, params: ClassifyParams, backend,
               ctx: PassContext, rows: np.ndarray, inv_temp: float, hard: bool):
    """E-step and statistics over ``rows``: (stats, per-row results sorted by row).

    Besides the ``RESULT_KEYS`` arrays, the results hold ``flops`` (of the products done).
    Timed (``class2d.timing``) as part ``E-step`` and within it ``scoring`` (the products)
    and ``insertion`` (the class sums and noise residuals).

    Particles seen before search all rotations but only shifts near their last shift;
    the others search the whole shift range, at low resolution first where the alignment
    radius allows (``locate``), then like the seen ones around the shift found.  The class
    sums of every chunk go into one ``PassSums`` (with CUDA: on the card, zeroed once and
    read back once, where they fit), read when the call ends.
    """
    grids = mstep.reference_grids(state.references, state.pad)
    log_prior = class_log_prior(state.stats.counts)
    force_max = params.force_max
    n_top = 1 if force_max else params.max_poses
    sums = PassSums(backend, state.n_classes, grids.shape[-1], ctx.n_shells)
    results = {key: [] for key in RESULT_KEYS}
    flops = 0.0
    seen = state.classes[rows] >= 0
    with Progress("E-step", rows.size, logger) as progress:
        for group, poses in ((rows[seen], ctx.local), (rows[~seen], ctx.poses)):
            # chunks of equal size: a small last chunk would make small, slow products
            n_chunks = -(-group.size // params.estep_batch(stack.box))
            for chunk in np.array_split(group, n_chunks) if n_chunks else ():
                prev = state.shifts[chunk] if poses is ctx.local else None
                spectra = load_spectra(stack, chunk, ctx.window)
                ctf_chunk = ctx.ctf_params.take(chunk)
                alpha = state.alpha[chunk]
                recon = BatchData.build(spectra, ctf_chunk, alpha, ctx.recon, state.sigma2,
                                        stack.apix)
                if prev is not None:        # a search around 0 is one around the last shift
                    recon = recon.shifted(prev)
                data = recon.subset(ctx.align_index, ctx.align)
                search = poses
                with timer("scoring"):
                    if prev is None and ctx.low is not None:
                        prev, located_flops = locate(backend, data, grids, poses, ctx.low,
                                                     log_prior, inv_temp, force_max)
                        flops += located_flops
                        recon = recon.shifted(prev)
                        data = recon.subset(ctx.align_index, ctx.align)
                        search = ctx.local
                    scores = score_batch(backend, data, grids, search, log_prior, inv_temp,
                                         n_top, force_max, ctx.prepass,
                                         params.class_prune_margin)
                flops += scores.flops
                entries = select_entries(scores, search, hard=hard)
                with timer("insertion"):
                    sums.add(recon, entries, grids, state.pad, (chunk % 2).astype(np.int64))
                best = scores.best_class
                n = np.arange(chunk.size)
                psi, tx, ty = search.pose(scores.top_i[n, best, 0], scores.refine[n, best])
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
    with timer("insertion"):            # with CUDA, the sums come back from the card here
        return sums.collect(), out


