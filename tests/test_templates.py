"""Picker templates: resampling, centring, contrast, files; real picking with relion_autopick."""

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
from class2d.errors import ConfigError, InputError
from class2d.fourier import rfft_frequencies
from class2d.simulate import make_phantom, project
from class2d.templates import export_templates, resample

#: micrograph for the picking test: Å/px, px, particles, particle diameter Å
MIC_APIX, MIC_SIZE, N_PARTICLES, DIAMETER = 2.0, 1024, 20, 150.0
#: views (rot, tilt) of the simulated particles, one template each
VIEWS = np.array([[20.0, 40.0], [100.0, 90.0], [-60.0, 150.0]])
DEFOCUS = (12000.0, 11500.0, 30.0)


def _write_classes(directory, images: np.ndarray, apix: float) -> str:
    os.makedirs(directory, exist_ok=True)
    io.write_stack(os.path.join(directory, "classes.mrcs"), images.astype(np.float32), apix)
    path = os.path.join(directory, "classes.star")
    starfile.write({"classes": pd.DataFrame({
        "rlnReferenceImage": [f"{k}@classes.mrcs" for k in range(1, len(images) + 1)],
        "rlnClassNumber": np.arange(1, len(images) + 1) * 10,
        "rlnImagePixelSize": apix})}, path, overwrite=True)
    return path


def _blob(box: int, sigma: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[:box, :box] - box // 2
    return np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))


def _moments(image: np.ndarray) -> tuple[float, float, float]:
    """Centre of mass (x, y) from the box centre and radius of gyration, px, of |image|."""
    box = image.shape[-1]
    y, x = np.mgrid[:box, :box] - box // 2
    mass = np.abs(image)
    cx, cy = (mass * x).sum() / mass.sum(), (mass * y).sum() / mass.sum()
    return cx, cy, np.sqrt((mass * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / mass.sum())


@pytest.mark.parametrize("apix, new_apix", [(3.0, 3.0), (4.0, 2.0), (3.0, 1.1), (2.0, 3.3)])
def test_resample_keeps_the_field_of_view_and_hits_the_pixel_size(apix, new_apix):
    box = 64
    images = _blob(box, 4.0)[None]
    out, out_apix = resample(images, apix, new_apix)
    assert out_apix == pytest.approx(new_apix, rel=1e-4)
    assert out.shape[-1] * out_apix >= box * apix - 1e-6            # at least the same field
    # the blob keeps its size in Å (σ = 4 px at apix → radius of gyration √2·σ)
    assert _moments(out[0])[2] * out_apix == pytest.approx(np.sqrt(2) * 4.0 * apix, rel=0.02)


def test_lowpass_removes_high_frequencies():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((1, 64, 64))
    out, _ = resample(images, 2.0, 2.0, lowpass_A=20.0)
    fy, fx = rfft_frequencies(out.shape[-1], 2.0)
    power = np.abs(np.fft.rfft2(out[0])) ** 2
    frequency = np.hypot(fy, fx)
    # half amplitude at 20 Å, nothing beyond the 2-Fourier-pixel edge (1/17.3 Å⁻¹ here)
    assert power[frequency > 1 / 17].max() < 1e-20 * power.max()
    assert power[(frequency > 1 / 40) & (frequency < 1 / 25)].mean() > 0.1


@pytest.mark.parametrize("contrast, sign, blob_sign", [("dark", -1, -1), ("light", 1, 1),
                                                       ("keep", -1, 1)])
def test_contrast_centring_and_files(tmp_path, contrast, sign, blob_sign):
    # a white blob off-centre, and a dark one ("keep" leaves each as it is)
    averages = np.stack([_blob(64, 4.0, 6.0, -3.0), -_blob(64, 5.0), np.zeros((64, 64))])
    star = _write_classes(tmp_path / "classes", averages, 3.0)
    paths = export_templates(star, tmp_path / "out", lowpass_A=15.0, picker_apix=1.5,
                             picker_box=160, contrast=contrast)
    assert mrcfile.validate(paths["templates.mrcs"])
    with mrcfile.open(paths["templates.mrcs"]) as mrc:
        templates = mrc.data.copy()
        assert mrc.voxel_size.x == pytest.approx(1.5)
    assert templates.shape == (2, 160, 160)                          # the empty class is skipped
    first_sign = np.sign(templates[0, 80, 80])
    assert first_sign == (sign if contrast != "keep" else 1)
    assert np.sign(templates[1, 80, 80]) == (sign if contrast != "keep" else -1)
    cx, cy, _ = _moments(templates[0])
    assert abs(cx) < 0.5 and abs(cy) < 0.5                          # re-centred
    table = starfile.read(paths["templates.star"])
    assert table["rlnClassNumber"].tolist() == [10, 20]
    assert table["rlnImagePixelSize"].tolist() == [1.5, 1.5]
    number, stack = table["rlnReferenceImage"][1].split("@")
    assert number == "2" and os.path.isabs(stack) and os.path.samefile(stack,
                                                                     paths["templates.mrcs"])
    cs = io.read_particles(paths["templates.cs"])
    assert cs.n == 2 and cs.box_size().tolist() == [160, 160]
    assert cs.particles["rlnClassNumber"].tolist() == [10, 20]
    assert io.read_images(cs).shape == (2, 160, 160)
    raw = np.load(paths["templates.cs"])
    assert raw["blob/sign"][0] == blob_sign


def test_select_classes_and_bad_input(tmp_path):
    star = _write_classes(tmp_path / "classes", np.stack([_blob(32, 3.0)] * 3), 3.0)
    paths = export_templates(star, tmp_path / "out", classes=[20, 30])
    assert starfile.read(paths["templates.star"])["rlnClassNumber"].tolist() == [20, 30]
    with pytest.raises(ConfigError, match=r"config templates\.classes: class 40 is not in "
                                          r".*classes\.star \(its classes: 10, 20, 30\)"):
        export_templates(star, tmp_path / "out", classes=[40])
    with pytest.raises(ValueError, match="contrast"):
        export_templates(star, tmp_path / "out", contrast="white")
    with pytest.raises(ValueError, match="picker_box"):
        export_templates(star, tmp_path / "out", picker_box=33)
    zero = _write_classes(tmp_path / "zero", np.zeros((2, 32, 32)), 3.0)
    with pytest.raises(InputError, match="no non-empty class average"):
        export_templates(zero, tmp_path / "out")


def _micrograph(directory, seed: int = 0) -> np.ndarray:
    """A 1024² micrograph (dark particles, CTF, noise) with particles at known centres."""
    rng = np.random.default_rng(seed)
    phantom = make_phantom(DIAMETER, seed=3)
    centres: list[np.ndarray] = []
    while len(centres) < N_PARTICLES:
        centre = rng.uniform(100, MIC_SIZE - 100, 2)
        if all(np.hypot(*(centre - other)) > 130 for other in centres):
            centres.append(centre)
    box = 128
    scene = np.zeros((MIC_SIZE, MIC_SIZE))
    for (x, y), view, psi in zip(centres, rng.integers(0, len(VIEWS), N_PARTICLES),
                                 rng.uniform(0, 360, N_PARTICLES)):
        ix, iy = int(round(x)), int(round(y))
        scene[iy - box // 2:iy + box // 2, ix - box // 2:ix + box // 2] += project(
            phantom, [VIEWS[view, 0]], [VIEWS[view, 1]], [psi], [-(x - ix) * MIC_APIX],
            [-(y - iy) * MIC_APIX], box, MIC_APIX)[0]
    fy, fx = rfft_frequencies(MIC_SIZE, MIC_APIX)
    ctf = evaluate(CTFParams(*([v] for v in DEFOCUS), [300.0], [2.7], [0.1]), fx, fy)[0]
    scene = np.fft.irfft2(np.fft.rfft2(scene) * ctf, s=scene.shape)
    noise_sd = np.sqrt(scene[scene != 0].var() / 0.1)
    micrograph = -scene / noise_sd + rng.standard_normal(scene.shape)   # particles dark
    os.makedirs(directory / "Micrographs")
    io.write_stack(directory / "Micrographs" / "mic_001.mrc", micrograph, MIC_APIX)
    starfile.write({
        "optics": pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
                                "rlnMicrographPixelSize": [MIC_APIX], "rlnVoltage": [300.0],
                                "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}),
        "micrographs": pd.DataFrame({"rlnMicrographName": ["Micrographs/mic_001.mrc"],
                                     "rlnOpticsGroup": [1], "rlnDefocusU": [DEFOCUS[0]],
                                     "rlnDefocusV": [DEFOCUS[1]], "rlnDefocusAngle": [DEFOCUS[2]],
                                     "rlnCtfMaxResolution": [5.0]})},
        directory / "micrographs.star", overwrite=True)
    # the classes: noise-free projections of each view, at twice the micrograph pixel size
    projections = project(phantom, VIEWS[:, 0], VIEWS[:, 1], np.zeros(len(VIEWS)),
                          np.zeros(len(VIEWS)), np.zeros(len(VIEWS)), 64, 2 * MIC_APIX)
    _write_classes(directory / "classes", projections, 2 * MIC_APIX)
    return np.array(centres)


@pytest.mark.relion
@pytest.mark.parametrize("contrast, invert, works", [("dark", [], True),
                                                     ("light", ["--invert"], True),
                                                     ("dark", ["--invert"], False)])
def test_relion_autopick_finds_the_particles(tmp_path, contrast, invert, works):
    """Dark templates as they are, light ones with --invert; the wrong pairing fails."""
    if shutil.which("relion_autopick") is None:
        pytest.skip("relion_autopick not on PATH (RELION not installed)")
    centres = _micrograph(tmp_path)
    paths = export_templates(tmp_path / "classes" / "classes.star", tmp_path / "templates",
                             lowpass_A=20.0, picker_apix=MIC_APIX, contrast=contrast)
    command = ["relion_autopick", "--i", "micrographs.star", "--odir", "AutoPick/",
               "--pickname", "autopick", "--ref", paths["templates.star"], "--ctf",
               "--lowpass", "20", "--particle_diameter", "200", "--ang", "10", "--shrink", "0",
               "--threshold", "0.25", "--min_distance", "150", *invert]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    picks = starfile.read(tmp_path / "AutoPick" / "Micrographs" / "mic_001_autopick.star",
                          always_dict=True)
    picks = next(iter(picks.values()))
    found = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(np.float64).reshape(-1, 2)
    distance = np.full((len(centres), 1), np.inf)
    if len(found):
        distance = np.hypot(*(centres[:, None, :] - found[None]).transpose(2, 0, 1)) * MIC_APIX
    hits = (distance.min(axis=1) < 20.0).mean()
    if works:
        assert hits >= 0.8, np.round(distance.min(axis=1), 1)
        assert len(found) <= 1.5 * N_PARTICLES                       # and not much else
    else:
        assert hits < 0.5


def test_bad_settings_name_their_config_key(tmp_path):
    star = _write_classes(tmp_path / "classes", np.stack([_blob(32, 3.0)] * 2), 3.0)
    for setting, key in ((dict(contrast="white"), "contrast"),
                         (dict(picker_apix=-1.0), "picker_apix"),
                         (dict(picker_box=33), "picker_box")):
        with pytest.raises(ConfigError, match=rf"^config templates\.{key}: must be"):
            export_templates(star, tmp_path / "out", **setting)
    assert not (tmp_path / "out").exists()
