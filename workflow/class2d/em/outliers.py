"""Per-particle outlier statistics: how well each particle fits its class average.

    >>> scores = outlier_scores(stack, state.references, best, psi, tx, ty, alpha, params)
    >>> scores["rlnParticleSelectZScore"]       # (n,) robust z-score; > 3: does not fit

Each particle is compared with its class average brought to its pose and CTF (the model
of the E-step, ``kernels/scalar.py``: the average rotated by ψ, shifted by t px, its
Fourier transform multiplied by the particle's CTF), scaled by the least-squares factor a
= ⟨x, m⟩ / ⟨m, m⟩ inside the particle's disc.  From the residual r = x − a·m, four
features per particle, in the prepared box (px of the alignment box):

``c2dOutsideMaskPower``  mean square of the residual, low-passed (Gaussian σ = 4 % of the
                         box), outside the particle's disc (diameter ``particle_diameter``
                         around its aligned centre) and inside the box's inscribed circle:
                         a neighbour, the other half of an aggregate, an ice or carbon edge;
``c2dOutlierPixel``      largest |r| over robust s.d. of r (1.4826 · median |r − median|):
                         hot pixels, cosmic rays, stripes;
``c2dResidualPower``     mean square of r inside the inscribed circle: abnormal power;
``c2dFitScale``          a, the particle's contrast against its class (≈ 1 for a particle
                         as strong as the average; ≈ 0 for noise).

Each feature becomes a robust z-score within the particle's class, (value − median) /
(1.4826 · MAD) (over all particles for classes of fewer than ``MIN_CLASS`` particles), one
sided (too high) for the first three and two sided for the scale.  For the one-sided
features the median and MAD are those of the values at most ``CLIP`` spreads above them,
found by iterating: a class that absorbed junk by the thousand (a third of it aggregates)
would otherwise measure its particles against a spread the junk itself widened.  The scale
is left unclipped: in a class that holds two objects, the fewer fit it less, and which
class they belong to is the classifier's decision, not junk;
``rlnParticleSelectZScore`` (RELION's name for the z-score of a particle against its
reference, from ``relion_particle_sort``; ``.cs`` field ``class2d/select_zscore``) is the
largest of the four.  About 1 % of good particles score above 3 under Gaussian
statistics; junk that its class absorbed (aggregates, edges) scores far higher.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft

from class2d.ctf import CTFParams, evaluate
from class2d.fourier import FFT_WORKERS, pixel_radius, rfft_frequencies, rotation_coordinates
from class2d.prepare import PreparedStack
from class2d.timing import timer

logger = logging.getLogger(__name__)

#: a class with fewer particles takes the medians and spreads of all particles
MIN_CLASS = 20
#: a feature's centre and spread are those of the values within this many spreads of them
CLIP = 3.0
CLIP_ROUNDS = 20
#: the residual is low-passed by a Gaussian of this s.d. (fraction of the box) before the
#: outside-the-disc power is measured
BLUR_FRACTION = 0.04
#: bytes of working arrays per batch: about ten (batch, box, box) float64 arrays
BATCH_BYTES = 256 * 2 ** 20
#: feature columns and whether a high value only (True) or any deviation (False) is bad
FEATURES = {"c2dOutsideMaskPower": True, "c2dOutlierPixel": True, "c2dResidualPower": True,
            "c2dFitScale": False}
ZSCORE = "rlnParticleSelectZScore"
CS_ZSCORE = "class2d/select_zscore"


@timer("outlier features")
def outlier_features(stack: PreparedStack, rows: np.ndarray, references: np.ndarray,
                     classes: np.ndarray, psi: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                     diameter_px: float) -> dict[str, np.ndarray]:
    """The four features (module docstring) of the particles ``rows`` of the stack: each
    (n,) float64, keyed by its column name.

    references: (K, d, d) class averages; classes (n,) int, each particle's class index;
    psi (n,) radians, tx, ty (n,) px: internal poses (``kernels/scalar.py``);
    diameter_px: particle diameter in px of the prepared box.  Each full-pass shard
    computes its own particles' (``online.full_pass_shard``), so the work scatters with
    the shards: 3–8 ms per 86-px particle, an hour for 10⁶ particles in one job.
    """
    from scipy import ndimage

    box = stack.box
    inscribed = pixel_radius(box) < box / 2
    y, x = np.mgrid[:box, :box] - box // 2
    out = np.zeros((rows.size, len(FEATURES)))
    references = np.asarray(references, np.float64)
    batch = max(1, BATCH_BYTES // (10 * 8 * box * box))
    for start in range(0, rows.size, batch):
        part = np.arange(start, min(start + batch, rows.size))
        images = stack.images(rows[part]).astype(np.float64)
        model = class_models(references, classes[part], psi[part], tx[part], ty[part],
                             stack.ctf_params.take(rows[part]), stack.apix)
        # the particle's disc, around its aligned centre
        disc = (np.hypot(x[None] - tx[part, None, None], y[None] - ty[part, None, None])
                < diameter_px / 2)
        mm = np.einsum("nij,nij->n", model * disc, model)
        scale = np.einsum("nij,nij->n", images * disc, model) / np.maximum(mm, 1e-30)
        residual = images - scale[:, None, None] * model
        smooth = ndimage.gaussian_filter(residual, (0, BLUR_FRACTION * box, BLUR_FRACTION * box))
        outside = (~disc) & inscribed[None]
        flat = residual[:, inscribed]
        spread = 1.4826 * np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)),
                                    axis=1)
        out[part, 0] = (smooth ** 2 * outside).sum(axis=(1, 2)) / np.maximum(
            outside.sum(axis=(1, 2)), 1)
        out[part, 1] = np.abs(flat).max(axis=1) / np.maximum(spread, 1e-30)
        out[part, 2] = (flat ** 2).mean(axis=1)
        out[part, 3] = scale
    return {name: out[:, j] for j, name in enumerate(FEATURES)}


def class_models(references: np.ndarray, classes: np.ndarray, psi: np.ndarray,
                 tx: np.ndarray, ty: np.ndarray, ctf_params: CTFParams,
                 apix: float) -> np.ndarray:
    """Each particle's class average at its pose and CTF, as the E-step models it:
    (m, d, d) float64.  references (K, d, d); classes (m,) int; psi (m,) radians; tx, ty
    (m,) px; ctf_params: the m particles'; apix: Å/px of the box."""
    box = references.shape[-1]
    fy, fx = rfft_frequencies(box, apix)
    ky, kx = rfft_frequencies(box)
    phase = np.exp(-2j * np.pi * (kx[None] * tx[:, None, None] + ky[None] * ty[:, None, None]))
    ctf = evaluate(ctf_params, fx, fy, np.float64)
    spectra = scipy.fft.rfft2(rotated(references, classes, psi), workers=FFT_WORKERS)
    return scipy.fft.irfft2(spectra * phase * ctf, s=(box, box), workers=FFT_WORKERS)


def rotated(references: np.ndarray, classes: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Each particle's class average rotated by its ψ (radians, counter-clockwise x → y)
    about the centre pixel (d//2, d//2), bilinear, as the E-step rotates it in Fourier space:
    (m, d, d) float64 from references (K, d, d), classes (m,) int, psi (m,)."""
    from class2d.bilinear import bilinear

    # the rotated image at r is the average at R(−ψ)·r (``fourier.rotation_coordinates``);
    # class by class, each a 2-D (bilinear) lookup in its own average (half the work of one
    # trilinear lookup in all)
    where = rotation_coordinates(references.shape[-1], np.degrees(psi))
    out = np.empty((len(psi),) + references.shape[1:])
    for k in np.unique(classes):
        members = classes == k
        out[members] = bilinear(references[k:k + 1], where[:, members])[0]
    return out


def robust_zscores(features, classes: np.ndarray):
    """Per-class robust z-scores of each feature (bad = positive) and their largest,
    ``rlnParticleSelectZScore``: (n rows) float64, same columns plus that one (pandas
    DataFrames in and out; pandas is imported here, not by the E-step jobs that import
    this module for ``outlier_features``)."""
    import pandas as pd

    classes = np.asarray(classes)
    z = pd.DataFrame(index=features.index)
    for name, high_only in FEATURES.items():
        values = features[name].to_numpy(np.float64)
        clip = CLIP if high_only else np.inf
        pooled = clipped_centre_spread(values, clip)
        centre, spread = np.empty_like(values), np.empty_like(values)
        for k in np.unique(classes):
            members = classes == k
            centre[members], spread[members] = (clipped_centre_spread(values[members], clip)
                                                if members.sum() >= MIN_CLASS else pooled)
        score = (values - centre) / spread
        z[name] = score if high_only else np.abs(score)
    z[ZSCORE] = z[list(FEATURES)].max(axis=1)
    return z


def clipped_centre_spread(values: np.ndarray, clip: float) -> tuple[float, float]:
    """Median and 1.4826 · MAD of the ``values`` at most ``clip`` of those spreads above
    them, iterated until the values kept stop changing (at most ``CLIP_ROUNDS`` times)."""
    kept = np.ones(values.size, bool)
    for _ in range(CLIP_ROUNDS):
        centre = float(np.median(values[kept]))
        spread = 1.4826 * float(np.median(np.abs(values[kept] - centre)))
        spread = max(spread, 1e-12 * max(abs(centre), 1.0))
        score = (values - centre) / spread
        inside = score <= clip
        if (inside == kept).all() or inside.sum() < MIN_CLASS:
            return centre, spread
        kept = inside
    return centre, spread


@timer("outlier scores")
def outlier_scores(features: dict[str, np.ndarray],
                   classes: np.ndarray) -> dict[str, np.ndarray]:
    """Columns for the particle table from every particle's features (``outlier_features``)
    and final class (n,): ``rlnParticleSelectZScore``, its ``.cs`` twin
    ``class2d/select_zscore`` (float32) and the four features (module docstring)."""
    import pandas as pd

    features = pd.DataFrame({name: np.asarray(features[name], np.float64) for name in FEATURES})
    z = robust_zscores(features, classes)
    logger.info("per-particle z-score: %.1f %% of particles above 3 (outside power %.1f %%, "
                "outlier pixel %.1f %%, residual power %.1f %%, scale %.1f %%)",
                100 * np.mean(z[ZSCORE] > 3), *(100 * np.mean(z[name] > 3) for name in FEATURES))
    return {ZSCORE: z[ZSCORE].to_numpy(), CS_ZSCORE: z[ZSCORE].to_numpy(np.float32),
            **{name: features[name].to_numpy() for name in FEATURES}}
