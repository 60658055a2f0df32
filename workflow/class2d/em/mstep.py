"""M-step: class averages from sufficient statistics, then real-space clean-up.

    >>> refs = reconstruct(stats.num, stats.den, tau2, pad=2, box=64, tau2_fudge=2.0)
    >>> refs, shifts = postprocess(refs, params, apix)     # mask, re-centre, clamp
    >>> grids = reference_grids(refs, pad=2)                # for the next E-step

A_k = Σ w·α·CTF·X/σ² / (Σ w·α²·CTF²/σ² + 1/(pad²·T·τ²_k)) on the padded Fourier grid
(RELION's Wiener filter; pad² because bilinear insertion spreads each coefficient over
pad² grid nodes), then the inverse FFT, cropped to the d-box and divided by the sinc²
of linear interpolation.
"""

from __future__ import annotations

import logging

import numpy as np

from class2d.fourier import centered_rfft2, circular_mask, pixel_grid, pixel_radius, shell_index

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


def center_of_mass_shift(image: np.ndarray, threshold: float) -> np.ndarray:
    """Shift (x, y) px that moves the centre of mass of the density above
    ``threshold``·max to the box centre."""
    box = image.shape[-1]
    mass = np.where(image > threshold * image.max(), image, 0.0)
    total = mass.sum()
    if total <= 0:
        return np.zeros(2)
    y, x = pixel_grid(box)
    return -np.array([(mass * x).sum(), (mass * y).sum()]) / total


def shift_images(images: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift (K, d, d) images by (K, 2) px (x, y) with Fourier phases."""
    box = images.shape[-1]
    fy = np.fft.fftfreq(box)[:, None]
    fx = np.fft.rfftfreq(box)[None, :]
    phase = np.exp(-2j * np.pi * (fx[None] * shifts[:, 0, None, None]
                                  + fy[None] * shifts[:, 1, None, None]))
    return np.fft.irfft2(np.fft.rfft2(images) * phase, s=(box, box)).astype(np.float32)


def shift_grids(grids: np.ndarray, shifts: np.ndarray, pad: int) -> np.ndarray:
    """Apply (K, 2) real-space shifts (px of the d-box) to centred padded Fourier grids."""
    grid = grids.shape[-1]
    y, x = np.stack(pixel_grid(grid)) / pad
    box = grid // pad
    phase = np.exp(-2j * np.pi * (x[None] * shifts[:, 0, None, None]
                                  + y[None] * shifts[:, 1, None, None]) / box)
    return grids * phase


def postprocess(references: np.ndarray, *, mask_radius: float, mask_edge: float,
                recenter: bool, recenter_threshold: float, clamp_solvent: bool,
                non_negative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mask, re-centre, clamp: returns (references (K, d, d), shifts applied (K, 2) px)."""
    box = references.shape[-1]
    mask = circular_mask(box, mask_radius, mask_edge)
    refs = references.astype(np.float32)
    shifts = np.zeros((refs.shape[0], 2))
    if recenter:
        shifts = np.stack([center_of_mass_shift(r * mask, recenter_threshold) for r in refs])
        refs = shift_images(refs, shifts)
    if clamp_solvent:
        ring = (mask > 0.05) & (mask < 0.95)
        if ring.any():
            refs = refs - np.median(refs[:, ring], axis=1)[:, None, None]
    if non_negative:
        refs = np.maximum(refs, 0.0)
    return (refs * mask).astype(np.float32), shifts
