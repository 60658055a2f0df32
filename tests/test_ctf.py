"""CTF against an independent float64 formula and the analytic positions of its zeros."""

import numpy as np
import pytest

from class2d import ctf, fourier


def reference_ctf(du, dv, angle_deg, kv, cs_mm, q0, phase_deg, bfac, fx, fy):
    """Textbook CTF written out separately, in float64 (Å, kV, mm, degrees)."""
    volts = kv * 1000.0
    lam = 12.2643247 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    s2 = fx ** 2 + fy ** 2
    az = np.arctan2(fy, fx)
    defocus = (du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (az - np.radians(angle_deg)))
    gamma = (np.pi * lam * defocus * s2 - np.pi / 2 * cs_mm * 1e7 * lam ** 3 * s2 ** 2
             + np.radians(phase_deg))
    w = np.arcsin(q0)  # sin(w) = Q0: amplitude contrast as a phase
    return np.sin(gamma + w) * np.exp(-bfac * s2 / 4)


def test_matches_independent_formula_on_random_parameters():
    rng = np.random.default_rng(1)
    n = 6
    p = dict(du=rng.uniform(5000, 30000, n), dv=rng.uniform(5000, 30000, n),
             angle_deg=rng.uniform(-90, 90, n), kv=rng.choice([200.0, 300.0], n),
             cs_mm=rng.uniform(0, 3, n), q0=rng.uniform(0.05, 0.2, n),
             phase_deg=rng.uniform(0, 90, n), bfac=rng.uniform(0, 100, n))
    fy, fx = fourier.rfft_frequencies(48, apix=1.7)
    ours = ctf.evaluate(ctf.CTFParams(p["du"], p["dv"], p["angle_deg"], p["kv"], p["cs_mm"],
                                      p["q0"], p["phase_deg"], p["bfac"]), fx, fy,
                        dtype=np.float64)
    expected = np.stack([reference_ctf(*(v[i] for v in p.values()), fx, fy) for i in range(n)])
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    # float32 (the E-step's): its sine taken of the phase brought within ±π, where χ
    # reaches hundreds of radians (3.5 µm at 1 Å/px Nyquist); as close as float32 can hold
    deep = dict(p, du=np.full(n, 35000.0), dv=np.full(n, 33000.0))
    fy, fx = fourier.rfft_frequencies(64, apix=1.0)
    single = ctf.evaluate(ctf.CTFParams(*deep.values()), fx, fy)
    expected = np.stack([reference_ctf(*(v[i] for v in deep.values()), fx, fy)
                         for i in range(n)])
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=0, atol=3e-7)


def test_zeros_where_the_phase_is_a_multiple_of_pi():
    """Without Cs, astigmatism or amplitude contrast, CTF = sin(π λ Δf s²): zeros at s² = n/(λΔf)."""
    defocus = 20000.0
    lam = ctf.wavelength(300.0)
    s_zero = np.sqrt(np.arange(1, 6) / (lam * defocus))
    params = ctf.CTFParams([defocus], [defocus], [0.0], [300.0], [0.0], [0.0])
    on_zero = ctf.evaluate(params, s_zero, np.zeros_like(s_zero), dtype=np.float64)[0]
    np.testing.assert_allclose(on_zero, 0.0, atol=1e-9)
    between = np.sqrt((np.arange(1, 6) - 0.5) / (lam * defocus))
    peaks = ctf.evaluate(params, between, np.zeros_like(between), dtype=np.float64)[0]
    np.testing.assert_allclose(np.abs(peaks), 1.0, atol=1e-9)


def test_astigmatism_follows_the_defocus_angle():
    """Along the U axis the CTF is that of defocus U, along the V axis that of defocus V."""
    du, dv, angle = 25000.0, 15000.0, 30.0
    s = 0.05
    a = np.radians(angle)
    params = ctf.CTFParams([du], [dv], [angle], [300.0], [2.7], [0.1])
    along_u = ctf.evaluate(params, s * np.cos(a), s * np.sin(a), dtype=np.float64)[0]
    along_v = ctf.evaluate(params, -s * np.sin(a), s * np.cos(a), dtype=np.float64)[0]
    for value, defocus in ((along_u, du), (along_v, dv)):
        expected = reference_ctf(defocus, defocus, 0, 300.0, 2.7, 0.1, 0, 0, s, 0.0)
        assert value == pytest.approx(expected, abs=1e-12)


def test_wavelength_at_300_kv():
    assert ctf.wavelength(300.0) == pytest.approx(0.019687, abs=1e-6)
