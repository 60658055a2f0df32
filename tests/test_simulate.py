"""Tests of class2d.simulate: exact projections, RELION's conventions, truth bookkeeping."""

from __future__ import annotations

import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from class2d import io
from class2d.ctf import CTFParams, evaluate
from class2d.fourier import centered_irfft2, centered_rfft2, circular_mask, rfft_frequencies
from class2d.simulate import (JUNK_TYPES, Phantom, euler_matrix, make_phantom, project, rasterize,
                              read_truth, simulate, simulate_demo, write_dataset, write_simulated)
from class2d.simulate.imaging import Scene, coloured_noise, form_images
from class2d.simulate.layout import rotational_similarity
from class2d.simulate.phantom import projected_gaussians

BOX, APIX = 64, 3.0

needs_relion = pytest.mark.skipif(shutil.which("relion_project") is None,
                                  reason="relion_project (RELION) not on PATH")

#: (rot, tilt, psi, originX Å, originY Å): identity, ψ alone, views, origins alone, all at once
POSES = np.array([[0, 0, 0, 0, 0], [0, 0, 30, 0, 0], [40, 60, 0, 0, 0], [40, 60, -70, 0, 0],
                  [0, 0, 0, 9, 0], [0, 0, 0, 0, -6], [120, 130, 45, 7.5, -4.5],
                  [-100, 20, 170, -3, 12]], float)


@pytest.fixture(scope="module")
def demo():
    return simulate(600, snr=0.1, junk_fraction=0.15, duplicate_fraction=0.1, n_micrographs=6,
                    seed=3)


@pytest.fixture(scope="module")
def objects():
    return simulate(16 * 30, snr=0.05, n_objects=16, junk_fraction=0.0, duplicate_fraction=0.0,
                    seed=5)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def clean_from_truth(data, rows: np.ndarray, pad: int = 2) -> np.ndarray:
    """Noise-free images of good particles rebuilt from the truth table alone."""
    t = data.truth.iloc[rows]
    size = BOX * pad
    canvas = np.zeros((len(rows), size, size))
    for index, phantom in enumerate(data.phantoms):
        mine = np.flatnonzero(t["phantom"].to_numpy() == index)
        pose = t.iloc[mine]
        canvas[mine] = project(phantom, pose.rlnAngleRot, pose.rlnAngleTilt, pose.rlnAnglePsi,
                               pose.rlnOriginXAngst, pose.rlnOriginYAngst, size, APIX)
    fy, fx = rfft_frequencies(size, APIX)
    ctf = evaluate(data.table.subset(rows).ctf_params(), fx, fy, np.float64)
    full = centered_irfft2(centered_rfft2(canvas) * ctf, size) * data.scale
    start = size // 2 - BOX // 2
    return full[:, start:start + BOX, start:start + BOX]


# --- the phantom and its projections --------------------------------------------------------

def test_euler_matrix_is_zyz_rotation():
    rot, tilt, psi = 35.0, 70.0, -120.0

    def rz(a):
        c, s = np.cos(np.deg2rad(a)), np.sin(np.deg2rad(a))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    c, s = np.cos(np.deg2rad(tilt)), np.sin(np.deg2rad(tilt))
    ry = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    matrix = euler_matrix([rot], [tilt], [psi])[0]
    np.testing.assert_allclose(matrix, rz(psi) @ ry @ rz(rot), atol=1e-12)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-12)


def test_analytic_projection_matches_numeric_sum_along_z():
    """One anisotropic, tilted, off-centre Gaussian: exact 2D formula vs Σ_z of grid samples."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    covariance = q @ np.diag([4.0, 7.0, 11.0]) ** 2 @ q.T
    blob = Phantom(np.array([0.8]), np.array([[6.0, -9.0, 4.0]]), covariance[None])
    box, apix = 48, 2.0
    coords = (np.arange(box) - box // 2) * apix
    depth = (np.arange(3 * box) - 3 * box // 2) * apix      # the whole blob along z
    z, y, x = np.meshgrid(depth, coords, coords, indexing="ij")
    points = np.stack([x, y, z], axis=-1)
    precision = np.linalg.inv(covariance)
    for rot, tilt, psi in [(0, 0, 0), (30, 50, -20), (-140, 110, 75)]:
        matrix = euler_matrix([rot], [tilt], [psi])[0]
        # the projection at A is Σ_z V(Aᵀ r): sample the original density at Aᵀ r
        d = points @ matrix - blob.centres[0]
        density = 0.8 * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, precision, d))
        numeric = density.sum(axis=0)
        exact = project(blob, [rot], [tilt], [psi], [0.0], [0.0], box, apix, cutoff=9.0)[0]
        assert np.abs(exact - numeric).max() < 1e-12 * numeric.max()
        default = project(blob, [rot], [tilt], [psi], [0.0], [0.0], box, apix)[0]
        assert np.abs(default - numeric).max() < 2e-8 * numeric.max()     # cut at 6σ


def test_phantom_is_centred_and_fills_about_sixty_percent():
    phantom = make_phantom(0.6 * BOX * APIX, seed=0)
    assert 30 <= len(phantom.amplitudes) <= 60
    masses = phantom.amplitudes * np.sqrt(np.linalg.det(phantom.covariances))
    np.testing.assert_allclose(np.average(phantom.centres, axis=0, weights=masses), 0, atol=1e-9)
    views = np.array([[0, 0], [90, 90], [0, 90], [45, 135]], float)
    zero = np.zeros(len(views))
    images = project(phantom, views[:, 0], views[:, 1], zero, zero, zero, BOX, APIX)
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    radius = np.hypot(x, y)
    # where the projection is above 5% of its peak: within the 60% circle, and most of it
    extents = [radius[image > 0.05 * image.max()].max() for image in images]
    assert 0.4 * BOX / 2 < np.mean(extents) <= 0.6 * BOX / 2 + 1


# --- RELION's conventions ---------------------------------------------------------------------

def _relion_star(path, poses, **ctf_columns):
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [APIX],
                           "rlnImageSize": [BOX], "rlnImageDimensionality": [2]})
    particles = pd.DataFrame(poses, columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                                             "rlnOriginXAngst", "rlnOriginYAngst"])
    for name, values in ctf_columns.items():
        particles[name] = values
    particles["rlnOpticsGroup"] = 1
    particles["rlnImageName"] = [f"{i + 1:06d}@none.mrcs" for i in range(len(poses))]
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)


def _relion_project(tmp_path, phantom, poses, ctf: bool = False, **ctf_columns) -> np.ndarray:
    volume = tmp_path / "phantom.mrc"
    if not volume.exists():
        with mrcfile.new(volume) as mrc:
            mrc.set_data(rasterize(phantom, BOX, APIX).astype(np.float32))
            mrc.voxel_size = APIX
    _relion_star(tmp_path / "angles.star", poses, **ctf_columns)
    command = ["relion_project", "--i", str(volume), "--ang", str(tmp_path / "angles.star"),
               "--o", str(tmp_path / "proj"), "--angpix", str(APIX)] + (["--ctf"] if ctf else [])
    subprocess.run(command, check=True, capture_output=True, cwd=tmp_path)
    return mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64)


@pytest.mark.relion
@needs_relion
def test_psi_and_origin_match_relion_project(tmp_path):
    phantom = make_phantom(0.6 * BOX * APIX, seed=1)
    relion = _relion_project(tmp_path, phantom, POSES)
    ours = project(phantom, *POSES.T, BOX, APIX)
    psi_negated = project(phantom, *(POSES * [1, 1, -1, 1, 1]).T, BOX, APIX)
    origin_negated = project(phantom, *(POSES * [1, 1, 1, -1, -1]).T, BOX, APIX)
    # the transposed (inverse) rotation: the other way of reading ZYZ angles
    inverse = project(phantom, *(POSES[:, [2, 1, 0, 3, 4]] * [-1, -1, -1, 1, 1]).T, BOX, APIX)
    for i, (rot, tilt, psi, ox, oy) in enumerate(POSES):
        assert correlation(relion[i], ours[i]) > 0.999, POSES[i]
        # measured with RELION 3.1.3: ψ negated 0.57–0.92, origin negated 0.27–0.71,
        # inverse rotation 0.65–0.94, against > 0.99996 for ours
        if psi:
            assert correlation(relion[i], psi_negated[i]) < 0.97, POSES[i]
        if ox or oy:
            assert correlation(relion[i], origin_negated[i]) < 0.8, POSES[i]
        if tilt:
            assert correlation(relion[i], inverse[i]) < 0.97, POSES[i]
    # same scale too: relion's projection is the sum along z (gridding adds ~2%)
    assert 0.95 < relion.sum() / ours.sum() < 1.05


@pytest.mark.relion
@needs_relion
def test_ctf_matches_relion_project(tmp_path):
    """Small blobs (wide spectrum) and strong astigmatism: the defocus angle's sense shows."""
    centres = np.array([[0.0, 0.0, 0.0], [20.0, -10.0, 5.0], [-15.0, 25.0, -10.0]])
    phantom = Phantom(np.ones(3), centres, np.tile(np.eye(3) * (1.2 * APIX) ** 2, (3, 1, 1)))
    poses = np.repeat(POSES[[6]], 3, axis=0)
    columns = {"rlnDefocusU": [9000.0, 18000.0, 24000.0], "rlnDefocusV": [5000.0, 12000.0, 21000.0],
               "rlnDefocusAngle": [30.0, -60.0, 45.0]}
    relion = _relion_project(tmp_path, phantom, poses, ctf=True, **columns)
    matrices = euler_matrix(*poses[:, :3].T)
    gaussians = projected_gaussians(phantom, matrices, -poses[:, 3:], APIX)
    scene = Scene(*gaussians, np.zeros((3, 4)))

    def ours(sign: float = 1.0, angle_sign: float = 1.0) -> np.ndarray:
        params = CTFParams(np.array(columns["rlnDefocusU"]), np.array(columns["rlnDefocusV"]),
                           angle_sign * np.array(columns["rlnDefocusAngle"]), 300.0, 2.7, 0.1)
        return sign * form_images(scene, params, BOX, APIX, pad=1)

    same, flipped, mirrored = ours(), ours(-1.0), ours(angle_sign=-1.0)
    for i in range(3):
        assert correlation(relion[i], same[i]) > 0.999
        assert correlation(relion[i], flipped[i]) < -0.999
        assert correlation(relion[i], mirrored[i]) < 0.95


@pytest.mark.relion
@needs_relion
def test_simulated_images_are_what_relion_projects_from_the_truth(tmp_path):
    """End to end: truth poses + particles.star CTF through relion_project --ctf = clean."""
    data = simulate(12, snr=0.1, junk_fraction=0.0, duplicate_fraction=0.0, n_micrographs=3,
                    seed=2, ctf_pad=1)
    poses = data.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                        "rlnOriginYAngst"]].to_numpy()
    ctf = {name: data.table.particles[name].to_numpy()
           for name in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")}
    relion = _relion_project(tmp_path, data.phantoms[0], poses, ctf=True, **ctf)
    for i in range(data.table.n):
        assert correlation(relion[i], data.clean[i]) > 0.9999


# --- the simulated dataset --------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = simulate(100, seed=11, n_micrographs=4)
    b = simulate(100, seed=11, n_micrographs=4)
    c = simulate(100, seed=12, n_micrographs=4)
    assert a.images.tobytes() == b.images.tobytes()
    pd.testing.assert_frame_equal(a.truth, b.truth)
    pd.testing.assert_frame_equal(a.table.particles, b.table.particles)
    assert a.images.tobytes() != c.images.tobytes()
    write_dataset(a, tmp_path / "a")
    write_dataset(b, tmp_path / "b")
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("snr", [0.1, 0.05])
def test_measured_snr_matches_request(snr):
    data = simulate(300, snr=snr, junk_fraction=0.1, duplicate_fraction=0.05, n_micrographs=4,
                    seed=7)
    good = np.flatnonzero(data.truth["junk"] == "")
    clean = clean_from_truth(data, good)
    np.testing.assert_allclose(data.clean[good], clean, atol=1e-4 * np.abs(clean).max())
    noise = data.images[good] - clean
    measured = np.var(clean.reshape(len(good), -1), axis=1).mean() / noise.var()
    assert abs(measured / snr - 1) < 0.1
    assert abs(noise.std() - 1) < 0.01 and abs(noise.mean()) < 0.01


def test_coloured_noise_has_unit_variance_and_the_requested_spectrum():
    """Drawn in the box itself (pad 1, periodic) the power per ring follows the formula; cut
    from a larger canvas (the default) the box edge's leakage flattens the fall, as in a
    box extracted from a denoised micrograph."""
    rng = np.random.default_rng(0)
    box, apix, corner = 64, 3.0, 100.0
    fy, fx = rfft_frequencies(box, apix)
    f = np.hypot(fx, fy)
    law = (1 + (f * corner) ** 2) ** -3.0 + 1e-6
    rings = [(f >= lo) & (f < lo + 0.01) for lo in (0.02, 0.04, 0.08, 0.13)]
    drops = {}
    for pad in (1, 4):
        noise = coloured_noise(rng, 200, box, apix, exponent=6.0, corner_A=corner, floor=1e-6,
                               pad=pad)
        assert abs(noise.var() - 1) < 0.05 and abs(noise.mean()) < 0.05
        power = (np.abs(centered_rfft2(noise)) ** 2).mean(axis=0)
        ratio = np.array([power[ring].mean() / law[ring].mean() for ring in rings])
        drops[pad] = power[rings[1]].mean() / power[rings[3]].mean()
        if pad == 1:
            np.testing.assert_allclose(ratio / ratio.mean(), 1.0, atol=0.1)
    want = law[rings[1]].mean() / law[rings[3]].mean()          # about 100
    assert drops[1] == pytest.approx(want, rel=0.1)
    assert drops[4] < want / 3


def test_neighbours_add_density_outside_the_particle_only():
    base = {"n_particles": 40, "n_objects": 4, "junk_fraction": 0.0, "duplicate_fraction": 0.0,
            "seed": 2}
    alone, crowded = simulate(**base), simulate(**base, neighbours=2)
    np.testing.assert_array_equal(alone.truth, crowded.truth)
    np.testing.assert_array_equal(simulate(**base).images, alone.images)
    # neighbours' centres lie 0.8–1.3 diameters (0.48–0.78 box) away: their density fills
    # the box's rim and stays out of its middle
    rim, middle = circular_mask(BOX, 0.4 * BOX) < 0.5, circular_mask(BOX, 0.1 * BOX) > 0.5
    extra = np.abs(crowded.clean - alone.clean)
    assert extra[:, rim].mean() > 5 * extra[:, middle].mean()
    assert (extra[:, rim].max(axis=1) > 0.1 * np.abs(alone.clean).max()).mean() > 0.5


def test_truth_angles_and_origins_reproduce_images(demo):
    """truth's pose and origin, through project + CTF, give the particle's noise-free image."""
    good = np.flatnonzero(demo.truth["junk"] == "")[:40]
    clean = clean_from_truth(demo, good)
    for row, image in zip(good, clean):
        assert correlation(demo.clean[row], image) > 0.9999


def test_duplicates_share_true_centre_and_lie_6_to_15_angstrom_away(demo):
    truth, particles = demo.truth, demo.table.particles
    mic_apix = float(demo.table.optics["rlnMicrographPixelSize"].iloc[0])
    coords = particles[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    origins = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    centres = coords - origins / mic_apix          # RELION 3.1 re-extraction
    np.testing.assert_allclose(centres, truth[["centre_x", "centre_y"]], atol=1e-9)
    dup = np.flatnonzero(truth["duplicate_of"] >= 0)
    orig = truth["duplicate_of"].to_numpy()[dup]
    assert len(dup) == 60 and np.all(truth["duplicate_of"].to_numpy()[orig] == -1)
    np.testing.assert_allclose(centres[dup], centres[orig], atol=1e-9)
    distance = np.hypot(*(coords[dup] - coords[orig]).T) * mic_apix
    assert distance.min() >= 6.0 and distance.max() <= 15.0
    for column in ("rlnMicrographName", "rlnDefocusU"):
        assert np.array_equal(particles[column].to_numpy()[dup], particles[column].to_numpy()[orig])
    for column in ("true_class", "junk", "rlnAnglePsi"):
        pd.testing.assert_series_equal(truth[column].iloc[dup].reset_index(drop=True),
                                       truth[column].iloc[orig].reset_index(drop=True))
    # distinct particles: coordinates and true centres ≥ 40 Å apart on each micrograph
    first = truth["duplicate_of"].to_numpy() < 0
    for mic in np.unique(truth["micrograph"]):
        rows = np.flatnonzero(first & (truth["micrograph"].to_numpy() == mic))
        for points in (coords[rows], centres[rows]):
            d = np.hypot(*(points[:, None] - points[None]).transpose(2, 0, 1)) * mic_apix
            assert d[~np.eye(len(rows), dtype=bool)].min() >= 40.0
    # the second pick's image is the same particle moved by the change of origin
    for d_row, o_row in zip(dup[:10], orig[:10]):
        if truth["junk"].iloc[d_row] != "":
            continue
        shift = (origins[o_row] - origins[d_row]) / APIX
        spectrum = centered_rfft2(demo.clean[o_row].astype(np.float64))
        fy, fx = rfft_frequencies(BOX)
        moved = centered_irfft2(spectrum * np.exp(-2j * np.pi * (fx * shift[0] + fy * shift[1])), BOX)
        inner = slice(12, BOX - 12)
        assert correlation(moved[inner, inner], demo.clean[d_row][inner, inner]) > 0.99


def test_junk_fraction_and_kinds(demo):
    truth = demo.truth
    first = truth["duplicate_of"] < 0
    counts = truth.loc[first, "junk"].value_counts()
    n_first = int(first.sum())
    assert n_first == 540 and counts[""] == 540 - round(0.15 * 540)
    assert sorted(counts.drop("").index) == sorted(JUNK_TYPES)
    assert counts.drop("").max() - counts.drop("").min() <= 1
    junk = truth["junk"] != ""
    assert np.all(truth.loc[junk, "true_class"] == -1) and truth.loc[junk, "rlnAngleRot"].isna().all()
    assert not truth.loc[~junk, ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].isna().any().any()
    energy = np.var(demo.clean.reshape(len(truth), -1), axis=1)
    good_energy = np.median(energy[~junk])
    assert np.all(energy[truth["junk"] == "noise"] == 0)
    assert np.median(energy[truth["junk"] == "edge"]) > 2 * good_energy
    # aggregates: an object crosses the box edge; good particles keep clear of it
    border = np.ones((BOX, BOX), bool)
    border[4:-4, 4:-4] = False
    reach = np.abs(demo.clean[:, border]).mean(axis=1) / np.abs(demo.clean).mean(axis=(1, 2)).clip(1e-12)
    assert np.median(reach[truth["junk"] == "aggregate"]) > 1.5 * np.median(reach[~junk])
    scores = demo.table.particles["rlnAutopickFigureOfMerit"]
    assert scores[truth["junk"] == "noise"].mean() < scores[~junk].mean()


def test_discrete_objects_balanced_and_distinct(objects):
    truth = objects.truth
    assert np.array_equal(np.bincount(truth["true_class"]), np.full(16, 30))
    per_class = truth.groupby("true_class")[["rlnAngleRot", "rlnAngleTilt"]].nunique()
    assert (per_class == 1).all().all()
    assert truth["rlnAnglePsi"].std() > 90        # uniform over ±180°
    psis = np.arange(0.0, 360.0, 5.0)
    refs = objects.references.astype(np.float64)
    views = truth.groupby("true_class")[["rlnAngleRot", "rlnAngleTilt"]].first().to_numpy()
    zero = np.zeros(len(psis))
    assert np.array_equal(truth["phantom"], truth["true_class"]) and len(objects.phantoms) == 16
    rotated = np.stack([project(phantom, zero + rot, zero + tilt, psis, zero, zero, BOX, APIX)
                        for phantom, (rot, tilt) in zip(objects.phantoms, views)])
    np.testing.assert_allclose(rotated[:, 0] * objects.scale, refs, atol=1e-5 * refs.max())
    similarity = rotational_similarity(refs, rotated)
    assert np.max(similarity - 2 * np.eye(16)) < 0.95


def test_random_views_cover_the_sphere_and_label_nearest_reference(demo):
    truth = demo.truth[demo.truth["junk"] == ""]
    cos_tilt = np.cos(np.deg2rad(truth["rlnAngleTilt"]))
    assert abs(cos_tilt.mean()) < 0.1 and abs(np.var(cos_tilt) - 1 / 3) < 0.05
    assert truth["true_class"].nunique() == len(demo.references) == 16


def test_written_dataset_reads_back(demo, tmp_path):
    star = write_dataset(demo, tmp_path / "out")
    assert star == str(tmp_path / "out" / "particles.star")
    table = io.read_particles(star)
    assert table.n == demo.table.n
    np.testing.assert_array_equal(io.read_images(table), demo.images)
    for column in ("rlnCoordinateX", "rlnDefocusU", "rlnAutopickFigureOfMerit"):
        np.testing.assert_array_equal(table.particles[column], demo.table.particles[column])
    assert table.particles["rlnImageName"].iloc[0] == "000001@particles.mrcs"
    np.testing.assert_array_equal(table.pixel_size(), APIX)
    np.testing.assert_array_equal(table.box_size(), BOX)
    pd.testing.assert_frame_equal(read_truth(tmp_path / "out" / "truth.star"), demo.truth)
    with mrcfile.open(tmp_path / "out" / "references.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, demo.references)
        assert mrc.voxel_size.x == pytest.approx(APIX)
    assert mrcfile.validate(str(tmp_path / "out" / "particles.mrcs"), print_file=open(os.devnull, "w"))
    with pytest.raises(FileExistsError):
        write_dataset(demo, tmp_path / "out")
    write_dataset(demo, tmp_path / "out", overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["particles.star", "particles.mrcs", "references.mrcs", "truth.star"])


def test_simulate_demo_as_the_workflow_calls_it(tmp_path):
    """rules/demo.smk passes config["demo"]: n_objects 0 means random views."""
    star = simulate_demo(tmp_path / "demo", seed=0, n_particles=60, box=32, apix=6.0, snr=0.1,
                         n_objects=0, junk_fraction=0.0, duplicate_fraction=0.0)
    table = io.read_particles(star)
    truth = read_truth(tmp_path / "demo" / "truth.star")
    assert table.n == len(truth) == 60 and (truth["junk"] == "").all()
    assert (truth["phantom"] == 0).all() and truth["true_class"].between(0, 15).all()
    assert io.read_images(table).shape == (60, 32, 32)
    simulate_demo(tmp_path / "demo", seed=0, n_particles=60, box=32, apix=6.0)   # overwrites


# --- large sets, written in chunks --------------------------------------------------------------

CHUNKED = dict(n_particles=300, box=32, apix=6.0, seed=3, n_micrographs=4, junk_fraction=0.2,
               duplicate_fraction=0.1)


def test_written_in_chunks_same_bytes_whatever_the_chunk(tmp_path):
    """write_simulated with chunks of 7 (not dividing 300) and of 1000 (one chunk) writes
    the very files write_dataset(simulate(...)) writes from memory."""
    data = simulate(**CHUNKED)
    write_dataset(data, tmp_path / "memory")
    for chunk in (7, 1000):
        star = write_simulated(tmp_path / f"chunk{chunk}", chunk=chunk, **CHUNKED)
        assert star == str(tmp_path / f"chunk{chunk}" / "particles.star")
        for name in sorted(os.listdir(tmp_path / "memory")):
            assert ((tmp_path / "memory" / name).read_bytes()
                    == (tmp_path / f"chunk{chunk}" / name).read_bytes()), (chunk, name)
    # and the images are the simulated ones, with a header mrcfile accepts
    table = io.read_particles(tmp_path / "chunk7" / "particles.star")
    np.testing.assert_array_equal(io.read_images(table), data.images)
    with mrcfile.open(tmp_path / "chunk7" / "particles.mrcs") as mrc:
        assert mrc.header.dmean == pytest.approx(float(data.images.mean()), rel=1e-5)
        assert mrc.header.rms == pytest.approx(float(data.images.std()), rel=1e-5)
        assert mrc.header.dmax == data.images.max() and mrc.header.dmin == data.images.min()
    assert mrcfile.validate(str(tmp_path / "chunk7" / "particles.mrcs"),
                            print_file=open(os.devnull, "w"))


def test_crowded_coloured_set_written_in_chunks_has_the_simulated_images(tmp_path):
    """Coloured noise and neighbours stream too: chunks of 7 give simulate()'s images."""
    options = {**CHUNKED, "n_particles": 60, "noise_exponent": 6.0, "noise_floor": 1e-6,
               "neighbours": 2}
    data = simulate(**options)
    table = io.read_particles(write_simulated(tmp_path / "chunks", chunk=7, **options))
    np.testing.assert_array_equal(io.read_images(table), data.images)


def test_written_in_chunks_memory_does_not_grow_with_the_set(tmp_path):
    """Peak traced memory of 3,000 particles vs 500 (chunks of 16): it grows by far less than
    the 41 MB the extra images take (measured: 61 vs 79 MB, both set by the planning)."""
    import tracemalloc

    peaks = {}
    for n in (500, 3000):
        tracemalloc.start()
        write_simulated(tmp_path / str(n), chunk=16, n_particles=n, box=64, apix=3.0,
                        n_micrographs=n // 50, seed=1)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    extra_images = (3000 - 500) * 64 * 64 * 4
    assert peaks[3000] < peaks[500] + 0.2 * extra_images, peaks
