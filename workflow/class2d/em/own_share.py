"""A particle's own share in its class's average, taken out of its score (leave one out).

    >>> own = OwnShare.of(state, params, ctx.align, OwnShare.weight(state, params, stack.n))
    >>> prior = own.log_prior(log_prior, data, state.classes[rows], inv_temp)   # (n, K)

A class average holds the particles that made it, noise included, so a particle scored
against its own class meets its own noise there too: its score for that class is raised
by about 2·ρ·Σ w·CTF²/σ² · g/(D + λ) (D: the class's Σ CTF²/σ² at that frequency, λ the
Wiener term, ρ the particle's weight in the class's statistics, g what of one inserted
coefficient comes back when the padded grid is cropped to the box and masked).  The class
a particle is in holds it more than the data do: more so the smaller the class (a class of
40 particles gives its own 6–9 log units, one of 150 about 1.5) and the more often a
particle was met.  Online EM meets each particle of 3,000 about twenty times (ρ = batch /
N = 2/3) and one of 10⁵ at most once (ρ = 0.02): the small set's classes hold on to what
they hold, the large set's do not.

The gain per frequency is the class's shell average of D, so the term is one product per
particle over its coefficients, not a pose search.  ``g`` is the mask's mean over the
padded grid's 1/pad² (the reference is reconstructed on a grid pad times the box, cropped
to the box and masked): white noise inserted into a class of flat D and read back at its
own pose returns 0.175 of itself at 64 px and 0.168 at 32 px, against 0.177 and 0.173 from
the mask (padding 2; the two interpolations, inserting and reading, lose little).  At the
particle's best pose the score falls less when it is left out (the best pose moves where
the others' noise fits: 0.86 of the term on a run of 3,000 particles of 64 px, 0.63 on 240
of 32 px), so the term is what its own pose owes, the most a particle gains from itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from class2d.em.estep import BatchData
from class2d.em.grids import FrequencySet
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState


@dataclasses.dataclass(frozen=True)
class OwnShare:
    """Per class and alignment coefficient, what a particle of weight 1 adds to its own
    score per unit of w·CTF²/σ² (``gain``, (K, F)), and the weight ρ of a particle in the
    class statistics (``rho``)."""

    gain: np.ndarray
    rho: float

    @classmethod
    def of(cls, state: ClassState, params: ClassifyParams, freqs: FrequencySet,
           rho: float) -> "OwnShare":
        """From ``state``'s statistics, for scoring on ``freqs`` (the alignment set), a
        particle's weight in them ``rho`` (``online_weight``)."""
        pad, box = state.pad, state.box
        den = state.stats.den.sum(axis=1)                           # (K, G, G)
        grid = den.shape[-1]
        radius = np.rint(np.hypot(*(np.indices((grid, grid)) - grid // 2))).astype(np.int64)
        nodes = np.bincount(radius.ravel())
        shell_den = np.stack([np.bincount(radius.ravel(), d.ravel()) for d in den]) / nodes
        wiener = 1.0 / (pad * pad * np.maximum(state.tau2 * params.tau2_fudge, 1e-30))
        d = (shell_den[:, np.rint(pad * freqs.radius).astype(np.int64)]
             + wiener[:, np.minimum(freqs.shell, wiener.shape[1] - 1)])
        mask = params.class_mask(box, state.apix)
        gain = 2.0 * float(mask.mean()) / pad ** 2 / d
        return cls(gain=gain.astype(np.float32), rho=rho)

    @staticmethod
    def weight(state: ClassState, params: ClassifyParams, n_particles: int) -> float:
        """A particle's expected weight in its class's statistics in ``state``: 1 where a
        full pass made them (every particle inserted once; a Live 2D round that only
        assigns new particles leaves them as they were), else the share of the particles a
        mini-batch holds (the online blend's weights sum to 1 over the iterations)."""
        made = [row["kind"] for row in state.history if row["kind"] != "live assigned"]
        if made and made[-1] != "online":
            return 1.0
        return min(1.0, params.batch_per_class * params.n_classes / max(n_particles, 1))

    def terms(self, data: BatchData, classes: np.ndarray) -> np.ndarray:
        """(n,) the score each particle of ``data`` owes to itself in class ``classes`` (n,)
        (0 where the class is −1: not in one)."""
        inside = classes >= 0
        out = np.zeros(classes.size)
        if inside.any():
            ctf2 = data.ctf[inside] ** 2 * (data.freqs.wf * data.inv_sigma2)[None, :]
            own = np.einsum("nf,nf->n", ctf2, self.gain[classes[inside]], dtype=np.float64)
            out[inside] = self.rho * data.alpha[inside].astype(np.float64) ** 2 * own
        return out

    def log_prior(self, log_prior: np.ndarray, data: BatchData, classes: np.ndarray,
                  inv_temp: float) -> np.ndarray:
        """(n, K) ``log_prior`` (K,) for each particle, its own class's lowered by its own
        share (tempered by ``inv_temp``, as the scores are)."""
        out = np.tile(log_prior, (classes.size, 1))
        inside = np.flatnonzero(classes >= 0)
        out[inside, classes[inside]] -= inv_temp * self.terms(data, classes)[inside]
        return out
