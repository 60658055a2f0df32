"""Duplicate removal: simulated duplicate picks, greedy groups, scores, pixel sizes, bad input."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
import starfile

from class2d import io
from class2d.dedup import micrograph_pixel_size, remove_duplicates, suppress_duplicates
from class2d.errors import ConfigError, InputError
from class2d.simulate import classifier_output, simulate

#: Å of alignment error added to the true shifts (what a classifier gets wrong)
SHIFT_ERROR = 2.0


@pytest.fixture(scope="module")
def picked():
    """Simulated picks: distinct particles ≥ 40 Å apart, 10 % picked twice 6–15 Å away."""
    data = simulate(3000, box=32, apix=2.0, n_objects=4, junk_fraction=0.0,
                    duplicate_fraction=0.1, n_micrographs=10, min_separation=40.0, seed=5)
    return data


@pytest.fixture(scope="module")
def packed():
    """The hard case: picks of distinct particles 30 Å apart on crowded micrographs, 10 %
    picked twice 2–10 Å away; each object split into two classes centred 20–40 Å apart."""
    return simulate(1500, box=64, apix=2.0, n_objects=4, junk_fraction=0.0,
                    duplicate_fraction=0.1, n_micrographs=5, min_separation=30.0,
                    micrograph_size=1024, duplicate_distance=(2.0, 10.0), seed=5)


def _classified(data, tmp_path, shift_error: float = SHIFT_ERROR,
                split_offset_A: tuple[float, float] | None = None, **columns) -> str:
    """particles.star as the classifier writes it (true shifts plus an error, a residual),
    and its classes.star beside it."""
    table, averages = classifier_output(data, shift_error, split_offset_A)
    table = dataclasses.replace(table, base_dir=str(tmp_path)).with_columns(**columns)
    path = tmp_path / "particles.star"
    io.write_particles(table, path)
    numbers = pd.DataFrame({"rlnClassNumber": np.arange(1, len(averages) + 1)})
    io.write_classes(io.ClassSet(numbers, averages, 2.0, ""), np.arange(len(averages)), tmp_path)
    return str(path)


def _row_numbers(path) -> np.ndarray:
    """0-based rows of the simulated set, from the image names."""
    names = io.read_particles(path).particles["rlnImageName"]
    return names.str.split("@").str[0].astype(int).to_numpy() - 1


@pytest.mark.parametrize("shift_error", [SHIFT_ERROR, None])
def test_pairs_lose_exactly_one_member(picked, tmp_path, shift_error):
    # None: no aligned shifts at all, the pick coordinates 6–15 Å apart are all there is
    star = _classified(picked, tmp_path, shift_error or 0.0)
    if shift_error is None:
        table = io.read_particles(star)
        table.particles = table.particles.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst"])
        io.write_particles(table, star)
    paths = remove_duplicates(star, tmp_path / "dedup", min_separation_A=20.0)
    kept, rejected = _row_numbers(paths["particles.star"]), _row_numbers(paths["rejected.star"])
    assert len(kept) + len(rejected) == picked.table.n
    second = np.flatnonzero(picked.truth["duplicate_of"].to_numpy() >= 0)
    first = picked.truth["duplicate_of"].to_numpy()[second]
    gone = np.isin(np.arange(picked.table.n), rejected)
    exactly_one = gone[first] ^ gone[second]
    assert exactly_one.mean() >= 0.95, exactly_one.mean()
    in_pairs = np.zeros(picked.table.n, bool)
    in_pairs[first] = in_pairs[second] = True
    assert not (gone & ~in_pairs).any(), "a distinct particle was removed"


def _outcome(data, paths) -> tuple[float, int]:
    """(share of duplicate pairs losing exactly one pick, distinct particles removed)."""
    gone = np.isin(np.arange(data.table.n), _row_numbers(paths["rejected.star"]))
    second = np.flatnonzero(data.truth["duplicate_of"].to_numpy() >= 0)
    first = data.truth["duplicate_of"].to_numpy()[second]
    in_pairs = np.zeros(data.table.n, bool)
    in_pairs[first] = in_pairs[second] = True
    return float((gone[first] ^ gone[second]).mean()), int((gone & ~in_pairs).sum())


def test_duplicates_in_classes_centred_differently(packed, tmp_path, caplog):
    star = _classified(packed, tmp_path, split_offset_A=(20.0, 40.0))
    classes = tmp_path / "classes.star"
    # the hard case: aligned centres alone (CryoSPARC's criterion) leave about half the pairs
    # (measured 55 %) and, on these crowded micrographs, remove 119 distinct particles
    resolved, distinct = _outcome(packed, remove_duplicates(star, tmp_path / "old",
                                                            pick_separation_A=0.0))
    assert resolved < 0.7 and distinct > 50, (resolved, distinct)
    # pick distance as well: every pair (measured 97 %), the distinct ones still go (112)
    resolved, distinct = _outcome(packed, remove_duplicates(star, tmp_path / "picks"))
    assert resolved >= 0.95 and distinct > 50, (resolved, distinct)
    # centres moved to the class averages' centres of mass: all pairs, no distinct particle
    with caplog.at_level("INFO", logger="class2d.dedup"):
        paths = remove_duplicates(star, tmp_path / "new", classes_star=classes)
    resolved, distinct = _outcome(packed, paths)
    assert resolved >= 0.95 and distinct == 0, (resolved, distinct)
    counts = [r.getMessage() for r in caplog.records if "pairs of duplicates" in r.message]
    assert len(counts) == 1
    total, both, centre_only, pick_only = map(int, re.findall(r"(\d+)", counts[0].split(":", 1)[1]))
    assert total == both + centre_only + pick_only == (packed.truth["duplicate_of"] >= 0).sum()
    rejected = io.read_particles(paths["rejected.star"]).particles
    assert (rejected["c2dDuplicatePickDistanceAngst"] <= 10.0 + 1e-9).all()


def test_keeps_the_better_score(picked, tmp_path):
    star = _classified(picked, tmp_path)
    table = io.read_particles(star).particles
    second = np.flatnonzero(picked.truth["duplicate_of"].to_numpy() >= 0)
    first = picked.truth["duplicate_of"].to_numpy()[second]
    for score, column, better in (("error", "c2dAlignmentError", np.less),
                                  ("pick", "rlnAutopickFigureOfMerit", np.greater)):
        paths = remove_duplicates(star, tmp_path / score, score=score)
        gone = np.isin(np.arange(len(table)), _row_numbers(paths["rejected.star"]))
        values = table[column].to_numpy()
        winner = np.where(better(values[first], values[second]), first, second)
        loser = np.where(winner == first, second, first)
        assert np.mean(~gone[winner] & gone[loser]) >= 0.95
    rejected = io.read_particles(tmp_path / "pick" / "rejected.star").particles
    assert (rejected["c2dDuplicateDistanceAngst"] < 20.0).all()


def test_error_score_falls_back_to_posterior_and_needs_a_score(picked, tmp_path):
    star = _classified(picked, tmp_path)
    table = io.read_particles(star)
    table.particles = table.particles.drop(columns=["c2dAlignmentError"])
    io.write_particles(table, star)
    paths = remove_duplicates(star, tmp_path / "out")
    posterior = table.particles["rlnMaxValueProbDistribution"].to_numpy()
    second = np.flatnonzero(picked.truth["duplicate_of"].to_numpy() >= 0)
    first = picked.truth["duplicate_of"].to_numpy()[second]
    loser = np.where(posterior[first] > posterior[second], second, first)
    gone = np.isin(np.arange(table.n), _row_numbers(paths["rejected.star"]))
    assert gone[loser].mean() >= 0.95
    table.particles = table.particles.drop(columns=["rlnMaxValueProbDistribution"])
    io.write_particles(table, star)
    with pytest.raises(InputError, match="no c2dAlignmentError or rlnMaxValueProbDistribution"):
        remove_duplicates(star, tmp_path / "out")


def test_greedy_groups_and_micrographs():
    # a chain A–B–C 15 Å apart, a lone D, and E on another micrograph at B's place
    centres = np.array([[0.0, 0.0], [15.0, 0.0], [30.0, 0.0], [100.0, 0.0], [15.0, 0.0]])
    micrographs = np.array([0, 0, 0, 0, 1])
    keep, distance = suppress_duplicates(centres, micrographs, np.array([1, 5, 2, 0, 0.0]), 20.0)
    assert keep.tolist() == [False, True, False, True, True]       # B best: only B
    np.testing.assert_allclose(distance[[0, 2]], 15.0)
    keep, _ = suppress_duplicates(centres, micrographs, np.array([5, 1, 2, 0, 0.0]), 20.0)
    assert keep.tolist() == [True, False, True, True, True]        # A best: A and C
    keep, _ = suppress_duplicates(centres, micrographs, np.zeros(5), 20.0)
    assert keep.tolist() == [True, False, True, True, True]        # ties: the earlier row


def test_micrograph_pixel_size_order(picked, tmp_path):
    table = dataclasses.replace(picked.table)
    assert np.all(micrograph_pixel_size(table, 5.0) == 1.0)        # rlnMicrographPixelSize
    optics = table.optics.assign(rlnMicrographPixelSize=2.0, rlnMicrographOriginalPixelSize=0.5)
    assert np.all(micrograph_pixel_size(dataclasses.replace(table, optics=optics)) == 2.0)
    optics = optics.drop(columns=["rlnMicrographPixelSize"])
    assert np.all(micrograph_pixel_size(dataclasses.replace(table, optics=optics)) == 0.5)
    optics = optics.drop(columns=["rlnMicrographOriginalPixelSize"])
    bare = dataclasses.replace(table, optics=optics)
    assert np.all(micrograph_pixel_size(bare, 1.5) == 1.5)
    assert np.all(micrograph_pixel_size(bare) == 2.0)               # the particle pixel size
    assert np.all(micrograph_pixel_size(bare.with_columns(
        **{"location/micrograph_psize_A": np.full(table.n, 0.8)}), 1.5) == 0.8)


def test_coordinates_in_binned_micrograph_pixels(picked, tmp_path):
    # the same picks on micrographs binned by 2: coordinates halve, the pixel size doubles
    star = _classified(picked, tmp_path)
    table = io.read_particles(star)
    table.particles[["rlnCoordinateX", "rlnCoordinateY"]] /= 2.0
    table.optics["rlnMicrographPixelSize"] = 2.0
    io.write_particles(table, star)
    binned = remove_duplicates(star, tmp_path / "binned")
    (tmp_path / "plain").mkdir()
    unbinned = remove_duplicates(_classified(picked, tmp_path / "plain"), tmp_path / "unbinned")
    np.testing.assert_array_equal(_row_numbers(binned["rejected.star"]),
                                  _row_numbers(unbinned["rejected.star"]))


def test_cs_input_and_outputs_read_back(picked, tmp_path):
    star = _classified(picked, tmp_path)
    table = io.read_particles(star)
    # the fields a CryoSPARC export has: micrograph shape and pixel size, pick score
    shape = {"location/micrograph_shape[0]": np.full(table.n, 4096),
             "location/micrograph_shape[1]": np.full(table.n, 4096),
             "location/micrograph_psize_A": np.full(table.n, 1.0),
             "pick_stats/ncc_score": table.particles["rlnAutopickFigureOfMerit"].to_numpy()}
    io.write_particles(table.with_columns(**shape), tmp_path / "particles.cs")
    from_cs = remove_duplicates(tmp_path / "particles.cs", tmp_path / "cs", score="pick")
    from_star = remove_duplicates(star, tmp_path / "star", score="pick")
    for name in ("particles.star", "rejected.star", "particles.cs", "rejected.cs"):
        assert from_cs[name] == str(tmp_path / "cs" / name)
        assert len(starfile.read(from_cs[name])["particles"] if name.endswith("star")
                   else np.load(from_cs[name])) == io.read_particles(from_star[name]).n
    cs = np.load(from_cs["particles.cs"])
    assert {"location/center_x_frac", "alignments2D/shift", "blob/idx"} <= set(cs.dtype.names)
    np.testing.assert_array_equal(_row_numbers(from_cs["rejected.star"]),
                                  _row_numbers(from_star["rejected.star"]))


def test_without_locations(picked, tmp_path):
    star = _classified(picked, tmp_path)
    table = io.read_particles(star)
    table.particles = table.particles.drop(columns=["rlnCoordinateX", "rlnCoordinateY"])
    io.write_particles(table, star)
    with pytest.raises(InputError, match=r"particles.star: no pick locations \(rlnCoordinateX"):
        remove_duplicates(star, tmp_path / "out")
    paths = remove_duplicates(star, tmp_path / "out", pass_through_without_locations=True)
    assert io.read_particles(paths["particles.star"]).n == table.n
    assert len(starfile.read(paths["rejected.star"], always_dict=True)["particles"]) == 0
    assert len(np.load(paths["rejected.cs"])) == 0


def test_bad_parameters(picked, tmp_path):
    star = _classified(picked, tmp_path)
    with pytest.raises(ValueError, match="min_separation_A"):
        remove_duplicates(star, tmp_path / "out", min_separation_A=0)
    with pytest.raises(ValueError, match="score"):
        remove_duplicates(star, tmp_path / "out", score="best")
    with pytest.raises(InputError, match="file not found"):
        remove_duplicates(tmp_path / "missing.star", tmp_path / "out")
    table = io.read_particles(star)
    table.particles.loc[3, "rlnCoordinateX"] = np.nan
    io.write_particles(table, star)
    with pytest.raises(InputError, match="particle 4 has no pick coordinate"):
        remove_duplicates(star, tmp_path / "out")
    pd.testing.assert_frame_equal(table.particles.iloc[:3],
                                  io.read_particles(star).particles.iloc[:3])


def test_bad_settings_name_their_config_key(picked, tmp_path):
    star = _classified(picked, tmp_path)
    # micrograph_apix: refused even where the metadata has a pixel size of its own
    for setting, key in ((dict(min_separation_A=-5.0), "min_separation_A"),
                         (dict(score="best"), "score"),
                         (dict(micrograph_apix=-1.0), "micrograph_apix")):
        with pytest.raises(ConfigError, match=rf"^config dedup\.{key}: must be"):
            remove_duplicates(star, tmp_path / "out", **setting)
    assert not (tmp_path / "out").exists()
