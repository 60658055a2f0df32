"""E-step of one batch: score the classes at every pose, reduce, and pick what the M-step inserts.

    >>> data = BatchData.build(images, ctf_params, alpha, freqs, sigma2, apix)
    >>> scores = score_batch(backend, data, grids, poses, log_prior, inv_temp, n_top,
    ...                      force_max=False, prepass=low_index, margin=20.0)
    >>> entries = select_entries(scores, poses, hard=False)

Scores are ℓ = 2α·Σ Re(conj(P)·M) − α²·Σ CTF²|A_rot|²/σ² with P = w·CTF·X/σ² and
M = A(R(−ψ)f)·exp(−2πi f·t/d): two GEMM-shaped products per class (DESIGN §3).  A
prepass at half the alignment radius, on the coarser pose grid, scores every class; the
full-resolution products then run only for each particle's candidate classes (those
within ``margin`` of its best), which late in a run is 2 of 20.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from class2d import ctf as ctf_model
from class2d.em.grids import FrequencySet, PoseGrid

#: a pose or class whose posterior is below this share of the best is not inserted
MIN_WEIGHT = 1e-2
#: a pose is "significant" within this many log units of the best (rlnNrOfSignificantSamples)
SIG_LOG = float(np.log(1000.0))


@dataclasses.dataclass
class BatchData:
    """Particle data of a batch on one frequency set.

    x: (N, F) complex64 spectra;  ctf: (N, F) float32;  alpha: (N,) float32
    inv_sigma2: (F,) float32;  freqs: the frequency set
    """

    x: np.ndarray
    ctf: np.ndarray
    alpha: np.ndarray
    inv_sigma2: np.ndarray
    freqs: FrequencySet

    @classmethod
    def build(cls, spectra: np.ndarray, ctf_params: ctf_model.CTFParams, alpha: np.ndarray,
              freqs: FrequencySet, sigma2: np.ndarray, apix: float) -> "BatchData":
        size = freqs.box * apix
        ctf = ctf_model.evaluate(ctf_params, freqs.fx / size, freqs.fy / size)
        return cls(x=freqs.take(spectra), ctf=np.ascontiguousarray(ctf, np.float32),
                   alpha=np.ascontiguousarray(alpha, np.float32),
                   inv_sigma2=(1.0 / sigma2[freqs.shell]).astype(np.float32), freqs=freqs)

    def subset(self, index: np.ndarray, freqs: FrequencySet) -> "BatchData":
        """The same particles on ``freqs``, the coefficients at ``index`` of this set."""
        return BatchData(x=np.ascontiguousarray(self.x[:, index]),
                         ctf=np.ascontiguousarray(self.ctf[:, index]), alpha=self.alpha,
                         inv_sigma2=self.inv_sigma2[index], freqs=freqs)

    def shifted(self, shifts: np.ndarray) -> "BatchData":
        """The same particles moved back by ``shifts`` (N, 2) px (x, y): a search around 0
        is then a search around those shifts (a seen particle's last one, a new one's
        located one)."""
        return dataclasses.replace(self, x=self.freqs.shifted_back(self.x, shifts))

    def products(self) -> tuple[np.ndarray, np.ndarray]:
        """(p_stack (N, 2F) = [Re P | Im P], ctf2 (N, F) = w·CTF²/σ²), float32."""
        g = self.ctf * (self.freqs.wf * self.inv_sigma2)[None, :]
        n_freq = g.shape[1]
        p_stack = np.empty((g.shape[0], 2 * n_freq), np.float32)
        np.multiply(g, self.x.real, out=p_stack[:, :n_freq])
        np.multiply(g, self.x.imag, out=p_stack[:, n_freq:])
        g *= self.ctf
        return p_stack, g


@dataclasses.dataclass
class BatchScores:
    """Reduced scores of a batch (tempered by 1/τ).

    top_s, top_i: (N, K, P) best poses per class;  lse: (N, K);  nsig: (N, K)
    refine: (N, K, 3) sub-step offsets of each class's best pose;  ratio: (N, K)
    gamma: (N, K) class posteriors;  loglik: (N,) untempered best score over classes
    flops: floating-point operations of the products actually done (4F per particle,
    class and pose, prepass included)
    """

    top_s: np.ndarray
    top_i: np.ndarray
    lse: np.ndarray
    nsig: np.ndarray
    refine: np.ndarray
    ratio: np.ndarray
    gamma: np.ndarray
    loglik: np.ndarray
    flops: float = 0.0

    @property
    def best_class(self) -> np.ndarray:
        return np.argmax(self.gamma, axis=1)


def score_batch(backend, data: BatchData, grids: np.ndarray, poses: PoseGrid,
                log_prior: np.ndarray, inv_temp: float, n_top: int, force_max: bool,
                prepass: np.ndarray | None = None, margin: float = np.inf) -> BatchScores:
    """Score a batch against all classes; class posteriors from max (force_max) or marginal.

    With ``prepass`` (positions in ``data.freqs`` of the coefficients within half the
    alignment radius), every class is first scored on those alone, on the pose grid suited
    to half the resolution (``poses.coarser()``), and a class is scored at full resolution
    only for the particles whose low-resolution log-evidence for it is within ``margin``
    (tempered log units) of their best class's; the others get posterior 0, as RELION's
    coarse pass and CryoSPARC's branch-and-bound skip hopeless classes.  A class of prior 0
    (``log_prior`` −inf) is not scored at all.
    """
    n, k_count = data.x.shape[0], grids.shape[0]
    candidates = np.repeat(np.isfinite(log_prior)[None, :], n, axis=0)
    p_stack, ctf2 = data.products()
    flops = 0.0
    if prepass is not None and k_count > 1:
        coarse_poses = poses.coarser()
        columns = np.concatenate([prepass, prepass + data.freqs.size])
        coarse = _score_classes(backend, p_stack[:, columns], ctf2[:, prepass], data.alpha,
                                data.freqs.subset(prepass), grids, coarse_poses, inv_temp, 1,
                                candidates)
        flops += candidates.sum() * coarse_poses.size * 4.0 * prepass.size
        evidence = _evidence(coarse[0], coarse[2], force_max, coarse_poses) + log_prior[None, :]
        candidates &= evidence >= evidence.max(axis=1, keepdims=True) - margin
    fields = _score_classes(backend, p_stack, ctf2, data.alpha, data.freqs, grids, poses,
                            inv_temp, n_top, candidates)
    flops += candidates.sum() * poses.size * 4.0 * data.freqs.size
    logp = _evidence(fields[0], fields[2], force_max, poses) + log_prior[None, :]
    logp -= logp.max(axis=1, keepdims=True)
    gamma = np.exp(logp)
    gamma /= gamma.sum(axis=1, keepdims=True)
    loglik = fields[0][:, :, 0].max(axis=1) / inv_temp
    return BatchScores(*fields, gamma=gamma, loglik=loglik, flops=float(flops))


def _evidence(top_s: np.ndarray, lse: np.ndarray, force_max: bool, poses: PoseGrid) -> np.ndarray:
    """(N, K) float64 log-evidence per class: best pose, or mean over poses."""
    return (top_s[:, :, 0] if force_max else lse - np.log(poses.size)).astype(np.float64)


def _score_classes(backend, p_stack: np.ndarray, ctf2: np.ndarray, alpha: np.ndarray,
                   freqs: FrequencySet, grids: np.ndarray, poses: PoseGrid, inv_temp: float,
                   n_top: int, candidates: np.ndarray) -> list[np.ndarray]:
    """Per class, score the particles where ``candidates`` (N, K) is true, from the
    products of ``BatchData.products`` on ``freqs``: the fields of BatchScores up to
    ``ratio``; other particles get score −inf and pose −1."""
    arot = backend.rotate_references(grids, freqs.fx, freqs.fy, poses.psi,
                                     grids.shape[-1] // freqs.box)
    return list(backend.score_classes(p_stack, ctf2, arot, freqs.phases(poses.shifts), alpha,
                                      inv_temp, poses.side, SIG_LOG, n_top, candidates))


@dataclasses.dataclass
class Entries:
    """What the M-step inserts: (particle, class, pose, weight), sorted by class.

    offsets: (K+1,) entries of class k are offsets[k]:offsets[k+1]
    """

    rows: np.ndarray
    classes: np.ndarray
    psi: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    weight: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, rows, classes, psi, tx, ty, weight, n_classes: int) -> "Entries":
        order = np.argsort(classes, kind="stable")
        offsets = np.searchsorted(classes[order], np.arange(n_classes + 1))
        f32 = np.float32
        return cls(rows=rows[order].astype(np.int64), classes=classes[order].astype(np.int64),
                   psi=psi[order].astype(f32), tx=tx[order].astype(f32), ty=ty[order].astype(f32),
                   weight=weight[order].astype(f32), offsets=offsets.astype(np.int64))

    def best_per_row(self) -> np.ndarray:
        """Index of the heaviest entry of every particle row present."""
        order = np.lexsort((-self.weight, self.rows))
        first = np.r_[True, self.rows[order][1:] != self.rows[order][:-1]]
        return order[first]


def select_entries(scores: BatchScores, poses: PoseGrid, hard: bool,
                   every_class: bool = False) -> Entries:
    """Entries for the M-step: classes with posterior ≥ MIN_WEIGHT of the best (only the
    best class when ``hard``), each at its kept poses weighted by their posterior.  With
    ``every_class``, each particle goes whole into every class, at that class's poses, as
    if it had been scored against it alone (``bias``: noise aligned to each class)."""
    n, k_count, n_top = scores.top_s.shape
    gamma = scores.gamma
    if every_class:
        gamma = np.ones_like(gamma)
    elif hard:
        gamma = np.zeros_like(gamma)
        gamma[np.arange(n), scores.best_class] = 1.0
    keep_class = gamma >= MIN_WEIGHT * gamma.max(axis=1, keepdims=True)
    gamma = np.where(keep_class, gamma, 0.0)
    if not every_class:
        gamma /= gamma.sum(axis=1, keepdims=True)
    scored = scores.top_i >= 0
    with np.errstate(invalid="ignore"):      # −inf − −inf where a class was not scored
        pose_w = np.exp(scores.top_s - scores.top_s[:, :, :1])
    pose_w = np.where(scored & (pose_w >= MIN_WEIGHT), pose_w, 0.0)
    pose_w /= np.maximum(pose_w.sum(axis=2, keepdims=True), 1e-30)
    weight = gamma[:, :, None] * pose_w
    refine = np.zeros(scores.top_s.shape + (3,), np.float32)
    refine[:, :, 0] = scores.refine
    i, k, j = np.nonzero(weight > 0)
    psi, tx, ty = poses.pose(scores.top_i[i, k, j], refine[i, k, j])
    return Entries.build(i, k, psi, tx, ty, weight[i, k, j], k_count)
