"""Classification quality against ground truth from class2d.simulate.

16 distinct objects × 150 particles at SNR 0.05 plus 240 junk picks (pure noise, ice or
carbon edges), classified into 20 classes: adjusted Rand index ≥ 0.90 on the good
particles, a median deviation of the in-plane angle error within a class ≤ 2°, origins
right once rotated into the class frame, ≥ 72 % of the junk in classes that are mostly junk,
and no class of one object claiming a resolution its average does not reach against it.

Every threshold is a requirement that the construction met on each of 9 runs (data seeds
11–13 × classifier seeds 0–2, bench/RESULTS.md "thresholds of the quality test"), with
the margin those runs showed; the test runs data seed 11, classifier seed 0.

Two-particle aggregates are left out of the junk here: each holds a whole good particle,
and the classifier (like RELION's and CryoSPARC's) puts most of them with that particle's
class; the selection stage is where they are caught.
"""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import starfile

from class2d import io
from class2d.classify import classify_all
from class2d.fourier import frc, frc_resolution
from class2d.metrics import (adjusted_rand, circular_sd_deg, median_angle_deviation_deg,
                             origin_spread, purity)
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset
from class2d.truth import best_match

#: CryoSPARC's advice for small, low-SNR particles: more online-EM iterations (30, not 20);
#: everything else at its default (force max over poses, twin classes merged, ``em.twins``)
#: particle 117 Å: a 150 Å mask (9/7, ``discs``)
CLASSIFY = {"n_classes": 20, "max_res_A": 6.0, "particle_diameter_A": 117.0,
            "online_iterations": 30}


def test_adjusted_rand_reference_values():
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([5, 5, 3, 3])) == pytest.approx(1.0)
    # the textbook example: ARI of these two labelings is 0.24242…
    a = np.array([0, 0, 0, 1, 1, 1])
    b = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand(a, b) == pytest.approx(0.242424, abs=1e-5)


def test_purity_and_spreads_reference_values():
    # class 5 holds three items, two of label 0: 3 of 4 items sit with their class's majority
    assert purity(np.array([0, 0, 1, 1]), np.array([5, 5, 5, 3])) == pytest.approx(0.75)
    # ±10° about a constant: circular s.d. ≈ the linear 10°; a turned, shifted class: 0
    assert circular_sd_deg(np.array([30.0, 50.0])) == pytest.approx(10.0, rel=0.01)
    # one angle turned by 180° among three within ±2° of 0: the median deviation is 2°
    assert median_angle_deviation_deg(np.array([-2.0, 0.0, 2.0, 180.0])) == pytest.approx(2.0)
    assert median_angle_deviation_deg(np.array([358.0, 0.0, 2.0, 180.0])) == pytest.approx(2.0)
    psi = np.array([0.0, 90.0, 200.0])
    c, s_ = np.cos(np.radians(-psi)), np.sin(np.radians(-psi))
    turned = np.column_stack([c * 2.0 + s_ * 1.0, s_ * 2.0 - c * 1.0])     # R(−ψ)·(2, −1)
    assert origin_spread(psi, turned + 5.0, np.full((3, 2), 5.0)) == pytest.approx(0, abs=1e-9)
    assert origin_spread(psi, turned + [[1.0, 0], [0, 0], [0, 0]], turned) > 0.4


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    data = simulate(2640, box=64, apix=3.0, snr=0.05, n_objects=16, junk_fraction=240 / 2640,
                    duplicate_fraction=0.0, seed=11, junk_types=("noise", "edge"))
    star = write_dataset(data, work / "data")
    prepare_stack(star, work / "prepare", max_res_A=6.0)
    classify_all(str(work / "prepare"), str(work / "classify"), CLASSIFY, seed=0, backend="cpu")
    table = io.read_particles(work / "classify" / "particles.star").particles
    return data, table, work / "classify"


@pytest.mark.slow
def test_good_particles_are_classified_like_the_truth(classified):
    data, table, _ = classified
    good = (data.truth["junk"] == "").to_numpy()
    assert good.sum() == 2400
    ari = adjusted_rand(data.truth["true_class"].to_numpy()[good],
                        table["rlnClassNumber"].to_numpy()[good])
    # 9 runs (data seeds 11–13 × classifier seeds 0–2): 0.904 [0.878–0.952], this one 0.952
    # (0.92 before was this run's output less a little: 6 of the 9 read below it); with the
    # refill line at 0.35 (stop 30) the same 9 read 0.898 [0.880–0.929], this one 0.929;
    # with a small set's iterations in updates of a quarter (stop 32) 0.953 [0.919–0.974],
    # higher on all 9, this one 0.963: the requirement rose from 0.87 with that margin
    assert ari >= 0.90


@pytest.mark.slow
def test_angles_and_origins_follow_relion_convention(classified):
    """Within a class, our ψ minus the true ψ is a constant (the class's own rotation), and
    our origin equals the true origin rotated by it: RELION's convention, pinned by the
    simulator against relion_project."""
    data, table, _ = classified
    good = (data.truth["junk"] == "").to_numpy()
    ours_psi = table["rlnAnglePsi"].to_numpy()
    true_psi = data.truth["rlnAnglePsi"].to_numpy()
    classes = table["rlnClassNumber"].to_numpy()
    spreads, origin_errors = [], []
    for k in np.unique(classes[good]):
        members = good & (classes == k)
        if members.sum() < 50:
            continue
        # the class is one object; keep its majority object only
        obj = np.bincount(data.truth["true_class"].to_numpy()[members]).argmax()
        members &= data.truth["true_class"].to_numpy() == obj
        spreads.append(median_angle_deviation_deg(ours_psi[members] - true_psi[members]))
        true_o = data.truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()[members]
        ours_o = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()[members]
        origin_errors.append(origin_spread(ours_psi[members], ours_o, true_o))
    assert len(spreads) >= 12
    # the median deviation, not the circular s.d.: 1–5 particles of a class turned by 180°
    # (nearly symmetric objects at SNR 0.05) set the s.d. (median over classes 7.3° on one
    # of the 9 runs, 1.5–2.5° on the others); the median deviation read 0.96–1.23°
    assert np.median(spreads) <= 2.0
    # Å, half a pixel at 3 Å/px; the 9 runs read 0.80–0.99
    assert np.median(origin_errors) <= 1.5


@pytest.mark.slow
def test_junk_lands_in_junk_classes(classified):
    data, table, _ = classified
    junk = (data.truth["junk"] != "").to_numpy()
    classes = table["rlnClassNumber"].to_numpy()
    junk_classes = [k for k in np.unique(classes) if junk[classes == k].mean() > 0.5]
    # 9 runs: 0.879 [0.796–0.971] of the junk, 0.992 [0.950–1.0] of the noise picks; this
    # one 0.954 and 1.0 (0.90 was a pin: 5 of the 9 read below it); with the refill line at
    # 0.35: 0.887 [0.792–0.988] and 0.992 [0.975–1.0], this one 0.887 and 0.992; in updates
    # of a quarter (stop 32): 0.875 [0.750–0.983] and 0.983 [0.983–1.0], this one 0.875 and
    # 0.983 (lower than 0.78 on one run, 12/2: 0.887 → 0.750, where its ARI rose 0.881 →
    # 0.919; the requirement fell to 0.72 with that margin, bench/RESULTS.md)
    assert np.isin(classes[junk], junk_classes).mean() >= 0.72
    noise = (data.truth["junk"] == "noise").to_numpy()
    assert np.isin(classes[noise], junk_classes).mean() >= 0.94


@pytest.mark.slow
def test_class_resolution_matches_the_truth_from_both_sides(classified):
    """rlnEstimatedResolution (spectral SNR 1) of every class of mostly one object against
    the FRC of its average with that object: SNR 1 is FRC √½ against the truth, so the
    estimate must not beat the FRC-0.5 resolution by more than a shell (the FRC of half-set
    averages, aligned to one reference, so with correlated noise, claimed Nyquist here), nor
    fall more than two shells short of the FRC-√½ resolution (9 runs, data seeds 11–13 ×
    classifier seeds 0–2: at stop 29 at most 1 shell finer, 1–3 short, 3 on one class of
    145; at stop 33, small sets taken in updates, at most 1 finer, at most 1 short on 8 runs
    and 2 on one class of one run (13, 1); this run: 1 finer, 1 short); an
    aligned-noise bias taken from classes that drew a fraction of one noise image had a
    clean class of 10⁵ particles read 48 Å against 16 Å).  A class that mixes objects has
    no true resolution to meet (one of 51 particles, a quarter of them of one object, read
    3 shells finer than its FRC with that object).  A constant estimate, coarse or Nyquist,
    fails."""
    data, table, folder = classified
    with mrcfile.open(folder / "classes.mrcs") as mrc:
        averages = np.asarray(mrc.data, np.float64)
    estimated = starfile.read(folder / "classes.star")["rlnEstimatedResolution"].to_numpy()
    classes = table["rlnClassNumber"].to_numpy()
    truth = data.truth["true_class"].to_numpy()
    good = (data.truth["junk"] == "").to_numpy()
    checked = 0
    for k in np.unique(classes):
        members = classes == k
        if good[members].mean() < 0.5:
            continue
        obj = np.bincount(truth[members & good]).argmax()
        if np.mean(good[members] & (truth[members] == obj)) < 0.5:
            continue
        _, moved = best_match(averages[k - 1], data.references[obj])
        average = averages[k - 1] / np.linalg.norm(averages[k - 1])
        curve = frc(average, moved)
        against_truth = frc_resolution(curve, 64, 3.0, 0.5)
        assert estimated[k - 1] >= 64 * 3.0 / (64 * 3.0 / against_truth + 1), (k, against_truth)
        assert estimated[k - 1] > 6.0
        at_snr_one = frc_resolution(curve, 64, 3.0, np.sqrt(0.5))
        assert 64 * 3.0 / estimated[k - 1] >= 64 * 3.0 / at_snr_one - 2, (k, at_snr_one)
        checked += 1
    assert checked >= 14
