"""Per-particle outlier statistics (em.outliers) and the select stage's rejection by them.

The end-to-end set: 8 objects, and aggregates, pure noise and ice/carbon edges at 10 % of
the picks each, classified into 12 classes by the real classifier; the select stage with
its defaults (automatic class rule, automatic z-score threshold).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from class2d import io
from class2d.classify import classify_all
from class2d.em.outliers import FEATURES, class_models, robust_zscores
from class2d.errors import ConfigError, InputError
from class2d.prepare import prepare_stack
from class2d.select import auto_zscore_threshold, select_classes
from class2d.simulate import simulate, write_dataset

#: particle 117 Å: a 150 Å mask (9/7, ``discs``)
CLASSIFY = {"n_classes": 12, "max_res_A": 6.0, "particle_diameter_A": 117.0}


def test_class_models_are_the_simulated_particles():
    # the simulator's noise-free particles (CTF applied in the box), pinned against
    # relion_project, from its references at the true poses in the internal convention
    data = simulate(40, box=64, apix=3.0, snr=1.0, n_objects=4, junk_fraction=0.0,
                    duplicate_fraction=0.0, ctf_pad=1, seed=2)
    truth = data.truth
    psi = -np.radians(truth["rlnAnglePsi"].to_numpy())
    tx, ty = (-truth[c].to_numpy() / 3.0 for c in ("rlnOriginXAngst", "rlnOriginYAngst"))
    for sign, low, high in ((1.0, 0.999, 1.0), (-1.0, -1.0, 0.6)):
        models = class_models(data.references.astype(np.float64),
                              truth["true_class"].to_numpy(), sign * psi, tx, ty,
                              data.table.ctf_params(), 3.0)
        corr = [np.corrcoef(m.ravel(), c.ravel())[0, 1] for m, c in zip(models, data.clean)]
        assert low <= np.median(corr) <= high and (sign < 0 or min(corr) > 0.999), sign


def clipped_reference(values, clip=3.0):
    """Median and 1.4826 · MAD of the values at most ``clip`` of them above, iterated (the
    float64 reference for ``clipped_centre_spread``)."""
    kept = values
    while True:
        centre = np.median(kept)
        spread = 1.4826 * np.median(np.abs(kept - centre))
        inside = values[(values - centre) / spread <= clip]
        if inside.size == kept.size:
            return centre, spread
        kept = inside


def test_robust_zscores_by_class():
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1, 2], [200, 200, 5])
    values = {name: rng.normal(0.0, 1.0, classes.size) for name in FEATURES}
    values["c2dResidualPower"][:200] = 10.0 + 2.0 * values["c2dResidualPower"][:200]
    values["c2dResidualPower"][:3] = 40.0                        # beyond 3 spreads: left out
    values["c2dFitScale"][200:203] = 40.0         # two sided, never clipped: plain median, MAD
    features = pd.DataFrame(values)
    z = robust_zscores(features, classes)
    column = features["c2dResidualPower"].to_numpy()
    centre, spread = clipped_reference(column[:200])
    clean = column[3:200]
    assert spread == pytest.approx(1.4826 * np.median(np.abs(clean - np.median(clean))), rel=0.05)
    np.testing.assert_allclose(z["c2dResidualPower"][:200], (column[:200] - centre) / spread)
    # the 5-particle class takes the pooled median and spread
    centre, spread = clipped_reference(column)
    np.testing.assert_allclose(z["c2dResidualPower"][400:], (column[400:] - centre) / spread)
    scale = features["c2dFitScale"].to_numpy()[200:400]
    assert (z["c2dFitScale"][200:400] >= 0).all()           # two sided: |z|
    np.testing.assert_allclose(z["c2dFitScale"][200:400],
                               np.abs(scale - np.median(scale)) / (1.4826 * np.median(
                                   np.abs(scale - np.median(scale)))))
    np.testing.assert_allclose(z["rlnParticleSelectZScore"], z[list(FEATURES)].max(axis=1))


def test_junk_absorbed_by_the_thousand_does_not_widen_its_class_spread():
    # a class of 700 particles that fit and 300 aggregates far above them (the 16-object
    # set of 10^5: one class of 7,026 held 2,047 aggregates): median and MAD of all of them
    # put the aggregates at z ~ 3, under select's threshold; clipped, at z ~ 8 as in a clean
    # class, and the particles that fit keep their z (spread within 10 % of 1)
    rng = np.random.default_rng(4)
    outside = np.concatenate([rng.normal(0.0, 1.0, 700), rng.normal(8.0, 1.0, 300)])
    features = pd.DataFrame({name: rng.normal(0.0, 1.0, 1000) for name in FEATURES})
    features["c2dOutsideMaskPower"] = outside
    z = robust_zscores(features, np.zeros(1000, int))["c2dOutsideMaskPower"].to_numpy()
    assert np.median(z[700:]) > 7.0, np.median(z[700:])
    assert np.std(z[:700]) == pytest.approx(1.0, abs=0.1)
    unclipped = (outside - np.median(outside)) / (1.4826 * np.median(np.abs(
        outside - np.median(outside))))
    assert np.median(unclipped[700:]) < 4.0                  # what the plain median and MAD gave


def test_auto_threshold_between_two_populations():
    rng = np.random.default_rng(1)
    good, bad = rng.normal(1.0, 0.7, 900), rng.normal(9.0, 2.5, 100)
    threshold = auto_zscore_threshold(np.concatenate([good, bad]))
    assert 2.5 <= threshold <= 4.5 and np.mean(bad > threshold) > 0.97, threshold
    # no outliers: the cut stays in the range and drops at most 1 % of the good ones
    threshold = auto_zscore_threshold(good)
    assert np.mean(good > threshold) <= 0.01, threshold
    assert auto_zscore_threshold(good[:5]) == 6.0


@pytest.fixture(scope="module")
def junk_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("outliers")
    data = simulate(1000, box=64, apix=3.0, snr=0.05, n_objects=8, junk_fraction=0.3,
                    duplicate_fraction=0.0, seed=3)
    star = write_dataset(data, work / "data")
    prepare_stack(star, work / "prepare", max_res_A=6.0)
    classify_all(str(work / "prepare"), str(work / "classify"), CLASSIFY, seed=0, backend="cpu")
    return data, work


def _kept_rows(path) -> np.ndarray:
    names = io.read_particles(path).particles["rlnImageName"]
    return names.str.split("@").str[0].astype(int).to_numpy() - 1


@pytest.mark.slow
def test_select_drops_junk_inside_good_classes(junk_run, tmp_path):
    data, work = junk_run
    junk = data.truth["junk"].to_numpy()
    assert {kind: int((junk == kind).sum()) for kind in ("noise", "edge", "aggregate")} == {
        "noise": 100, "edge": 100, "aggregate": 100}
    classes_star, particles = work / "classify" / "classes.star", work / "classify" / "particles.star"
    rates = {}
    for setting in (None, "auto", 3.0):
        paths = select_classes(classes_star, particles, tmp_path / str(setting),
                               max_particle_zscore=setting)
        kept = np.isin(np.arange(len(junk)), _kept_rows(paths["particles.star"]))
        rates[setting] = (1 - kept[junk != ""].mean(), 1 - kept[junk == "aggregate"].mean(),
                          kept[junk == ""].mean())
    # classes alone leave most aggregates (measured: 3 % of them removed, 65 % of all junk;
    # with the z-score, auto and 3.0 alike: 97 % of all junk, 92 % of the aggregates, and
    # 96.6-96.9 % of the good particles kept)
    assert rates[None][1] < 0.5, rates
    for setting in ("auto", 3.0):
        junk_removed, aggregates_removed, good_kept = rates[setting]
        assert junk_removed >= 0.9 and good_kept >= 0.9, (setting, rates[setting])
        assert aggregates_removed >= 0.8, (setting, rates[setting])
    page = (tmp_path / "auto" / "selection.html").read_text()
    assert page.count("above z ") == 12 and "particles of the selected classes with" in page


def test_statistic_in_star_and_cs(junk_run):
    _, work = junk_run
    star = io.read_particles(work / "classify" / "particles.star").particles
    cs = np.load(work / "classify" / "particles.cs")
    z = star["rlnParticleSelectZScore"].to_numpy()
    np.testing.assert_allclose(cs["class2d/select_zscore"], z, rtol=1e-6)
    assert cs["class2d/select_zscore"].dtype == np.float32
    assert np.isfinite(z).all() and 0.5 < np.median(z) < 2.0
    for name in FEATURES:
        assert np.isfinite(star[name]).all(), name
    # the .cs as input: the select stage finds the statistic under its .cs name
    classes_star = work / "classify" / "classes.star"
    from_cs = select_classes(classes_star, work / "classify" / "particles.cs",
                             work / "select_cs", max_particle_zscore=3.0)
    from_star = select_classes(classes_star, work / "classify" / "particles.star",
                               work / "select_star", max_particle_zscore=3.0)
    np.testing.assert_array_equal(_kept_rows(from_cs["particles.star"]),
                                  _kept_rows(from_star["particles.star"]))


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not on PATH")
def test_relion_subsets_by_the_statistic(junk_run, tmp_path):
    _, work = junk_run
    source = work / "classify" / "particles.star"
    z = io.read_particles(source).particles["rlnParticleSelectZScore"].to_numpy()
    done = subprocess.run(["relion_star_handler", "--i", str(source), "--o",
                           str(tmp_path / "low.star"), "--select", "rlnParticleSelectZScore",
                           "--maxval", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert io.read_particles(tmp_path / "low.star").n == int((z <= 3).sum()) > 0


def test_bad_zscore_settings(junk_run, tmp_path):
    _, work = junk_run
    classes_star, particles = work / "classify" / "classes.star", work / "classify" / "particles.star"
    for setting in ("high", -1.0, 0):
        with pytest.raises(ConfigError, match=r"^config select\.max_particle_zscore: must be"):
            select_classes(classes_star, particles, tmp_path / "out", max_particle_zscore=setting)
    assert not (tmp_path / "out").exists()
    table = io.read_particles(particles)
    table.particles = table.particles.drop(columns=["rlnParticleSelectZScore"])
    io.write_particles(table, tmp_path / "bare.star")
    with pytest.raises(InputError, match=r"bare\.star: no rlnParticleSelectZScore"):
        select_classes(classes_star, tmp_path / "bare.star", tmp_path / "out",
                       max_particle_zscore=3.0)
    # automatic: without the statistic every particle of the selected classes stays
    auto = select_classes(classes_star, tmp_path / "bare.star", tmp_path / "auto")
    plain = select_classes(classes_star, tmp_path / "bare.star", tmp_path / "plain",
                           max_particle_zscore=None)
    assert io.read_particles(auto["particles.star"]).n == io.read_particles(plain["particles.star"]).n
