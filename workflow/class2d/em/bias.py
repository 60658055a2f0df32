"""Noise aligned into the class averages: what pure noise, searched as the particles are,
puts into each class (the reference bias a resolution estimate must not count as signal).

    >>> bias = alignment_bias(stack, state, params, backend)     # (K, S) power per shell
    >>> mstep.class_resolution(state, params, bias)              # Å, bias not counted

A particle's pose is the one whose view of the class best matches it, noise included, so
every particle adds a little of its noise in the reference's likeness, in both half sets
alike: the half-set difference does not see it, and on particles that barely constrain
their pose (a featureless blob at SNR 0.01, every rotation alike) it held the class's
spectral SNR above 1 two shells beyond the resolution of its FRC with the truth.  Here images
of pure noise (the noise model's σ² per shell, the CTFs of real particles) are scored over
the final pass's local search, inserted at their poses and averaged without the Wiener
filter: the power of that average less its own half-set noise is the part that does not
fall with the number of images — the bias.  Two ways, and the larger counts:

- alone: BIAS_IMAGES images against each class by itself, all of them inserted there (a
  particle held to its class by its signal, the pose chosen by its noise);
- together: IMAGES_PER_CLASS per class in use against all classes at once, as the final
  pass scores particles (class priors, pruning, force max or not), each inserted where it
  went: a particle among alike classes also takes the one its noise is most like.  Without
  it, 4 classes of one featureless blob with force max claimed 27.4–32.0 Å against 38.4 Å
  from the truth; alone reads less on distinct classes (the demo's: 8 of 48 a shell finer).

Pure noise is the worst case: a particle whose signal fixes its pose and class aligns less
of its noise.
"""

from __future__ import annotations

import numpy as np

from class2d.em import mstep
from class2d.em.estep import BatchData, score_batch, select_entries
from class2d.em.params import ClassifyParams
from class2d.em.passes import PassSums, accumulate, class_log_prior, make_context
from class2d.em.state import ClassState, Statistics
from class2d.fourier import shell_index
from class2d.prepare import PreparedStack
from class2d.timing import timer

#: noise images scored against each class alone …
BIAS_IMAGES = 200
#: … and per class in use (at most as many as the data has particles), scored against all
#: classes together (those out of reach pruned at low resolution, as the particles' are)
IMAGES_PER_CLASS = 50
#: … of which a class must take this many (posterior weight) for their average to count
MIN_TOGETHER = 20
#: the random stream of the noise images: numpy.random.default_rng([seed, BIAS_STREAM])
BIAS_STREAM = 104729


@timer("bias")
def alignment_bias(stack: PreparedStack, state: ClassState, params: ClassifyParams,
                   backend) -> np.ndarray:
    """(K, S) power per shell that noise aligned like the particles of the last full pass
    puts into each class average (0 for empty classes), in the units of ``state.tau2``."""
    rng = np.random.default_rng([params.seed, BIAS_STREAM])
    ctx = make_context(stack, params, params.align_res_A, full=True)
    pad = state.pad
    live = np.flatnonzero(state.stats.counts > 0)
    bias = np.zeros_like(state.tau2)
    if not live.size:
        return bias
    grids = mstep.reference_grids(state.references, pad)
    n_top = 1 if params.force_max else params.max_poses
    hard = params.hard_last_iteration

    # alone: every image scored against every class, and inserted into each at its poses
    # there, as if that class were the only one (one product for all classes)
    recon = _noise(stack, state, ctx, rng, BIAS_IMAGES)
    classes = grids[live]
    scores = score_batch(backend, recon.subset(ctx.align_index, ctx.align), classes,
                         ctx.local, np.zeros(live.size), 1.0, n_top, params.force_max)
    stats = accumulate(backend, recon, select_entries(scores, ctx.local, hard, every_class=True),
                       classes, pad, ctx.n_shells, np.arange(BIAS_IMAGES) % 2)
    bias[live] = _aligned_power(stats, np.arange(live.size), state, params, stack)

    log_prior = class_log_prior(state.stats.counts)
    sums = PassSums(backend, state.n_classes, grids.shape[-1], ctx.n_shells)
    # no more images than the data has particles: scoring them all against all classes then
    # costs at most one full pass (not K² as the classes grow past the particles' count)
    m = min(IMAGES_PER_CLASS * live.size, stack.n)
    for chunk in np.array_split(np.arange(m), -(-m // params.estep_batch(stack.box))):
        recon = _noise(stack, state, ctx, rng, chunk.size)
        scores = score_batch(backend, recon.subset(ctx.align_index, ctx.align), grids,
                             ctx.local, log_prior, 1.0, n_top, params.force_max, ctx.prepass,
                             params.class_prune_margin)
        sums.add(recon, select_entries(scores, ctx.local, hard), grids, pad, chunk % 2)
    together = sums.collect()
    # a class that took a few noise images (or a share of one) among all the others has
    # no measure of their average; noise is not drawn to it, and alone counts there
    measured = live[together.counts[live] >= MIN_TOGETHER]
    if measured.size:
        bias[measured] = np.maximum(bias[measured], _aligned_power(together, measured, state,
                                                                   params, stack))
    return bias


def _noise(stack: PreparedStack, state: ClassState, ctx, rng: np.random.Generator,
           m: int) -> BatchData:
    """``m`` images of noise of the noise model's power, with the CTFs of random particles."""
    box = stack.box
    rows = rng.choice(stack.n, m, replace=m > stack.n)
    spread = np.sqrt(state.sigma2[np.minimum(shell_index(box), state.sigma2.size - 1)] / 2.0)
    shape = (m, box, box // 2 + 1)
    spectra = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * spread
    return BatchData.build(spectra.astype(np.complex64), ctx.ctf_params.take(rows),
                           np.ones(m, np.float32), ctx.recon, state.sigma2, stack.apix)


def _aligned_power(stats: Statistics, classes: np.ndarray, state: ClassState,
                   params: ClassifyParams, stack: PreparedStack) -> np.ndarray:
    """(len(classes), S): power per shell of the masked, unfiltered averages of ``classes``
    less that of their half-set difference (≥ 0)."""
    box = stack.box
    halves = [mstep.unfiltered(stats.num[classes, h], stats.den[classes, h], state.sigma2,
                               state.pad, box) for h in (0, 1)]
    mask = params.class_mask(box, stack.apix)
    signal = mstep.shell_power((halves[0] + halves[1]) / 2 * mask)
    noise = mstep.shell_power((halves[0] - halves[1]) / 2 * mask)
    return np.maximum(signal - noise, 0.0)
