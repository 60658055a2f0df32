"""Bilinear reading of image stacks at given points: ``scipy.ndimage.map_coordinates``
with ``order=1`` (0 outside the grid), in one Numba kernel for a whole stack.

    >>> where = fourier.rotation_coordinates(64, angles)     # (2, R, 64, 64)
    >>> turned = bilinear(images, where)                      # (n, R, 64, 64)

Its own module so that the jobs which never interpolate (select, templates, …) do not load
Numba with ``class2d.fourier``.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def _bilinear_kernel(images, rows, cols, out):
    """out[i, p] = images[i] read at (rows[p], cols[p]), bilinear; 0 outside the grid.
    The threads share (image, block of points) pairs: one image or many alike."""
    n, height, width = images.shape
    block = 4096
    blocks = -(-rows.size // block)
    for job in numba.prange(n * blocks):
        i = job // blocks
        for p in range((job % blocks) * block, min((job % blocks + 1) * block, rows.size)):
            r, c = rows[p], cols[p]
            if not (0.0 <= r <= height - 1 and 0.0 <= c <= width - 1):
                out[i, p] = 0.0
                continue
            r0 = min(int(math.floor(r)), height - 2)
            c0 = min(int(math.floor(c)), width - 2)
            fr, fc = r - r0, c - c0
            out[i, p] = ((1.0 - fr) * ((1.0 - fc) * images[i, r0, c0]
                                       + fc * images[i, r0, c0 + 1])
                         + fr * ((1.0 - fc) * images[i, r0 + 1, c0]
                                 + fc * images[i, r0 + 1, c0 + 1]))


def bilinear(images: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(n, H, W) real images read at the points ``where`` (2, …) (row, column), bilinear, 0
    outside the grid: (n, …) float64; the same as ``scipy.ndimage.map_coordinates(image,
    where, order=1)`` for each image, at a fraction of its cost for stacks."""
    images = np.ascontiguousarray(images, np.float64)
    rows, cols = (np.ascontiguousarray(w, np.float64).ravel() for w in where)
    out = np.empty((len(images), rows.size))
    _bilinear_kernel(images, rows, cols, out)
    return out.reshape((len(images),) + where.shape[1:])
