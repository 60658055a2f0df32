"""M-step: class averages from sufficient statistics, then real-space clean-up.

    >>> refs, stats, sigma2, tau2 = finish(stats, tau2, sigma2, params, box, apix, pad,
    ...                                    recenter=True)     # the whole M-step
    >>> refs = reconstruct(num, den, tau2, pad=2, box=64, tau2_fudge=2.0)   # its parts
    >>> refs, shifts = postprocess(refs, mask_radius=28.8, mask_edge=3.2, recenter=True,
    ...                            recenter_threshold=0.2, clamp_solvent=False, non_negative=False)
    >>> grids = reference_grids(refs, pad=2)                # for the next E-step
    >>> class_resolution(state, params)                     # (K,) Å

A_k = Σ w·α·CTF·X/σ² / (Σ w·α²·CTF²/σ² + 1/(pad²·T·τ²_k)) on the padded Fourier grid
(RELION's Wiener filter; pad² because bilinear insertion spreads each coefficient over
pad² grid nodes), then the inverse FFT, cropped to the d-box and divided by the sinc²
of linear interpolation.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState, Statistics
from class2d.fourier import (centered_rfft2, centre_of_mass_shifts, circular_mask,
                             pixel_grid, pixel_radius, shell_index, shift_images)
from class2d.timing import timer

logger = logging.getLogger(__name__)


def grid_radius(grid: int, pad: int) -> np.ndarray:
    """Radius of every node of a centred (G, G) grid in Fourier px of the d-box."""
    return pixel_radius(grid) / pad


def gridding_correction(box: int, pad: int) -> np.ndarray:
    """(d, d) real-space sinc² of bilinear interpolation on a (pad·d) grid."""
    y, x = pixel_grid(box)
    grid = pad * box
    return (np.sinc(x / grid) * np.sinc(y / grid)) ** 2


def reconstruct(num: np.ndarray, den: np.ndarray, tau2: np.ndarray, pad: int, box: int,
                tau2_fudge: float) -> np.ndarray:
    """Wiener-filtered class averages: (K, d, d) float32 real space."""
    grid = num.shape[-1]
    shells = np.rint(grid_radius(grid, pad)).astype(np.int64)
    n_shell = tau2.shape[1]
    inside = shells < n_shell
    safe = np.clip(shells, 0, n_shell - 1)
    out = np.empty((num.shape[0], box, box), np.float32)
    corr = gridding_correction(box, pad)
    start = (grid - box) // 2
    for k in range(num.shape[0]):
        t2 = np.maximum(tau2[k][safe] * tau2_fudge, 1e-30)
        with np.errstate(divide="ignore", invalid="ignore"):
            spec = np.where(inside, num[k] / (den[k] + 1.0 / (pad * pad * t2)), 0.0)
        real = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spec))).real
        out[k] = real[start:start + box, start:start + box] / corr
    return out


def unfiltered(num: np.ndarray, den: np.ndarray, sigma2: np.ndarray, pad: int,
               box: int) -> np.ndarray:
    """Class averages without the Wiener filter, num/den where den > 0: (K, d, d) float32
    (``reconstruct`` with a signal power 10⁶ times the largest noise power ``sigma2`` (S,))."""
    flat = np.full((num.shape[0], sigma2.size), 1e6 * sigma2.max())
    return reconstruct(num, den, flat, pad, box, 1.0)


def reference_grids(references: np.ndarray, pad: int) -> np.ndarray:
    """Padded, centred Fourier grids of real-space references: (K, G, G) complex64.

    Pre-divided by the sinc² of the bilinear sampling that will read them.
    """
    n, box, _ = references.shape
    grid = pad * box
    padded = np.zeros((n, grid, grid), np.float64)
    start = (grid - box) // 2
    padded[:, start:start + box, start:start + box] = references / gridding_correction(box, pad)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=(1, 2))), axes=(1, 2))
    return spec.astype(np.complex64)


def shell_power(images: np.ndarray) -> np.ndarray:
    """Mean |FFT|² per shell of (K, d, d) images: (K, d//2 + 1)."""
    box = images.shape[-1]
    shells = shell_index(box).ravel()
    n_shell = box // 2 + 1
    keep = shells < n_shell
    spec = np.abs(centered_rfft2(images.astype(np.float64))) ** 2
    spec = spec.reshape(images.shape[0], -1)[:, keep]
    counts = np.bincount(shells[keep], minlength=n_shell)
    power = np.stack([np.bincount(shells[keep], row, n_shell) for row in spec])
    return power / np.maximum(counts, 1)


def shell_mean(grids: np.ndarray, pad: int, n_shells: int) -> np.ndarray:
    """Mean of (K, G, G) centred grids over each shell of the d-box: (K, n_shells)."""
    shells = np.rint(grid_radius(grids.shape[-1], pad)).astype(np.int64).ravel()
    keep = shells < n_shells
    counts = np.maximum(np.bincount(shells[keep], minlength=n_shells), 1)
    return np.stack([np.bincount(shells[keep], g.ravel()[keep], n_shells) / counts
                     for g in grids])


def shift_grids(grids: np.ndarray, shifts: np.ndarray, pad: int) -> np.ndarray:
    """Apply (K, 2) real-space shifts (px of the d-box) to centred padded Fourier grids
    (K, …, G, G): every grid of class k (both half sets of the statistics) by shift k, the
    phases computed once per class."""
    grid = grids.shape[-1]
    y, x = np.stack(pixel_grid(grid)) / pad
    box = grid // pad
    phase = np.exp(-2j * np.pi * (x[None] * shifts[:, 0, None, None]
                                  + y[None] * shifts[:, 1, None, None]) / box)
    return grids * phase.reshape((len(shifts),) + (1,) * (grids.ndim - 3) + phase.shape[1:])


def postprocess(references: np.ndarray, *, mask_radius: float, mask_edge: float,
                recenter: bool, recenter_threshold: float, clamp_solvent: bool,
                non_negative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mask, re-centre, clamp: returns (references (K, d, d), shifts applied (K, 2) px)."""
    box = references.shape[-1]
    mask = circular_mask(box, mask_radius, mask_edge)
    refs = references.astype(np.float32)
    shifts = np.zeros((refs.shape[0], 2))
    if recenter:
        shifts = centre_of_mass_shifts(refs * mask, recenter_threshold)
        refs = shift_images(refs, shifts)
    if clamp_solvent:
        ring = (mask > 0.05) & (mask < 0.95)
        if ring.any():
            refs = refs - np.median(refs[:, ring], axis=1)[:, None, None]
    if non_negative:
        refs = np.maximum(refs, 0.0)
    return (refs * mask).astype(np.float32), shifts


@timer("M-step")
def finish(stats: Statistics, tau2: np.ndarray, sigma2_prev: np.ndarray,
           params: ClassifyParams, box: int, apix: float, pad: int,
           recenter: bool) -> tuple[np.ndarray, Statistics, np.ndarray, np.ndarray]:
    """Classes, noise and signal models from statistics: (refs, stats, sigma2, tau2).

    tau2: (K, S) signal power per class and shell of the previous model (the Wiener prior);
    sigma2_prev: (S,) noise power kept for shells without residuals; box: px, apix: Å/px of
    the prepared stack; recenter: allow re-centring (``params.recenter`` must allow it too).
    Returns refs (K, d, d) float32, the statistics (their sums shifted with the classes when
    re-centred), sigma2 (S,) and the next tau2 (K, S).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma2 = np.where(stats.noise_count > 0, stats.noise_sum / stats.noise_count, sigma2_prev)
    if params.white_noise:
        sigma2 = np.full_like(sigma2, np.average(sigma2[1:], weights=stats.noise_count[1:] + 1e-12))
    sigma2[0] = sigma2[1]
    refs = reconstruct(stats.num.sum(axis=1), stats.den.sum(axis=1), tau2, pad, box,
                       params.tau2_fudge)
    radius, edge = params.mask_radius_px(box, apix)
    refs, shifts = postprocess(refs, mask_radius=radius, mask_edge=edge,
                               recenter=recenter and params.recenter,
                               recenter_threshold=params.recenter_threshold,
                               clamp_solvent=params.clamp_solvent,
                               non_negative=params.non_negative)
    if np.any(shifts):
        stats = dataclasses.replace(stats, num=shift_grids(stats.num, shifts, pad))
    refs[stats.counts <= 0] = 0.0
    tau2 = np.maximum(shell_power(refs), 1e-12)
    # shells that no particle has reached yet get a weak prior (SNR 1 per coefficient), so
    # that the first data inserted there are not smothered by an empty class's zero power
    reached = shell_mean(stats.den.sum(axis=1), pad, tau2.shape[1]) > 0
    tau2 = np.where(reached, tau2, sigma2[None, :])
    return refs, stats, sigma2, tau2


def reference_noise(stats: Statistics, tau2: np.ndarray, params: ClassifyParams, box: int,
                    apix: float, pad: int) -> np.ndarray:
    """(K, S) noise power per shell of each class average, from its two half sets: the
    halves hold independent particles, so |A₁ − A₂|² / 4 per coefficient is the power of
    the full average's noise (each half has twice that noise; the signal cancels)."""
    halves = [reconstruct(stats.num[:, h], stats.den[:, h], tau2, pad, box, params.tau2_fudge)
              for h in (0, 1)]
    radius, edge = params.mask_radius_px(box, apix)
    return shell_power((halves[0] - halves[1]) * circular_mask(box, radius, edge)) / 4.0


#: shells in a row at spectral SNR ≥ 1 that count as resolved (see class_resolution)
RUN_SHELLS = 3


def class_resolution(state: ClassState, params: ClassifyParams,
                     bias: np.ndarray | None = None) -> np.ndarray:
    """(K,) Å: the last shell of the last run of RUN_SHELLS shells at which each class's
    spectral SNR, T·τ²_signal·⟨Σ w·α²·CTF²/σ²⟩, is at least 1 (RELION's
    rlnEstimatedResolution of a class, which takes the first shell below 1; never finer
    than the stack's Nyquist, 2·apix).

    τ²_signal is the average's power less its own noise power (``reference_noise``) and
    less ``bias`` (K, S), the noise that alignment puts into it alike in both half sets
    (``bias.alignment_bias``; none when not given): the power of a featureless blob's
    average beyond the blob's extent is noise, which made it claim Nyquist (7.1 Å on real
    particles), and aligned noise two shells more at SNR 0.01.  The last run, not the first drop: coloured
    noise (neighbours, ice) can hold a low shell below 1 while the particle's features lie
    above it (a class sharp to 10 Å read 113 Å on real particles); a run, not one shell, so
    that a noisy shell alone does not count.

    Not the FRC of half-set averages: both halves are aligned to the same reference, so
    their noise correlates and the FRC stays high up to Nyquist (on the demo data 5 of 20
    classes claimed 6 Å, Nyquist, against 17–27 Å from their FRC with the true projection;
    this estimate gives 19–24 Å)."""
    n_shells = state.tau2.shape[1]
    weight = shell_mean(state.stats.den.sum(axis=1), state.pad, n_shells)
    noise = reference_noise(state.stats, state.tau2, params, state.box, state.apix, state.pad)
    if bias is not None:
        noise = noise + bias
    ssnr = params.tau2_fudge * np.maximum(state.tau2 - noise, 0.0) * weight
    out = []
    for curve in ssnr:
        above = curve >= 1.0
        above[0] = False
        # ends of runs of RUN_SHELLS shells at or above 1: the last is the resolution
        runs = np.flatnonzero(np.convolve(above, np.ones(RUN_SHELLS), "valid") == RUN_SHELLS)
        shell = runs[-1] + RUN_SHELLS - 1 if runs.size else 1
        out.append(state.box * state.apix / shell)
    return np.array(out)
