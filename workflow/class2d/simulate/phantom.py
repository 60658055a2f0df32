"""A 3D phantom made of anisotropic Gaussian blobs, and its exact projections.

    >>> phantom = make_phantom(diameter=115.2, seed=0)              # Å
    >>> images = project(phantom, rot, tilt, psi, origin_x, origin_y, box=64, apix=3.0)

A sum of 3D Gaussians projects to a sum of 2D Gaussians, so :func:`project` is exact at
any orientation: nothing is interpolated.  The Euler angles are RELION's (ZYZ; see the
package docstring for the conventions, pinned against ``relion_project``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numba
import numpy as np

logger = logging.getLogger(__name__)

#: blobs are drawn out to this many standard deviations (exp(-18) ≈ 1.5e-8 of the peak)
CUTOFF = 6.0


class Phantom(NamedTuple):
    """A density that is a sum of m 3D Gaussians, centred on its centre of mass."""

    amplitudes: np.ndarray
    """(m,) peak density of each blob (arbitrary units)"""
    centres: np.ndarray
    """(m, 3) Å, blob centres (x, y, z) in the volume frame"""
    covariances: np.ndarray
    """(m, 3, 3) Å², blob covariance matrices"""


def euler_matrix(rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` (ZYZ), vectorised: (n, 3, 3) float64.

    rot, tilt, psi: (n,) degrees.  A point ``r`` of the volume lands at ``A @ r`` in the
    frame of the projection (whose first two coordinates are the image x, y).
    """
    alpha, beta, gamma = (np.deg2rad(np.asarray(a, np.float64)) for a in (rot, tilt, psi))
    alpha, beta, gamma = np.broadcast_arrays(alpha, beta, gamma)
    ca, sa, cb, sb, cg, sg = (np.cos(alpha), np.sin(alpha), np.cos(beta), np.sin(beta),
                              np.cos(gamma), np.sin(gamma))
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    matrix = np.empty(alpha.shape + (3, 3))
    matrix[..., 0, 0] = cg * cc - sg * sa
    matrix[..., 0, 1] = cg * cs + sg * ca
    matrix[..., 0, 2] = -cg * sb
    matrix[..., 1, 0] = -sg * cc - cg * sa
    matrix[..., 1, 1] = -sg * cs + cg * ca
    matrix[..., 1, 2] = sg * sb
    matrix[..., 2, 0] = sc
    matrix[..., 2, 1] = ss
    matrix[..., 2, 2] = cb
    return matrix


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 3) uniformly random rotation matrices (QR of Gaussian matrices)."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1.0
    return q


def make_phantom(diameter: float, n_blobs: int = 40, n_domains: int = 4,
                 seed: int = 0) -> Phantom:
    """An asymmetric, protein-like blob model ``diameter`` Å across (blobs to 1.5σ).

    The blobs gather into ``n_domains`` lobes of unequal size along a bent chain, so
    that projections from different directions have clearly different outlines.
    """
    rng = np.random.default_rng(seed)
    radius = 0.5 * diameter
    # a bent chain of unit steps, each turning 50–130° from the last
    directions = [rng.standard_normal(3)]
    for _ in range(n_domains - 2):
        last = directions[-1] / np.linalg.norm(directions[-1])
        side = np.cross(last, rng.standard_normal(3))
        turn = np.deg2rad(rng.uniform(50.0, 130.0))
        directions.append(np.cos(turn) * last + np.sin(turn) * side / np.linalg.norm(side))
    steps = np.array([d / np.linalg.norm(d) for d in directions])
    domain_centres = np.vstack([np.zeros(3), np.cumsum(steps, axis=0)])[:n_domains]
    weights = rng.uniform(0.5, 1.5, n_domains)
    domain = rng.choice(n_domains, n_blobs, p=weights / weights.sum())
    spread = np.clip(rng.standard_normal((n_blobs, 3)), -2.0, 2.0) * 0.22
    centres = domain_centres[domain] + spread
    sigmas = radius * rng.uniform(0.07, 0.15, (n_blobs, 3))
    rotations = _random_rotations(rng, n_blobs)
    covariances = np.einsum("mij,mj,mkj->mik", rotations, sigmas ** 2, rotations)
    amplitudes = rng.uniform(0.5, 1.0, n_blobs)
    masses = amplitudes * np.sqrt(np.linalg.det(covariances))
    centres -= np.average(centres, axis=0, weights=masses)
    # scale the layout (not the blobs) so the farthest blob reaches `radius` at 1.5σ
    reach = 1.5 * sigmas.max(axis=1)
    scale = np.min((radius - reach) / np.maximum(np.linalg.norm(centres, axis=1), 1e-9))
    centres *= scale
    return Phantom(amplitudes, centres, covariances)


def projected_gaussians(phantom: Phantom, matrices: np.ndarray, shifts: np.ndarray,
                        apix: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2D Gaussians of the phantom projected at each orientation, in pixels.

    matrices: (n, 3, 3) from :func:`euler_matrix`; shifts: (n, 2) Å added to the image
    position of every blob.  Returns peaks (n, m) (density × voxels, the sum along z),
    centres (n, m, 2) px from the image centre, precisions (n, m, 3) px⁻² as
    (p_xx, p_xy, p_yy) of the inverse covariance.
    """
    centres = np.einsum("nij,mj->nmi", matrices[:, :2, :], phantom.centres)
    centres = (centres + shifts[:, None, :]) / apix
    cov3 = np.einsum("nij,mjk,nlk->nmil", matrices, phantom.covariances, matrices)
    cov2 = cov3[..., :2, :2]
    det2 = cov2[..., 0, 0] * cov2[..., 1, 1] - cov2[..., 0, 1] ** 2
    det3 = np.linalg.det(phantom.covariances)
    # ∫ a exp(-½ rᵀΣ⁻¹r) dz = a √(2π det Σ / det Σ₂) exp(-½ ρᵀΣ₂⁻¹ρ); per voxel: / apix
    peaks = phantom.amplitudes * np.sqrt(2.0 * np.pi * det3 / det2) / apix
    precisions = np.stack([cov2[..., 1, 1], -cov2[..., 0, 1], cov2[..., 0, 0]], axis=-1)
    precisions *= (apix * apix) / det2[..., None]
    return peaks, centres, precisions


@numba.njit(cache=True, parallel=True)
def _render(peaks, centres, precisions, box, cutoff, out):  # pragma: no cover - compiled
    half = box // 2
    for i in numba.prange(peaks.shape[0]):
        for j in range(peaks.shape[1]):
            peak = peaks[i, j]
            if peak == 0.0:
                continue
            cx = centres[i, j, 0] + half
            cy = centres[i, j, 1] + half
            pxx, pxy, pyy = precisions[i, j, 0], precisions[i, j, 1], precisions[i, j, 2]
            det = pxx * pyy - pxy * pxy
            # half-widths of the cutoff ellipse: c·√Σxx, c·√Σyy (Σ = P⁻¹)
            ex = cutoff * np.sqrt(pyy / det)
            ey = cutoff * np.sqrt(pxx / det)
            x0, x1 = max(int(np.ceil(cx - ex)), 0), min(int(np.floor(cx + ex)), box - 1)
            y0, y1 = max(int(np.ceil(cy - ey)), 0), min(int(np.floor(cy + ey)), box - 1)
            for y in range(y0, y1 + 1):
                dy = y - cy
                for x in range(x0, x1 + 1):
                    dx = x - cx
                    q = pxx * dx * dx + 2.0 * pxy * dx * dy + pyy * dy * dy
                    out[i, y, x] += peak * np.exp(-0.5 * q)


def render(peaks: np.ndarray, centres: np.ndarray, precisions: np.ndarray,
           box: int, cutoff: float = CUTOFF) -> np.ndarray:
    """Sample sums of 2D Gaussians (see :func:`projected_gaussians`) on pixel centres.

    Pixel [y, x] sits at (x − box//2, y − box//2) px from the image centre; each
    Gaussian is drawn out to ``cutoff`` standard deviations.  Returns (n, box, box) float64.
    """
    out = np.zeros((peaks.shape[0], box, box))
    _render(np.ascontiguousarray(peaks, np.float64), np.ascontiguousarray(centres, np.float64),
            np.ascontiguousarray(precisions, np.float64), int(box), float(cutoff), out)
    return out


def project(phantom: Phantom, rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray,
            origin_x: np.ndarray, origin_y: np.ndarray, box: int, apix: float,
            cutoff: float = CUTOFF) -> np.ndarray:
    """Exact projections as RELION would see them: (n, box, box) float64.

    rot, tilt, psi: (n,) degrees; origin_x, origin_y: (n,) Å (``rlnOriginXAngst/YAngst``:
    the particle's centre lies at −origin from the box centre).  Values are the sum of
    the density along z over voxels of ``apix`` Å, as ``relion_project`` gives for the
    phantom sampled on a grid.  Blobs are cut off at ``cutoff`` standard deviations.
    """
    matrices = euler_matrix(rot, tilt, psi)
    shifts = -np.stack(np.broadcast_arrays(np.asarray(origin_x, np.float64),
                                           np.asarray(origin_y, np.float64)), axis=-1)
    shifts = np.broadcast_to(shifts, (matrices.shape[0], 2))
    return render(*projected_gaussians(phantom, matrices, shifts, apix), box, cutoff)


def rasterize(phantom: Phantom, box: int, apix: float) -> np.ndarray:
    """The phantom sampled on a (box, box, box) grid, indexed [z, y, x] as MRC stores it.

    Voxel [z, y, x] sits at ((x, y, z) − box//2) · apix Å.  Returns float64.
    """
    coords = (np.arange(box) - box // 2) * apix
    z, y, x = np.meshgrid(coords, coords, coords, indexing="ij")
    grid = np.stack([x, y, z], axis=-1)
    volume = np.zeros((box, box, box))
    for amplitude, centre, covariance in zip(*phantom):
        d = grid - centre
        q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(covariance), d)
        volume += amplitude * np.exp(-0.5 * q)
    return volume
