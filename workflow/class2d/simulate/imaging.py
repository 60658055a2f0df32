"""Image formation: a noise-free scene per particle, the CTF, then noise.

    >>> clean = form_images(scene, ctf_params, box=64, apix=3.0, pad=2)   # (n, 64, 64)
    >>> noise = coloured_noise(rng, 100, box=64, apix=3.0, exponent=6.0, corner_A=115.0)

A scene is what lies on the micrograph around one pick before the microscope: 2D
Gaussians (projected blobs, see :mod:`class2d.simulate.phantom`) and, for ice/carbon
junk, one straight edge.  The CTF multiplies the Fourier transform of the scene drawn on
a canvas ``pad`` times the box (so that CTF fringes leave and enter the box as they do
on a micrograph), and the centre box is kept.

Noise is white, or coloured as on denoised micrographs: power falling as a steep power
law of the frequency, drawn on a canvas larger than the box and cut, so that the box is
not periodic (its edges are a discontinuity, as in a box extracted from a micrograph).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from scipy.special import erf

from class2d.ctf import CTFParams, evaluate
from class2d.fourier import centered_irfft2, centered_rfft2, pixel_grid, rfft_frequencies
from class2d.simulate.phantom import render

logger = logging.getLogger(__name__)

#: bytes of canvases drawn and CTF-modulated at a time (each particle's take ~40 · (pad · box)²
#: bytes: the canvas, its transform, their product and the inverse transform)
BATCH_BYTES = 256 * 2 ** 20


class Scene(NamedTuple):
    """Noise-free content around n picks, before the CTF (pixels of the particle image)."""

    peaks: np.ndarray
    """(n, g) peak of each 2D Gaussian (0 = absent)"""
    centres: np.ndarray
    """(n, g, 2) px from the box centre, (x, y)"""
    precisions: np.ndarray
    """(n, g, 3) px⁻², (p_xx, p_xy, p_yy) of each inverse covariance"""
    edges: np.ndarray
    """(n, 4) straight edge: height (0 = none), angle of its normal (degrees),
    offset of the edge from the box centre along the normal (px), width (px)"""


def edge_field(edges: np.ndarray, size: int, box: int) -> np.ndarray:
    """Draw the straight edges of a scene on (n, size, size) canvases: float64.

    height · ½(1 + erf(t / width)), t the signed distance to the edge.  Beyond the box
    (plus a margin) the field fades smoothly to 0, so that the periodic canvas adds no
    second sharp edge at its border.
    """
    height, angle, offset, width = (edges[:, i, None, None] for i in range(4))
    y, x = pixel_grid(size)
    theta = np.deg2rad(angle)
    t = x * np.cos(theta) + y * np.sin(theta) - offset
    field = height * 0.5 * (1.0 + erf(t / width))
    if size > box:
        inner, outer = 0.5 * box + 4.0, 0.5 * size - 1.0
        r = np.maximum(np.abs(x), np.abs(y))
        ramp = np.clip((r - inner) / max(outer - inner, 1.0), 0.0, 1.0)
        field = field * (0.5 + 0.5 * np.cos(np.pi * ramp))
    return field


def form_images(scene: Scene, ctf_params: CTFParams, box: int, apix: float,
                pad: int = 2) -> np.ndarray:
    """Noise-free particle images: CTF ⊛ scene, centre box kept: (n, box, box) float64.

    ctf_params: per particle (n); apix: Å/px; pad: canvas size over box (1 = the CTF is
    applied in the box, wrapping around, as ``relion_project --ctf`` does).
    """
    n = scene.peaks.shape[0]
    size = box * pad
    start = size // 2 - box // 2
    fy, fx = rfft_frequencies(size, apix)
    # particles share their micrograph's CTF: evaluate each distinct one once
    table = np.column_stack([np.broadcast_to(np.asarray(v, np.float64), (n,)) for v in ctf_params])
    distinct, which = np.unique(table, axis=0, return_inverse=True)
    ctfs = evaluate(CTFParams(*distinct.T), fx, fy, np.float64)
    out = np.empty((n, box, box))
    batch = max(1, BATCH_BYTES // (40 * size * size))
    for lo in range(0, n, batch):
        rows = slice(lo, min(lo + batch, n))
        canvas = render(scene.peaks[rows], scene.centres[rows], scene.precisions[rows], size)
        has_edge = np.flatnonzero(scene.edges[rows, 0] != 0)
        if has_edge.size:
            canvas[has_edge] += edge_field(scene.edges[rows][has_edge], size, box)
        modulated = centered_irfft2(centered_rfft2(canvas) * ctfs[which[rows]], size)
        out[rows] = modulated[:, start:start + box, start:start + box]
    return out


def signal_variance(images: np.ndarray) -> np.ndarray:
    """(n,) variance of each image over its pixels (the SNR numerator)."""
    return np.var(images.reshape(images.shape[0], -1), axis=1)


def coloured_noise(rng: np.random.Generator, n: int, box: int, apix: float, exponent: float,
                   corner_A: float, floor: float = 0.0, pad: int = 4) -> np.ndarray:
    """(n, box, box) float32 stationary Gaussian noise of variance 1, power spectrum
    (1 + (f·corner_A)²)^(−exponent/2) + floor (f in 1/Å).

    Drawn on a (pad·box)² canvas and cut: measured on the EMPIAR-10017 denoised
    micrographs, the power inside the particle falls as f^−6 from 40 to 11 Å, so a box's
    edge discontinuity (power ∝ f^−3 on the axes) outweighs everything beyond ~40 Å.
    """
    size = pad * box
    fy, fx = rfft_frequencies(size, apix)
    amplitude = np.sqrt((1.0 + (fx * fx + fy * fy) * corner_A ** 2) ** (-exponent / 2.0) + floor)
    # Parseval: the canvas's pixel variance is the mean power over its whole spectrum
    weight = np.where(fx == 0, 1.0, 2.0)
    weight[:, -1] = 1.0 if size % 2 == 0 else 2.0
    amplitude /= np.sqrt((weight * amplitude ** 2).sum() / size ** 2)
    start = size // 2 - box // 2
    out = np.empty((n, box, box), np.float32)
    batch = max(1, BATCH_BYTES // (40 * size * size))
    for lo in range(0, n, batch):
        count = min(batch, n - lo)
        white = rng.standard_normal((count, size, size))
        coloured = centered_irfft2(centered_rfft2(white) * amplitude, size)
        out[lo:lo + count] = coloured[:, start:start + box, start:start + box]
    return out
