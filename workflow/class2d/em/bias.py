"""Noise aligned into the class averages: what pure noise, searched as the particles are,
puts into each class (the reference bias a resolution estimate must not count as signal).

    >>> bias = alignment_bias(stack, state, params, backend)     # (K, S) power per shell
    >>> mstep.class_resolution(state, params, bias)              # Å, bias not counted

A particle's pose is the one whose view of the class best matches it, noise included, so
every particle adds a little of its noise in the reference's likeness, in both half sets
alike: the half-set difference does not see it, and on particles that barely constrain
their pose (a featureless blob at SNR 0.01, every rotation alike) it held the class's
spectral SNR above 1 two shells beyond the resolution of its FRC with the truth.  Here
BIAS_IMAGES images of pure noise (the noise model's σ² per shell, the CTFs of real
particles) are scored against each class over the final pass's local search, inserted at
their poses, and averaged without the Wiener filter: the power of that average less its own
half-set noise is the part that does not fall with the number of images — the bias.  Pure
noise is the worst case: a particle whose signal fixes its pose aligns less of its noise.
"""

from __future__ import annotations

import numpy as np

from class2d.em import mstep
from class2d.em.estep import BatchData, score_batch, select_entries
from class2d.em.params import ClassifyParams
from class2d.em.passes import accumulate, make_context
from class2d.em.state import ClassState
from class2d.fourier import shell_index
from class2d.prepare import PreparedStack

#: noise images scored against every class
BIAS_IMAGES = 200
#: the random stream of the noise images: numpy.random.default_rng([seed, BIAS_STREAM])
BIAS_STREAM = 104729


def alignment_bias(stack: PreparedStack, state: ClassState, params: ClassifyParams,
                   backend) -> np.ndarray:
    """(K, S) power per shell that noise aligned like the particles of the last full pass
    puts into each class average (0 for empty classes), in the units of ``state.tau2``."""
    rng = np.random.default_rng([params.seed, BIAS_STREAM])
    ctx = make_context(stack, params, params.align_res_A, full=True)
    box, pad = stack.box, state.pad
    m = min(BIAS_IMAGES, stack.n)
    rows = np.sort(rng.choice(stack.n, m, replace=False))
    shape = (m, box, box // 2 + 1)
    spread = np.sqrt(state.sigma2[np.minimum(shell_index(box), state.sigma2.size - 1)] / 2.0)
    spectra = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * spread
    recon = BatchData.build(spectra.astype(np.complex64), ctx.ctf_params.take(rows),
                            np.ones(m, np.float32), ctx.recon, state.sigma2, stack.apix)
    data = recon.subset(ctx.align_index, ctx.align)
    grids = mstep.reference_grids(state.references, pad)
    halves = np.arange(m) % 2
    n_top = 1 if params.use_force_max else params.max_poses
    mask = params.class_mask(box, stack.apix)
    bias = np.zeros_like(state.tau2)
    for k in np.flatnonzero(state.stats.counts > 0):
        one = grids[k:k + 1]
        scores = score_batch(backend, data, one, ctx.local, np.zeros(1), 1.0, n_top,
                             params.use_force_max)
        entries = select_entries(scores, ctx.local, hard=params.hard_last_iteration)
        stats = accumulate(backend, recon, entries, one, pad, ctx.n_shells, halves)
        average = [mstep.unfiltered(stats.num[:, h], stats.den[:, h], state.sigma2, pad, box)[0]
                   for h in (0, 1)]
        power = mstep.shell_power(np.stack([(average[0] + average[1]) / 2,
                                            (average[0] - average[1]) / 2]) * mask)
        bias[k] = np.maximum(power[0] - power[1], 0.0)
    return bias
