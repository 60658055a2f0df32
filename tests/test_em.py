"""E-step and M-step consistency on exact synthetic data (no noise, known poses).

Particles are drawn by the simulator's exact Gaussian projection (``simulate.project``:
nothing interpolated, conventions pinned against ``relion_project`` in test_simulate.py),
not by the E-step's own rotation and phase code, and their poses are given as RELION
writes them; what the E-step finds is converted with ``export.relion_pose``.  So a ψ or
shift sign error in the E-step, or in the conversion, fails here.
"""

import numpy as np
import pytest

from class2d.ctf import CTFParams
from class2d.em import mstep
from class2d.em.estep import BatchData, Entries, score_batch
from class2d.em.export import relion_pose
from class2d.em.grids import FrequencySet, PoseGrid
from class2d.em.passes import accumulate, locate
from class2d.em.params import ClassifyParams
from class2d.fourier import centered_rfft2
from class2d.kernels import cpu
from class2d.simulate import Phantom, project

BOX, PAD = 48, 2
#: Å/px of the synthetic particles (not 1, so that Å and px cannot be confused)
APIX = 1.5


def blob_objects(seed: int = 5) -> list[Phantom]:
    """Four flat objects of five round blobs each (centres within ±10 px, σ 1.5–3 px): as
    different at low resolution as a test of class pruning needs."""
    rng = np.random.default_rng(seed)
    objects = []
    for _ in range(4):
        centres = np.column_stack([rng.uniform(-10, 10, (5, 2)), np.zeros(5)]) * APIX
        sigmas = rng.uniform(1.5, 3, 5) * APIX
        objects.append(Phantom(np.ones(5), centres, sigmas[:, None, None] ** 2 * np.eye(3)))
    return objects


#: one object per class
PHANTOMS = blob_objects()


def draw(classes, psi_deg, origins_A):
    """Images of the classes' objects at RELION poses (rlnAnglePsi degrees, (n, 2)
    rlnOriginX/YAngst): (n, d, d) float64, exact."""
    return np.stack([project(PHANTOMS[k], [0.0], [0.0], [psi], [ox], [oy], BOX, APIX)[0]
                     for k, psi, (ox, oy) in zip(classes, psi_deg, origins_A)])


@pytest.fixture(scope="module")
def references():
    """The four objects at ψ = 0, centred (K, d, d) float32."""
    return draw(range(4), np.zeros(4), np.zeros((4, 2))).astype(np.float32)


def particles(classes, psi_deg, origins_A, defocus=15000.0):
    """Spectra (n, d, d//2+1) complex64 of the classes drawn at RELION poses, no CTF."""
    spectra = centered_rfft2(draw(classes, psi_deg, origins_A)).astype(np.complex64)
    n = len(classes)
    ctf = CTFParams(*(np.full(n, v) for v in (defocus, defocus, 0.0, 300.0, 2.7, 0.1)))
    return spectra, ctf


def noisy_batch(seed: int, max_origin_px: float, n: int = 24):
    """n particles of the four classes in turn at random ψ and origins within
    ±``max_origin_px``, in complex white noise at SNR 0.1 on the coefficients within 20
    Fourier px, as a BatchData with CTF 1 and the true noise power: (data, classes,
    origins Å)."""
    freqs = FrequencySet.within(BOX, 20)
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % 4
    psi = rng.uniform(-180, 180, n)
    origins = rng.uniform(-max_origin_px, max_origin_px, (n, 2)) * APIX
    spectra, ctf = particles(classes, psi, origins)
    noise = rng.standard_normal(spectra.shape) + 1j * rng.standard_normal(spectra.shape)
    power = np.mean(np.abs(spectra[:, freqs.iy, freqs.ix]) ** 2)
    spectra = (spectra + np.sqrt(5 * power) * noise).astype(np.complex64)      # SNR 0.1
    data = BatchData.build(spectra, ctf, np.ones(n, np.float32), freqs, np.full(25, 10 * power),
                           APIX)
    data.ctf[:] = 1.0           # the spectra carry no CTF
    return data, classes, origins


def test_scoring_finds_class_rotation_and_subpixel_shift(references):
    """The best class and pose, written as RELION writes them, are the simulator's: ψ to
    2°, origins to 0.15 px, with ψ of both signs and sub-pixel origins of both signs.

    Measured errors: ψ 0.01–1.4° (the same on a 5° grid: each parabola refines one axis
    at the grid's best value of the others, and a shift 0.3 px off the grid on blobs 10 px
    from the centre moves the best ψ there by ~1.5°), origins ≤ 0.1 px.  A wrong sign of
    ψ is off by 2ψ (24–200° here), of an origin by 2–5 px."""
    freqs = FrequencySet.within(BOX, 18)
    classes = np.array([2, 0, 3, 1])
    psi = np.array([-31.0, 100.0, 250.0, 12.0])                     # rlnAnglePsi, degrees
    origins = np.array([[2.3, -1.0], [0.0, 2.6], [-1.7, -2.0], [1.2, 0.4]]) * APIX
    spectra, ctf = particles(classes, psi, origins)
    data = BatchData.build(spectra, ctf, np.ones(4, np.float32), freqs, np.ones(25), APIX)
    data.ctf[:] = 1.0          # the spectra above carry no CTF
    poses = PoseGrid.make(10.0, 9, 1.0)
    scores = score_batch(cpu, data, mstep.reference_grids(references, PAD), poses,
                         np.zeros(4), 1.0, 1, True)
    np.testing.assert_array_equal(scores.best_class, classes)
    for i, k in enumerate(classes):
        found = poses.pose(scores.top_i[i, k, 0], scores.refine[i, k])
        angle, ox, oy = relion_pose(*(np.atleast_1d(v) for v in found), APIX)
        assert np.mod(angle[0] - psi[i] + 180, 360) - 180 == pytest.approx(0, abs=2.0)
        assert (ox[0], oy[0]) == (pytest.approx(origins[i, 0], abs=0.15 * APIX),
                                  pytest.approx(origins[i, 1], abs=0.15 * APIX))


def test_class_pruning_prepass_keeps_the_posteriors(references):
    """Noisy particles (SNR 0.1) of four classes: scoring the full resolution only for the
    classes a low-resolution prepass keeps gives the posteriors of scoring every class, to
    1e-4, while most (particle, class) pairs are skipped."""
    data, classes, _ = noisy_batch(3, 2.0)
    freqs, n = data.freqs, classes.size
    poses = PoseGrid.make(10.0, 5, 1.0)
    grids = mstep.reference_grids(references, PAD)
    prepass = np.flatnonzero(freqs.radius <= 10)
    every = score_batch(cpu, data, grids, poses, np.zeros(4), 1.0, 4, False)
    pruned = score_batch(cpu, data, grids, poses, np.zeros(4), 1.0, 4, False, prepass, 20.0)
    np.testing.assert_allclose(pruned.gamma, every.gamma, atol=1e-4)
    np.testing.assert_array_equal(pruned.best_class, classes)
    scored = pruned.top_i[:, :, 0] >= 0
    assert scored.sum() < 0.5 * scored.size
    assert np.all(pruned.gamma[~scored] == 0)
    dense = n * 4 * poses.size * 4.0 * freqs.size
    assert every.flops == dense and pruned.flops < 0.5 * dense


def test_back_insertion_at_the_true_poses_rebuilds_the_class(references):
    freqs = FrequencySet.within(BOX, BOX / 2)
    rng = np.random.default_rng(0)
    n = 40
    psi = rng.uniform(0, 2 * np.pi, n)                          # internal ψ and t px
    shifts = rng.uniform(-3, 3, (n, 2))
    # drawn at RELION's pose of each: rlnAnglePsi = −ψ, origin = −t · apix (export.py)
    spectra, ctf = particles(np.ones(n, int), -np.degrees(psi), -shifts * APIX)
    data = BatchData.build(spectra, ctf, np.ones(n, np.float32), freqs, np.ones(25), APIX)
    # the particles carry no CTF: insert them as if CTF = 1
    data.ctf[:] = 1.0
    entries = Entries.build(np.arange(n), np.ones(n, int), psi, shifts[:, 0], shifts[:, 1],
                            np.ones(n), 4)
    grids = mstep.reference_grids(references, PAD)
    stats = accumulate(cpu, data, entries, grids, PAD, 25, np.arange(n) % 2)
    assert stats.counts.tolist() == [0, n, 0, 0]
    rebuilt = mstep.reconstruct(stats.num.sum(1), stats.den.sum(1), np.full((4, 25), 1e9),
                                PAD, BOX, 1.0)
    # everything but the DC term (not inserted) is recovered
    truth = references[1] - references[1].mean()
    rebuilt = rebuilt[1] - rebuilt[1].mean()
    assert np.corrcoef(truth.ravel(), rebuilt.ravel())[0, 1] > 0.995
    # the noise residuals at the true poses are ~0 relative to the signal power
    signal = np.bincount(freqs.shell, (np.abs(data.x) ** 2).sum(0).astype(float), 25)
    assert stats.noise_sum[2:20].sum() < 1e-3 * signal[2:20].sum()


def test_default_pose_grid_shrinks_at_low_resolution():
    params = ClassifyParams(n_classes=10)
    fine = params.psi_step(6.0, 64, 3.0), params.shift_grid(6.0, 64, 3.0)
    coarse = params.psi_step(30.0, 64, 3.0), params.shift_grid(30.0, 64, 3.0)
    assert coarse[0] > fine[0] and coarse[1][0] < fine[1][0]
    assert params.resolution_at(1) == pytest.approx(25.0)
    assert params.resolution_at(15) == pytest.approx(6.0)


def test_vertical_alignment_turns_a_rod_upright_and_keeps_images_consistent():
    from class2d.em.export import align_vertically
    from class2d.fourier import rotate_images

    box = 48
    y, x = np.mgrid[:box, :box] - box // 2
    rod = np.exp(-(x ** 2) / 8 - (y ** 2) / 200).astype(np.float32)       # vertical rod
    tilted = rotate_images(rod, -35.0)[None]
    turned, psi = align_vertically(tilted, np.array([0.4]), np.array([0]))
    assert np.corrcoef(turned[0].ravel(), rod.ravel())[0, 1] > 0.98
    # a particle = class rotated by ψ; the same particle = turned class rotated by ψ'
    particle = rotate_images(tilted[0], np.degrees(0.4))
    again = rotate_images(turned[0], np.degrees(psi[0]))
    assert np.corrcoef(particle.ravel(), again.ravel())[0, 1] > 0.98


def test_locating_new_particles_finds_the_exhaustive_search_pose(references):
    """Particles not seen before (SNR 0.1, shifts up to ±6 px) are located at a quarter
    of the radius (6 of 20 Fourier px, as ``make_context`` sets it) on the coarser grid
    (``passes.locate``), then searched locally at full resolution around the shift found.
    That finds the classes of the exhaustive search over every shift at full resolution,
    and shifts as close to the simulator's, for a tenth of its products.  Measured: located
    within 1.32 px of the truth (the local search reaches ±2 px); final shift errors
    0.48 px on average (exhaustive 0.52), at most 1.03 (1.54); 10 % of the products.  A
    sign error in the located shift puts particles 3–12 px off."""
    data, classes, origins = noisy_batch(11, 6.0)
    freqs, n = data.freqs, classes.size
    grids = mstep.reference_grids(references, PAD)
    poses, local = PoseGrid.make(10.0, 17, 1.0), PoseGrid.make(10.0, 5, 1.0)
    truth = -origins / APIX                                         # internal shifts, px
    rows = np.arange(n)

    def error(scores, grid, moved=0.0):
        _, tx, ty = grid.pose(scores.top_i[rows, classes, 0], scores.refine[rows, classes])
        return np.abs(np.stack([tx, ty], axis=1) + moved - truth).max(axis=1)

    every = score_batch(cpu, data, grids, poses, np.zeros(4), 1.0, 1, True)
    found, locate_flops = locate(cpu, data, grids, poses, np.flatnonzero(freqs.radius <= 6),
                                 np.zeros(4), 1.0, True)
    assert np.abs(found - truth).max() < 1.5
    near = score_batch(cpu, data.shifted(found), grids, local, np.zeros(4), 1.0, 1, True)
    np.testing.assert_array_equal(every.best_class, classes)
    np.testing.assert_array_equal(near.best_class, classes)
    located, exhaustive = error(near, local, found), error(every, poses)
    assert located.mean() < exhaustive.mean() + 0.05
    assert located.max() < exhaustive.max() + 0.1
    assert locate_flops + near.flops < 0.15 * every.flops


@pytest.mark.parametrize("box", [48, 49])
def test_spectra_shifted_back_match_a_float64_phase_table(box):
    # a spectrum moved back by t equals the spectrum of the image moved by −t: the kernel's
    # per-row and per-column tables against exp(2πi f·t/d) in float64, and against the
    # spectra of the images themselves shifted in real space
    from class2d.fourier import shift_images

    freqs = FrequencySet.within(box, box / 2)
    rng = np.random.default_rng(6)
    images = rng.normal(size=(30, box, box))
    shifts = rng.uniform(-6, 6, (30, 2)).astype(np.float32).astype(np.float64)
    x = freqs.take(np.fft.rfft2(images))
    exact = x.astype(np.complex128) * np.exp(
        2j * np.pi * (np.outer(shifts[:, 0], freqs.fx.astype(np.float64))
                      + np.outer(shifts[:, 1], freqs.fy.astype(np.float64))) / box)
    moved = freqs.shifted_back(x, shifts)
    assert moved.dtype == np.complex64
    np.testing.assert_allclose(moved, exact, rtol=0, atol=1e-6 * np.abs(x).max())
    # (a real image keeps only the real part of its self-conjugate Nyquist coefficients:
    # those are left out)
    inside = freqs.radius < box // 2
    back = freqs.take(np.fft.rfft2(shift_images(images, -shifts)))
    np.testing.assert_allclose(moved[:, inside], back[:, inside], rtol=0,
                               atol=1e-5 * np.abs(x).max())
