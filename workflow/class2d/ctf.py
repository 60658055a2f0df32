"""Contrast transfer function in RELION's (and CryoSPARC's) convention, vectorised over particles.

    >>> params = CTFParams(defocus_u=[15000.], defocus_v=[14000.], defocus_angle=[30.],
    ...                    voltage=[300.], cs=[2.7], amplitude_contrast=[0.1])
    >>> fy, fx = fourier.rfft_frequencies(64, apix=1.5)      # 1/Å
    >>> ctf = evaluate(params, fx, fy)                       # (1, 64, 33) float32

CTF(s) = scale · exp(−B s²/4) · sin(χ(s)),
χ(s) = π λ Δf(φ) s² − (π/2) Cs λ³ s⁴ + phase_shift + atan(Q₀ / √(1 − Q₀²)),
Δf(φ) = ½ (ΔU + ΔV) + ½ (ΔU − ΔV) cos 2(φ − φ_ast),
with λ the relativistic electron wavelength.  This is RELION's ``CTF::getCTF`` (positive
at low frequency, under-focus positive) and CryoSPARC's ``ctf/*`` fields hold the same
quantities (converted by ``class2d.io.cs``).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)


class CTFParams(NamedTuple):
    """Per-particle CTF parameters; every field is (n,) float64 or broadcastable to it."""

    defocus_u: np.ndarray
    """Å, defocus along the major axis (positive = under-focus)"""
    defocus_v: np.ndarray
    """Å, defocus along the minor axis"""
    defocus_angle: np.ndarray
    """degrees, angle of the U axis from x"""
    voltage: np.ndarray
    """kV, acceleration voltage"""
    cs: np.ndarray
    """mm, spherical aberration"""
    amplitude_contrast: np.ndarray
    """fraction Q₀ (0–1)"""
    phase_shift: np.ndarray = 0.0
    """degrees, phase-plate shift"""
    bfactor: np.ndarray = 0.0
    """Å², envelope B-factor"""
    scale: np.ndarray = 1.0
    """dimensionless overall scale"""

    def take(self, rows: np.ndarray) -> "CTFParams":
        """The parameters of the given particles."""
        return CTFParams(*(np.broadcast_to(np.asarray(v, np.float64), np.shape(self.defocus_u))[rows]
                           for v in self))


def wavelength(voltage_kv: np.ndarray) -> np.ndarray:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    volts = np.asarray(voltage_kv, np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def evaluate(params: CTFParams, fx: np.ndarray, fy: np.ndarray,
             dtype=np.float32) -> np.ndarray:
    """CTF of every particle at the frequencies (fx, fy).

    fx, fy: frequencies in 1/Å, any equal shape S (or broadcastable)
    returns: (n, *S) of ``dtype``
    """
    fx = np.asarray(fx, np.float64)
    fy = np.asarray(fy, np.float64)
    fx, fy = np.broadcast_arrays(fx, fy)
    n = np.shape(np.asarray(params.defocus_u))[0]
    expand = (slice(None),) + (None,) * fx.ndim

    def per_particle(value) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, np.float64), (n,))[expand]

    lam = wavelength(per_particle(params.voltage))
    cs_a = per_particle(params.cs) * 1e7
    q0 = per_particle(params.amplitude_contrast)
    s2 = fx * fx + fy * fy
    # cos 2(θ − φ) = cos 2θ cos 2φ + sin 2θ sin 2φ: trigonometry per frequency and per
    # particle, not per pair
    theta = 2.0 * np.arctan2(fy, fx)
    phi = 2.0 * np.deg2rad(per_particle(params.defocus_angle))
    du, dv = per_particle(params.defocus_u), per_particle(params.defocus_v)
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * (np.cos(theta) * np.cos(phi)
                                                   + np.sin(theta) * np.sin(phi))
    chi = (np.pi * lam * defocus * s2 - 0.5 * np.pi * cs_a * lam ** 3 * s2 * s2
           + np.deg2rad(per_particle(params.phase_shift))
           + np.arctan2(q0, np.sqrt(1.0 - q0 * q0)))   # amplitude contrast 1 (no CTF): π/2
    if np.dtype(dtype) == np.float32:
        # χ brought within ±π in float64, its sine in float32: within 2·10⁻⁷ of the float64
        # sine, at a thirtieth of its cost (NumPy's float32 sine is vectorised)
        chi = (chi - 2.0 * np.pi * np.rint(chi / (2.0 * np.pi))).astype(np.float32)
    ctf = np.sin(chi) * per_particle(params.scale)
    bfac = per_particle(params.bfactor)
    if np.any(bfac != 0):
        ctf = ctf * np.exp(-bfac * s2 / 4.0)
    return ctf.astype(dtype, copy=False)
