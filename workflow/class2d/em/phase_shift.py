"""Spectra moved by per-particle shifts, in one Numba kernel (``FrequencySet.shifted_back``).

Its own module so that loading ``em.grids`` (every classification job does) does not load
Numba: a job loads it with the E-step's kernels, where it needs them.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def shift_back(x, shifts, kx, ky, box, out):
    """out[n, f] = x[n, f]·exp(2πi (t_x·kx[f] + t_y·ky[f]) / box), t = shifts[n]."""
    low_x, low_y = kx.min(), ky.min()
    for n in numba.prange(x.shape[0]):
        turn_x = 2.0 * math.pi * shifts[n, 0] / box
        turn_y = 2.0 * math.pi * shifts[n, 1] / box
        along_x = np.exp(1j * turn_x * np.arange(low_x, kx.max() + 1))
        along_y = np.exp(1j * turn_y * np.arange(low_y, ky.max() + 1))
        for f in range(x.shape[1]):
            out[n, f] = x[n, f] * (along_x[kx[f] - low_x] * along_y[ky[f] - low_y])
