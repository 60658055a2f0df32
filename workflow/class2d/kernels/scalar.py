"""Scalar helpers shared by every backend: plain Python, compiled by each backend.

``cpu.py`` compiles them with ``numba.njit(inline="always")`` and ``cuda.py`` with
``numba.cuda.jit(device=True)``, so both backends interpolate and rotate the same way.

Conventions (all backends):
- A class reference lives on a centred, zero-padded Fourier grid ``(G, G)`` complex, with
  the origin at ``(G // 2, G // 2)``; G = pad · d for an alignment box d.
- A particle frequency is (fx, fy) in Fourier pixels of the d-box.  The model of an
  image is ``X(f) = CTF(f) · A(R(−ψ) f) · exp(−2πi f·t / d)``: the reference rotated by
  ψ (counter-clockwise in x→y) then shifted by t pixels.

Every constant and every mixed int/float operand is cast to float32 explicitly: Numba types
a float literal, and float32 with an integer, as float64, which costs 2× on an H200 and
10–30× on workstation GPUs (RTX, L40).  (``tests/test_kernels_cuda.py`` reads the compiled
PTX for float64 instructions.)
"""

from __future__ import annotations

import math

import numpy as np


def sample_bilinear(grid, y, x):
    """Bilinear interpolation of a complex64 grid at float32 (y, x); 0 outside (complex64)."""
    size = grid.shape[0]
    # int(): math.floor returns a float on the CUDA target
    y0 = int(math.floor(y))
    x0 = int(math.floor(x))
    if y0 < 0 or x0 < 0 or y0 + 1 >= size or x0 + 1 >= size:
        return np.complex64(0)
    dy = y - np.float32(y0)
    dx = x - np.float32(x0)
    one = np.float32(1.0)
    top = grid[y0, x0] * (one - dx) + grid[y0, x0 + 1] * dx
    bottom = grid[y0 + 1, x0] * (one - dx) + grid[y0 + 1, x0 + 1] * dx
    return top * (one - dy) + bottom * dy


def splat_corner(y, x, size):
    """Lower corner (y0, x0) and fractions (dy, dx) of a bilinear splat at (y, x) on a
    (size, size) grid; y0 = −1 when the 2×2 footprint leaves the grid."""
    y0 = int(math.floor(y))
    x0 = int(math.floor(x))
    if y0 < 0 or x0 < 0 or y0 + 1 >= size or x0 + 1 >= size:
        return -1, -1, np.float32(0.0), np.float32(0.0)
    return y0, x0, y - np.float32(y0), x - np.float32(x0)


def reference_coords(fx, fy, cos_psi, sin_psi, pad, center):
    """Grid position (y, x) of particle frequency (fx, fy) in the reference frame: R(−ψ) f.

    All float32; ``pad`` and ``center`` (integers) are cast."""
    rx = cos_psi * fx + sin_psi * fy
    ry = -sin_psi * fx + cos_psi * fy
    return (np.float32(center) + np.float32(pad) * ry,
            np.float32(center) + np.float32(pad) * rx)


def phase_angle(fx, fy, tx, ty, box):
    """Angle (float32) of the shift phase exp(−2πi f·t / d) for a shift t in pixels."""
    return np.float32(-2.0 * math.pi) * (fx * tx + fy * ty) / np.float32(box)


def insert_best(top_s, top_i, s, q):
    """Insert score s of pose q into the best-first lists top_s, top_i (P,) if it beats the
    last entry; a tie keeps the earlier pose first (every backend offers poses in order)."""
    last = top_s.shape[0] - 1
    if s > top_s[last]:
        k = last
        while k > 0 and top_s[k - 1] < s:
            top_s[k] = top_s[k - 1]
            top_i[k] = top_i[k - 1]
            k -= 1
        top_s[k] = s
        top_i[k] = q


def parabola_offset(left, mid, right):
    """Sub-step offset (−0.5…0.5) of a parabola's peak through three equally spaced scores."""
    half = np.float32(0.5)
    curvature = left - np.float32(2.0) * mid + right
    if curvature >= np.float32(0.0):
        return np.float32(0.0)
    offset = half * (left - right) / curvature
    # explicit comparisons: the two-argument min/max do not compile for CUDA (numba #10753)
    if offset > half:
        return half
    if offset < -half:
        return -half
    return offset
