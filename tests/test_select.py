"""Class selection: list, thresholds, the automatic rule on simulated junk, the selection page."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import NamedTuple

import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage, special

from class2d import io
from class2d.ctf import evaluate
from class2d.errors import ConfigError, InputError
from class2d.fourier import (centered_irfft2, centered_rfft2, circular_mask, frc, frc_resolution,
                             rfft_frequencies)
from class2d.io import read_classes
from class2d.select import class_features, select_classes, summarize
from class2d.simulate import simulate, write_dataset

#: junk classes made per junk type
JUNK_CLASSES = 2


class Classified(NamedTuple):
    classes_star: str
    particles_star: str
    truth: pd.DataFrame
    junk_class: dict          # class number → junk type
    particles: pd.DataFrame   # as written to particles.star


def _phase_flip(images: np.ndarray, table: io.ParticleTable, apix: float) -> np.ndarray:
    fy, fx = rfft_frequencies(images.shape[-1], apix)
    signs = np.sign(evaluate(table.ctf_params(), fx, fy))
    return centered_irfft2(centered_rfft2(images) * signs, images.shape[-1]).astype(np.float32)


def _align(image: np.ndarray, psi: float, shift_x: float, shift_y: float) -> np.ndarray:
    """The image turned back to its reference: out(p) = image(R(−ψ)·p − shift) (px, x/y)."""
    centre = image.shape[-1] // 2
    theta = np.deg2rad(-psi)
    cos, sin = np.cos(theta), np.sin(theta)
    matrix = np.array([[cos, sin], [-sin, cos]])          # R(θ) on (y, x) index order
    offset = centre - matrix @ [centre, centre] - np.array([shift_y, shift_x])
    return ndimage.affine_transform(image, matrix, offset=offset, order=1)


def _rotational_average(images: np.ndarray, init: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Align images to a reference over in-plane rotations (10° steps), re-average: a tiny
    classifier."""
    angles = np.arange(0.0, 360.0, 10.0)
    reference = init
    for _ in range(iterations):
        turned = np.stack([_align(reference, -a, 0, 0) for a in angles]).reshape(len(angles), -1)
        best = angles[np.argmax(images.reshape(len(images), -1) @ turned.T, axis=1)]
        aligned = np.stack([_align(image, a, 0, 0) for image, a in zip(images, best)])
        reference = aligned.mean(axis=0)
    return aligned


def make_classified(tmp_path, noisy: bool, n: int = 2000, snr: float = 0.02, seed: int = 3,
                    contamination: float = 0.1) -> Classified:
    """What the classify stage would write for a simulated set with junk.

    Good classes: the true classes, aligned with the true poses; junk: each type split into
    ``JUNK_CLASSES`` classes and aligned by a small rotational search; ``contamination`` of
    the noise picks hide in good classes.  Averages of phase-flipped images (noisy or clean),
    masked as the classifier masks; resolution from half-set FRC (0.143).
    """
    data = simulate(n, box=64, apix=3.0, snr=snr, n_objects=8, junk_fraction=0.3,
                    duplicate_fraction=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    sim_dir = tmp_path / "sim"
    write_dataset(data, sim_dir)
    apix, box, truth = 3.0, 64, data.truth
    images = _phase_flip(data.images if noisy else data.clean, data.table, apix)
    classes = truth["true_class"].to_numpy() + 1
    n_good = classes.max()
    junk_class = {}
    for j, kind in enumerate(("noise", "edge", "aggregate")):
        rows = np.flatnonzero(truth["junk"] == kind)
        first = n_good + 1 + j * JUNK_CLASSES
        classes[rows] = first + rng.integers(0, JUNK_CLASSES, len(rows))
        junk_class.update({first + m: kind for m in range(JUNK_CLASSES)})
    noise = np.flatnonzero(truth["junk"] == "noise")
    hidden = rng.choice(noise, int(contamination * len(noise)), replace=False)
    classes[hidden] = rng.integers(1, n_good + 1, len(hidden))
    psi = np.nan_to_num(truth["rlnAnglePsi"].to_numpy())
    shifts = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix
    aligned = np.stack([_align(image, a, *s) for image, a, s in zip(images, psi, shifts)])
    clean = _phase_flip(data.clean, data.table, apix)
    averages, resolution = [], []
    for k in range(1, classes.max() + 1):
        rows = np.flatnonzero(classes == k)
        members = aligned[rows]
        if junk_class.get(k) in ("edge", "aggregate"):
            strongest = rows[np.argmax(clean[rows].std(axis=(1, 2)))]
            members = _rotational_average(members, _align(clean[strongest], 0, *shifts[strongest]))
        averages.append(members.mean(axis=0))
        curve = frc(members[::2].mean(axis=0), members[1::2].mean(axis=0))
        resolution.append(frc_resolution(curve, box, apix, 0.143))
    averages = np.stack(averages) * circular_mask(box, 0.45 * box, 0.05 * box)
    counts = np.bincount(classes, minlength=len(averages) + 1)[1:]

    out = tmp_path / "classify"
    out.mkdir()
    io.write_stack(out / "classes.mrcs", averages, apix)
    starfile.write({"classes": pd.DataFrame({
        "rlnReferenceImage": [f"{k}@classes.mrcs" for k in range(1, len(averages) + 1)],
        "rlnClassNumber": np.arange(1, len(averages) + 1),
        "rlnClassDistribution": counts / counts.sum(),
        "rlnEstimatedResolution": resolution,
        "rlnImagePixelSize": apix, "c2dParticleCount": counts,
        # posteriors and ECA carry no information here: the rule must work from the images
        "c2dMeanPosterior": rng.uniform(0.5, 0.9, len(averages)),
        "c2dEffectiveClasses": rng.uniform(1.0, 2.0, len(averages)),
    })}, out / "classes.star", overwrite=True)
    table = dataclasses.replace(data.table, base_dir=str(sim_dir)).with_columns(
        rlnClassNumber=classes, rlnAnglePsi=np.nan_to_num(psi),
        rlnOriginXAngst=truth["rlnOriginXAngst"].to_numpy(),
        rlnOriginYAngst=truth["rlnOriginYAngst"].to_numpy(),
        rlnMaxValueProbDistribution=rng.uniform(0.3, 1.0, n),
        c2dAlignmentError=rng.uniform(0.5, 1.5, n))
    io.write_particles(table, out / "particles.star")
    io.write_particles(table, out / "particles.cs")
    return Classified(str(out / "classes.star"), str(out / "particles.star"), truth, junk_class,
                      table.particles)


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory):
    return make_classified(tmp_path_factory.mktemp("noisy"), noisy=True)


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    return make_classified(tmp_path_factory.mktemp("clean"), noisy=False)


def _rates(classified: Classified, out_dir) -> tuple[float, float]:
    """(share of junk particles rejected, share of good particles kept) by image name."""
    kept = set(io.read_particles(out_dir / "particles.star").particles["rlnImageName"].str
               .split("@").str[0].astype(int))
    junk = classified.truth["junk"].to_numpy() != ""
    rows_kept = np.isin(np.arange(1, len(junk) + 1), list(kept))
    return float(np.mean(~rows_kept[junk])), float(np.mean(rows_kept[~junk]))


@pytest.mark.parametrize("which", ["clean_set", "noisy_set"])
def test_automatic_rule_rejects_junk_keeps_good(which, request, tmp_path):
    classified = request.getfixturevalue(which)
    paths = select_classes(classified.classes_star, classified.particles_star, tmp_path)
    rejected, kept = _rates(classified, tmp_path)
    assert rejected >= 0.9 and kept >= 0.9, (which, rejected, kept)
    selected = starfile.read(paths["classes.star"])["rlnClassNumber"].tolist()
    assert not set(selected) & set(classified.junk_class), selected


def _check_outputs(paths: dict, out_dir) -> None:
    """Every file is there and readable by class2d.io, starfile and mrcfile."""
    for name in ("particles.star", "particles.cs", "rejected.star", "rejected.cs", "classes.mrcs",
                 "classes.star", "selection.html"):
        assert os.path.isfile(paths[name]) and paths[name] == str(out_dir / name)
    assert mrcfile.validate(paths["classes.mrcs"])
    for stem in ("particles", "rejected"):
        star = starfile.read(paths[f"{stem}.star"], always_dict=True)["particles"]
        cs = np.load(paths[f"{stem}.cs"])
        assert len(star) == len(cs)
        if len(star):
            table = io.read_particles(paths[f"{stem}.star"])
            assert table.n == io.read_particles(paths[f"{stem}.cs"]).n == len(star)


def test_list_mode_writes_selected_classes_with_original_numbers(noisy_set, tmp_path):
    paths = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path,
                           mode="list", classes=[2, 5, 11])
    _check_outputs(paths, tmp_path)
    chosen = read_classes(paths["classes.star"])
    original = read_classes(noisy_set.classes_star)
    assert chosen.table["rlnClassNumber"].tolist() == [2, 5, 11]
    assert chosen.table["rlnReferenceImage"].tolist() == ["1@classes.mrcs", "2@classes.mrcs",
                                                          "3@classes.mrcs"]
    np.testing.assert_array_equal(chosen.images, original.images[[1, 4, 10]])
    assert chosen.apix == original.apix == pytest.approx(mrcfile.open(paths["classes.mrcs"])
                                                         .voxel_size.x)
    kept = io.read_particles(paths["particles.star"]).particles
    np.testing.assert_array_equal(io.read_particles(paths["particles.cs"]).particles[
        "rlnClassNumber"], kept["rlnClassNumber"])
    rejected = io.read_particles(paths["rejected.star"]).particles
    assert set(kept["rlnClassNumber"]) == {2, 5, 11}
    assert not set(rejected["rlnClassNumber"]) & {2, 5, 11}
    assert len(kept) + len(rejected) == len(noisy_set.particles)
    # every input column is carried through; images still point at the simulated stack
    assert set(noisy_set.particles.columns) <= set(kept.columns)
    assert io.read_images(io.read_particles(paths["particles.star"]), rows=[0]).shape == (1, 64, 64)


def test_thresholds_mode(noisy_set, tmp_path):
    paths = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path,
                           mode="thresholds", min_particles=150, max_resolution_A=60.0)
    selected = starfile.read(paths["classes.star"])["rlnClassNumber"].tolist()
    assert selected == list(range(1, 9))       # 8 good classes of ~175; junk ~100
    paths = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path,
                           mode="thresholds", max_resolution_A=60.0)
    assert 9 not in starfile.read(paths["classes.star"])["rlnClassNumber"].tolist()


def test_selection_file_overrides_mode_and_all_selected(noisy_set, tmp_path):
    selection = tmp_path / "selection.json"
    everything = list(range(1, 15))
    selection.write_text(json.dumps({"selected": everything}))
    paths = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "out",
                           mode="list", classes=[1], selection_file=selection)
    _check_outputs(paths, tmp_path / "out")
    assert starfile.read(paths["classes.star"])["rlnClassNumber"].tolist() == everything
    assert len(np.load(paths["rejected.cs"])) == 0
    assert "alignments2D/class" in np.load(paths["rejected.cs"]).dtype.names
    # a selection file that does not exist (yet) leaves the mode in charge
    paths = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "out",
                           mode="list", classes=[1], selection_file=tmp_path / "missing.json")
    assert starfile.read(paths["classes.star"])["rlnClassNumber"].tolist() == [1]


def test_bad_inputs(noisy_set, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a selection file"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "a",
                       selection_file=bad)
    with pytest.raises(ConfigError, match=r"config select\.classes: class 99 does not exist "
                                          r"\(the classes are 1–14\)"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "b",
                       mode="list", classes=[1, 99])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"selected": [2, 15]}))
    with pytest.raises(InputError, match="unknown.json: class 15 does not exist"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "b",
                       selection_file=unknown)
    with pytest.raises(InputError, match="no class selected"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "c",
                       mode="thresholds", min_particles=10 ** 6)
    assert (tmp_path / "c" / "selection.html").is_file()   # the page still shows why
    with pytest.raises(InputError, match="classes.star: file not found"):
        select_classes(tmp_path / "classes.star", noisy_set.particles_star, tmp_path / "d")


def test_thresholds_on_missing_statistics(noisy_set, tmp_path):
    blocks = starfile.read(noisy_set.classes_star, always_dict=True)
    frame = blocks["classes"].drop(columns=["c2dEffectiveClasses"])
    starfile.write({"classes": frame}, tmp_path / "classes.star")
    shutil.copy(os.path.join(os.path.dirname(noisy_set.classes_star), "classes.mrcs"), tmp_path)
    with pytest.raises(InputError, match="no c2dEffectiveClasses"):
        select_classes(tmp_path / "classes.star", noisy_set.particles_star, tmp_path / "o",
                       mode="thresholds", max_eca=1.5)


def test_reads_relion_model_star_without_class_numbers(tmp_path):
    images = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    io.write_stack(tmp_path / "run_it025_classes.mrcs", images, 2.5)
    starfile.write({"model_classes": pd.DataFrame({
        "rlnReferenceImage": [f"{k:06d}@run_it025_classes.mrcs" for k in (1, 2, 3)],
        "rlnClassDistribution": [0.5, 0.3, 0.2], "rlnEstimatedResolution": [8.0, 9.0, 30.0]})},
        tmp_path / "run_it025_model.star")
    classes = read_classes(tmp_path / "run_it025_model.star")
    assert classes.table["rlnClassNumber"].tolist() == [1, 2, 3]
    assert classes.apix == pytest.approx(2.5)
    np.testing.assert_array_equal(classes.images, images)


def test_features_of_simple_shapes():
    box = 64
    y, x = np.mgrid[:box, :box] - box // 2
    blob = np.exp(-(x ** 2 + y ** 2) / (2 * 6.0 ** 2))
    shifted = np.exp(-((x - 20) ** 2 + y ** 2) / (2 * 6.0 ** 2))
    step = (x > 3).astype(float)
    features = class_features(np.stack([blob, shifted, step, np.zeros((box, box))]), 3.0)
    assert features["edge_ratio"][0] < 0.01 < 0.2 < features["edge_ratio"][1]
    assert features["offcentre"][1] > 0.1 > features["offcentre"][0]
    assert features["edge_ratio"][2] > 1 and features["contrast"][3] == 0


def _browser():
    """A headless Chromium driven by Playwright, or a skip naming what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    return sync_api, executable


@pytest.mark.chromium
def test_selection_page_in_a_browser(noisy_set, tmp_path):
    sync_api, executable = _browser()
    first = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "auto",
                           selection_file=tmp_path / "selection.json")
    automatic = starfile.read(first["classes.star"])["rlnClassNumber"].tolist()
    page_path = first["selection.html"]
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=args)
        page = browser.new_context(accept_downloads=True).new_page()
        page.goto("file://" + os.path.abspath(page_path))
        ticked = sorted(int(card.get_attribute("data-number"))
                        for card in page.query_selector_all(".card.selected"))
        assert ticked == automatic
        assert page.locator(".card img").count() == 14
        assert page.locator("#card-3 img").evaluate("img => img.naturalWidth") == 64
        page.click("#card-3 img")                     # untick class 3
        assert not page.is_checked("#class-3")
        with page.expect_download() as download_info:
            page.click("#save")
        download = download_info.value
        assert download.suggested_filename == "selection.json"
        download.save_as(tmp_path / "selection.json")
        browser.close()
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["selected"] == [n for n in automatic if n != 3]
    second = select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "user",
                            selection_file=tmp_path / "selection.json")
    assert starfile.read(second["classes.star"])["rlnClassNumber"].tolist() == saved["selected"]
    kept = io.read_particles(second["particles.star"]).particles["rlnClassNumber"]
    assert 3 not in set(kept) and set(kept) == set(saved["selected"])


def test_bad_settings_name_their_config_key(noisy_set, tmp_path):
    with pytest.raises(ConfigError, match=r"^config select\.mode: must be one of auto, list, "
                                          r"thresholds, got 'best'"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "out",
                       mode="best")
    with pytest.raises(ConfigError, match=r"^config select\.classes: mode 'list' needs"):
        select_classes(noisy_set.classes_star, noisy_set.particles_star, tmp_path / "out",
                       mode="list", classes=[])


def _edge_contaminated(tmp_path, n_edges_in_good: int = 40):
    """What the classify stage would write when a good class took up edge picks: class 1
    holds object 0's particles and ``n_edges_in_good`` images of a bright straight edge at
    the mask's rim (z-score 12: they do not fit), its average object 0 plus their share of
    the edge; class 2 object 1 (clean); class 3 an edge across the disc alone (z-scores
    |N(0, 1)|, three at 8), its average that edge.  Particles at SNR 0.5 with their true
    poses; the edges are CTF-modulated with the first particles' CTFs and get the
    particles' noise."""
    data = simulate(240, box=64, apix=3.0, snr=0.5, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=21)
    folder = tmp_path / "sim"
    write_dataset(data, folder)
    rng = np.random.default_rng(21)
    truth = data.truth
    classes = truth["true_class"].to_numpy() + 1
    table = dataclasses.replace(data.table, base_dir=str(folder)).with_columns(
        rlnClassNumber=classes, rlnAnglePsi=truth["rlnAnglePsi"].to_numpy(),
        rlnOriginXAngst=truth["rlnOriginXAngst"].to_numpy(),
        rlnOriginYAngst=truth["rlnOriginYAngst"].to_numpy(),
        rlnParticleSelectZScore=np.abs(rng.normal(size=len(classes))))
    y, x = np.mgrid[:64, :64] - 32
    height = 5 * data.references.std()
    rim, across = (height / 2 * (1 + special.erf((x - at) / 2.0)) for at in (22, 8))
    n_edges = n_edges_in_good + 50
    donors = np.arange(n_edges) % len(classes)
    fy, fx = rfft_frequencies(64, 3.0)
    ctf = evaluate(table.subset(donors).ctf_params(), fx, fy)
    noise = data.images[:, :8, :].std()
    scenes = np.stack([rim] * n_edges_in_good + [across] * 50)
    edges = np.fft.irfft2(np.fft.rfft2(scenes) * ctf, s=(64, 64)) \
        + rng.normal(0.0, noise, (n_edges, 64, 64))
    io.write_stack(folder / "edges.mrcs", edges.astype(np.float32), 3.0)
    rows = table.particles.iloc[donors].copy()
    rows["rlnImageName"] = [f"{k + 1}@edges.mrcs" for k in range(n_edges)]
    rows["rlnClassNumber"] = np.r_[np.ones(n_edges_in_good, int), np.full(50, 3)]
    rows["rlnAnglePsi"] = rows["rlnOriginXAngst"] = rows["rlnOriginYAngst"] = 0.0
    z = np.abs(rng.normal(size=n_edges))
    z[:n_edges_in_good], z[n_edges_in_good:n_edges_in_good + 3] = 12.0, 8.0
    rows["rlnParticleSelectZScore"] = z
    starfile.write({"optics": table.optics,
                    "particles": pd.concat([table.particles, rows], ignore_index=True)},
                   folder / "particles.star", overwrite=True)
    share = n_edges_in_good / (n_edges_in_good + (classes == 1).sum())
    mask = circular_mask(64, 0.45 * 64, 0.05 * 64)
    averages = np.stack([data.references[0] * (1 - share) + share * rim, data.references[1],
                         across]) * mask
    out = tmp_path / "classify"
    out.mkdir()
    io.write_stack(out / "classes.mrcs", averages.astype(np.float32), 3.0)
    starfile.write({"classes": pd.DataFrame({
        "rlnReferenceImage": [f"{k}@classes.mrcs" for k in (1, 2, 3)],
        "rlnClassNumber": [1, 2, 3], "rlnImagePixelSize": 3.0})}, out / "classes.star",
        overwrite=True)
    return str(out / "classes.star"), str(folder / "particles.star"), len(classes)


def test_a_good_class_that_took_up_edges_is_kept_without_them(tmp_path):
    """Class 1's average shows the edge (edge ratio above the rule's 0.2), but the average of
    its particles that fit, made from their images, does not: it is kept, its edges are not;
    the class of edges alone stays rejected, its three outliers or not."""
    classes_star, particles_star, n_good = _edge_contaminated(tmp_path)
    summary = summarize(read_classes(classes_star), io.read_particles(particles_star))
    assert summary["reasons"].tolist()[0] == "signal at the mask edge"
    assert set(summary["reasons"].tolist()[2].split(", ")) <= {"signal at the mask edge",
                                                               "off-centre"}
    assert not summary["auto"][0] and summary["auto"][1] and not summary["auto"][2]
    paths = select_classes(classes_star, particles_star, tmp_path / "select")
    assert starfile.read(paths["classes.star"])["rlnClassNumber"].tolist() == [1, 2]
    kept = io.read_particles(paths["particles.star"]).particles["rlnImageName"]
    assert not kept.str.endswith("@edges.mrcs").any()
    assert kept.size >= 0.97 * n_good
    # without per-particle z-scores the class cannot be judged without its edges
    paths = select_classes(classes_star, particles_star, tmp_path / "plain",
                           max_particle_zscore=None)
    assert starfile.read(paths["classes.star"])["rlnClassNumber"].tolist() == [2]
