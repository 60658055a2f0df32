"""Stack preparation: crop box, normalisation, shards, and bad input."""

import logging
import os
import shutil
import subprocess

import mrcfile
import numpy as np
import pytest
import yaml

from class2d import io, layout
from class2d.ctf import CTFParams
from class2d.errors import ConfigError, InputError
from class2d.fourier import fourier_crop, pixel_radius
from class2d.prepare import (PreparedStack, alignment_box, background_mask, contrast_signs,
                             finish_prepare, prepare_shard, prepare_stack, shard_count)
from class2d.simulate import simulate, write_dataset


@pytest.fixture(scope="module")
def demo_star(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    data = simulate(120, box=64, apix=2.0, snr=0.2, seed=3)
    return write_dataset(data, folder), data


def test_alignment_box_reaches_the_resolution():
    assert alignment_box(256, 1.0, 8.0, None) == 64          # Nyquist 2·(256/64) Å = 8 Å
    assert alignment_box(200, 1.3, 6.0, None) == 88          # ceil(86.7) → even
    assert alignment_box(64, 3.0, 4.0, None) == 64           # never larger than the input
    assert alignment_box(256, 1.0, 8.0, 100) == 100


def test_prepared_stack_is_cropped_normalised_and_sharded(demo_star, tmp_path):
    star, data = demo_star
    stack = prepare_stack(star, tmp_path / "prep", max_res_A=8.0, shards=3)
    assert (stack.box, stack.apix) == (32, pytest.approx(4.0))
    assert stack.shard_rows == ((0, 40), (40, 80), (80, 120))
    images = stack.images(np.arange(120))
    background = background_mask(32, 0.75 * 16)
    bg = images[:, background]
    np.testing.assert_allclose(bg.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(bg.std(axis=1), 1.0, atol=1e-4)
    # the input's content, Fourier-cropped: equal up to each image's affine normalisation
    cropped = fourier_crop(data.images.astype(np.float64), 32)
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(images, cropped)]
    assert min(corr) > 0.99999
    for s in range(3):
        path = layout.stack_path(stack.folder, s)
        assert mrcfile.validate(path)
        with mrcfile.open(path) as mrc:
            assert float(mrc.voxel_size.x) == pytest.approx(4.0)
    assert io.read_particles(os.path.join(stack.folder, "particles.star")).n == 120


def test_ctf_table_holds_every_particles_ctf_as_the_star_gives_it(demo_star, tmp_path):
    star, data = demo_star
    stack = prepare_stack(star, tmp_path / "prep", max_res_A=8.0, shards=2)
    assert os.path.isfile(layout.prepared_ctf(stack.folder))
    from_star = io.read_particles(star).ctf_params()
    for name, ours, theirs, simulated in zip(CTFParams._fields, stack.ctf_params, from_star,
                                             data.table.ctf_params()):
        assert ours.shape == (120,) and ours.dtype == np.float64, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
        np.testing.assert_allclose(ours, simulated, rtol=1e-6, err_msg=name)
    assert len(np.unique(stack.ctf_params.defocus_u)) > 10        # per particle, not one value


def test_invert_contrast_flips_the_sign(demo_star, tmp_path):
    star, _ = demo_star
    plain = prepare_stack(star, tmp_path / "a", max_res_A=8.0).images(np.arange(5))
    inverted = prepare_stack(star, tmp_path / "b", max_res_A=8.0,
                             invert_contrast=True).images(np.arange(5))
    np.testing.assert_allclose(inverted, -plain, atol=1e-5)


def prepared(particles, folder, **settings) -> tuple[np.ndarray, dict]:
    """The images of ``particles`` prepared at 64 px, and their prepared.yaml."""
    stack = prepare_stack(particles, folder, box_px=64, **settings)
    with open(layout.prepared_meta(stack.folder)) as fh:
        return stack.images(np.arange(stack.n)), yaml.safe_load(fh)


def test_a_cs_with_blob_sign_minus_one_comes_out_inverted_without_a_setting(data_file, tmp_path,
                                                                            caplog):
    """The 7 EMPIAR-10076 images, once described by a .cs (blob/sign -1) and once by a
    RELION 3.0 STAR (no blob/sign): the .cs is inverted, the STAR kept, so their prepared
    images are each other's negatives; inverted, the ribosomes are white (the disc of
    radius 12 px is 0.14-0.29 background s.d. above the background mean)."""
    caplog.set_level(logging.INFO, "class2d.prepare")
    from_cs, cs_meta = prepared(data_file("empiar10076_cs"), tmp_path / "cs")
    assert ("contrast inverted for 7 of 7 particles: prepare.invert_contrast is null: the "
            "input's blob/sign decides") in caplog.text
    from_star, star_meta = prepared(data_file("empiar10076_star"), tmp_path / "star")
    assert "contrast inverted for 0 of 7 particles: prepare.invert_contrast is null and the " \
           "input has no blob/sign" in caplog.text
    np.testing.assert_array_equal(from_cs, -from_star)
    assert (cs_meta["inverted_particles"], star_meta["inverted_particles"]) == (7, 0)
    disc = pixel_radius(64) < 12
    assert (from_cs[:, disc].mean(axis=1) > 0.1).all()


def test_an_explicit_invert_contrast_wins_over_blob_sign(data_file, tmp_path):
    from_cs, meta = prepared(data_file("empiar10076_cs"), tmp_path / "cs", invert_contrast=False)
    from_star, _ = prepared(data_file("empiar10076_star"), tmp_path / "star")
    np.testing.assert_array_equal(from_cs, from_star)
    assert meta["inverted_particles"] == 0
    inverted, meta = prepared(data_file("empiar10076_star"), tmp_path / "star_inv",
                              invert_contrast=True)
    np.testing.assert_array_equal(inverted, -from_star)
    assert meta["inverted_particles"] == 7


def test_contrast_signs_follow_each_particles_blob_sign(data_file):
    """A .cs that merges CryoSPARC-extracted (-1) and imported (+1) particles: each image
    gets its own sign; a setting overrides them all."""
    table = io.read_particles(data_file("empiar10076_cs"))
    mixed = table.with_columns(**{"blob/sign": np.array([-1, 1, -1, -1, 1, -1, -1], np.float32)})
    signs, why = contrast_signs(mixed, None)
    assert signs.tolist() == [-1, 1, -1, -1, 1, -1, -1] and signs.dtype == np.float32
    assert why.startswith("contrast inverted for 5 of 7 particles")
    assert contrast_signs(mixed, True)[0].tolist() == [-1] * 7
    assert contrast_signs(mixed, False)[0].tolist() == [1] * 7


@pytest.mark.parametrize("label, settings, sign", [
    ("empiar10076_star", {}, 1.0),                           # RELION's white particles
    ("empiar10076_cs", {}, -1.0),                            # CryoSPARC's dark ones
    ("empiar10076_star", {"invert_contrast": True}, -1.0),   # said dark by the setting
], ids=["star", "cs", "star-inverted"])
def test_our_cs_is_prepared_again_as_its_input_was(data_file, tmp_path, label, settings, sign):
    """Round trip: input → prepared copy → our particles.cs (as the classify stage writes
    it from ``stack.table()``) → prepared again with no setting: the same images, because
    the .cs's blob/sign says how the images it points to (the input's) were prepared."""
    first, _ = prepared(data_file(label), tmp_path / "first", **settings)
    stack = PreparedStack.open(tmp_path / "first")
    io.write_particles(stack.table(), tmp_path / "ours" / "particles.cs")
    assert np.load(tmp_path / "ours" / "particles.cs")["blob/sign"].tolist() == [sign] * 7
    again, meta = prepared(tmp_path / "ours" / "particles.cs", tmp_path / "again")
    np.testing.assert_array_equal(again, first)
    assert meta["inverted_particles"] == (7 if sign < 0 else 0)


def test_nan_image_with_bad_particles_error_is_named_and_nothing_is_left(demo_star, tmp_path):
    star, data = demo_star
    images = data.images.copy()
    images[7, 3, 3] = np.nan
    folder = tmp_path / "bad"
    folder.mkdir()
    io.write_stack(folder / "particles.mrcs", images, 2.0)
    table = io.read_particles(star)
    table.base_dir = str(folder)        # the names now point at the stack with the NaN
    io.write_particles(table, folder / "particles.star")
    with pytest.raises(InputError, match=r"particles\.star: image 000008@.*NaN"):
        prepare_stack(folder / "particles.star", tmp_path / "out", max_res_A=8.0,
                      bad_particles="error")
    assert not (tmp_path / "out" / "prepared.yaml").exists()
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_mixed_box_sizes_are_refused(demo_star, tmp_path):
    star, _ = demo_star
    table = io.read_particles(star)
    optics = table.optics.copy()
    extra = optics.copy()
    extra["rlnOpticsGroup"] = 2
    extra["rlnImageSize"] = 32
    table.optics = __import__("pandas").concat([optics, extra], ignore_index=True)
    table.particles.loc[:10, "rlnOpticsGroup"] = 2
    io.write_particles(table, tmp_path / "mixed.star")
    with pytest.raises(InputError, match="mixed box sizes"):
        prepare_stack(tmp_path / "mixed.star", tmp_path / "out")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nothing.star"):
        prepare_stack(tmp_path / "nothing.star", tmp_path / "out")


# --- at scale: shards prepared by their own jobs, in batches from the memory budget ----------

def test_same_bytes_whatever_the_batches_and_the_shards(demo_star, tmp_path):
    """One shard in one batch; three shards, each its own call, in batches of 4 particles
    (memory_gb just above the base): the images are the same bytes."""
    star, _ = demo_star
    whole = prepare_stack(star, tmp_path / "one", max_res_A=8.0)
    settings = dict(max_res_A=8.0, memory_gb=0.601)       # 229 kB per particle: 4 a batch
    for s in (2, 0, 1):                                    # any order, as parallel jobs finish
        prepare_shard(star, tmp_path / "three" / layout.stack_name(s), s, 3, **settings)
    split = finish_prepare(star, tmp_path / "three", 3, max_res_A=8.0)
    assert split.shard_rows == ((0, 40), (40, 80), (80, 120))
    one = mrcfile.read(tmp_path / "one" / layout.stack_name(0))
    three = np.concatenate([mrcfile.read(tmp_path / "three" / layout.stack_name(s))
                            for s in range(3)])
    assert one.tobytes() == three.tobytes()
    np.testing.assert_array_equal(split.images(np.arange(120)), whole.images(np.arange(120)))


def test_budget_too_small_for_one_batch(demo_star, tmp_path):
    star, _ = demo_star
    with pytest.raises(ConfigError, match=r"config memory_gb: 0.6 GB is too small for one "
                                          r"prepare \(64 -> 32 px\) batch"):
        prepare_shard(star, tmp_path / "out" / "stack_000.mrcs", 0, 1, max_res_A=8.0,
                      memory_gb=0.6)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_more_shards_than_particles(demo_star, tmp_path):
    star, _ = demo_star
    with pytest.raises(ConfigError, match=r"config prepare.shards: 121 shard\(s\) for 120 "):
        shard_count(star, 121)
    with pytest.raises(ConfigError, match="prepare.shards"):
        prepare_stack(star, tmp_path / "out", shards=121)
    assert shard_count(star, 0, 50) == 3 and shard_count(star, 0, 120) == 1
    assert shard_count(star, 7) == 7 and shard_count(10**6, 0, 50_000) == 20


def test_stacks_missing_halfway_leave_no_shard(demo_star, tmp_path):
    """The second half of the particles names a stack that is not there: the shard that
    needs it fails naming the stack, and leaves nothing; the first half's shard is made."""
    star, data = demo_star
    folder = tmp_path / "input"
    folder.mkdir()
    io.write_stack(folder / "first.mrcs", data.images[:60], 2.0)
    table = io.read_particles(star)
    table.base_dir = str(folder)
    table.particles["rlnImageName"] = ([f"{i + 1:06d}@first.mrcs" for i in range(60)]
                                       + [f"{i + 1:06d}@second.mrcs" for i in range(60)])
    io.write_particles(table, folder / "particles.star")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"second\.mrcs: file not found"):
        prepare_stack(folder / "particles.star", out, max_res_A=8.0)
    assert not out.exists() or os.listdir(out) == []
    prepare_shard(folder / "particles.star", out / "stack_000.mrcs", 0, 2, max_res_A=8.0)
    with pytest.raises(InputError, match=r"second\.mrcs: file not found"):
        prepare_shard(folder / "particles.star", out / "stack_001.mrcs", 1, 2, max_res_A=8.0)
    assert sorted(os.listdir(out)) == ["rejected_000.npz", "stack_000.mrcs"]
    with pytest.raises(InputError, match=r"stack_001\.mrcs: file not found"):
        finish_prepare(folder / "particles.star", out, 2, max_res_A=8.0)
    assert sorted(os.listdir(out)) == ["rejected_000.npz", "stack_000.mrcs"]


# --- bad particles: left out, listed with a reason, the rest prepared as without them -------

#: rows of the demo set spoilt by bad_set, and the reason each must be listed with
BAD_ROWS = {3: "constant_image", 10: "non_finite_pixels", 20: "bad_number:rlnDefocusU",
            30: "index_past_stack"}


def bad_set(star, data, folder):
    """The demo set with one particle of each per-particle fault (BAD_ROWS); its STAR path."""
    folder.mkdir()
    images = data.images.copy()
    images[3] = 0.0
    images[10, 5, 7] = np.nan
    io.write_stack(folder / "particles.mrcs", images, 2.0)
    table = io.read_particles(star)
    table.base_dir = str(folder)
    defocus = table.particles["rlnDefocusU"].map("{:.1f}".format).astype(object)
    defocus[20] = "15x00"
    table.particles["rlnDefocusU"] = defocus
    table.particles.loc[30, "rlnImageName"] = "000500@particles.mrcs"
    io.write_particles(table, folder / "particles.star")
    return folder / "particles.star"


def test_bad_particles_are_left_out_and_listed_with_their_reason(demo_star, tmp_path):
    import starfile

    star, data = demo_star
    spoilt = bad_set(star, data, tmp_path / "bad")
    stack = prepare_stack(spoilt, tmp_path / "out", max_res_A=8.0, shards=2)
    good = np.setdiff1d(np.arange(120), list(BAD_ROWS))
    assert stack.n == 116 and stack.shard_rows == ((0, 56), (56, 116))
    rejected = starfile.read(tmp_path / "out" / "rejected.star", always_dict=True)["particles"]
    table = io.read_particles(spoilt)
    original = table.particles
    listed = io.read_particles(tmp_path / "out" / "rejected.star").image_locations()
    wanted = table.subset(list(BAD_ROWS)).image_locations()
    for got, want in zip(listed, wanted):           # the same images (names relative to out/)
        np.testing.assert_array_equal(got, want)
    assert rejected["c2dRejectReason"].tolist() == list(BAD_ROWS.values())
    assert np.isnan(rejected["rlnDefocusU"][2])                   # '15x00' is not a number
    np.testing.assert_array_equal(rejected["rlnDefocusV"],
                                  original["rlnDefocusV"][list(BAD_ROWS)])
    cs = np.load(tmp_path / "out" / "rejected.cs")
    assert cs.dtype.names is not None and len(cs) == 4
    assert [r.decode() for r in cs["class2d/reject_reason"]] == list(BAD_ROWS.values())
    prepared = io.read_particles(layout.prepared_particles(stack.folder))
    for got, want in zip(prepared.image_locations(), table.subset(good).image_locations()):
        np.testing.assert_array_equal(got, want)
    meta = yaml.safe_load(open(layout.prepared_meta(stack.folder)))
    assert (meta["n"], meta["rejected"]) == (116, 4)
    assert not list((tmp_path / "out").glob(".*tmp*"))


@pytest.mark.skipif(not shutil.which("relion_star_handler"), reason="RELION not installed")
def test_relion_reads_the_rejected_list(demo_star, tmp_path):
    star, data = demo_star
    prepare_stack(bad_set(star, data, tmp_path / "bad"), tmp_path / "out", max_res_A=8.0)
    done = subprocess.run(["relion_star_handler", "--i", str(tmp_path / "out" / "rejected.star"),
                           "--o", str(tmp_path / "copy.star")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "constant_image" in (tmp_path / "copy.star").read_text()


def test_good_particles_are_prepared_as_if_the_bad_were_never_there(demo_star, tmp_path):
    """Preparing the spoilt set gives the same bytes, table and CTF arrays as preparing the
    set with the bad rows removed beforehand."""
    star, data = demo_star
    spoilt = bad_set(star, data, tmp_path / "bad")
    good = np.setdiff1d(np.arange(120), list(BAD_ROWS))
    table = io.read_particles(spoilt)
    io.write_particles(table.subset(good), tmp_path / "bad" / "good.star")
    skipped = prepare_stack(spoilt, tmp_path / "skipped", max_res_A=8.0)
    clean = prepare_stack(tmp_path / "bad" / "good.star", tmp_path / "clean", max_res_A=8.0)
    np.testing.assert_array_equal(skipped.images(np.arange(116)), clean.images(np.arange(116)))
    assert (mrcfile.read(layout.stack_path(skipped.folder, 0)).tobytes()
            == mrcfile.read(layout.stack_path(clean.folder, 0)).tobytes())
    for name in CTFParams._fields:
        np.testing.assert_array_equal(getattr(skipped.ctf_params, name),
                                      getattr(clean.ctf_params, name))
    a, b = (io.read_particles(layout.prepared_particles(s.folder)).particles
            for s in (skipped, clean))
    assert a["rlnImageName"].tolist() == b["rlnImageName"].tolist()
    assert (skipped.box, skipped.apix, skipped.shard_rows) == (clean.box, clean.apix,
                                                               clean.shard_rows)
    # and so are their classes: the same states, bit for bit, after online EM and a full pass
    from class2d.classify import classify_all

    config = {"n_classes": 3, "max_res_A": 12.0, "online_iterations": 2, "batch_per_class": 10}
    for stack in (skipped, clean):
        classify_all(stack.folder, os.path.join(stack.folder, "classify"), config, seed=1,
                     backend="cpu")
    with (np.load(layout.state_path(os.path.join(skipped.folder, "classify"), 3)) as a,
          np.load(layout.state_path(os.path.join(clean.folder, "classify"), 3)) as b):
        for key in ("references", "classes", "shifts", "sigma2"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bad_particles_error_mode_stops_at_the_first_naming_file_and_row(demo_star, tmp_path):
    star, data = demo_star
    spoilt = bad_set(star, data, tmp_path / "bad")
    with pytest.raises(InputError, match=r"particles\.star: rlnDefocusU of particle 21 is "
                                         r"'15x00', not a number"):
        prepare_stack(spoilt, tmp_path / "out", max_res_A=8.0, bad_particles="error")
    table = io.read_particles(spoilt)
    io.write_particles(table.subset(np.arange(20)), tmp_path / "bad" / "first.star")
    with pytest.raises(InputError, match=r"first\.star: image 000004@particles\.mrcs is constant "
                                         r"\(0 everywhere: no particle\) \(particle 4;"):
        prepare_stack(tmp_path / "bad" / "first.star", tmp_path / "out", max_res_A=8.0,
                      bad_particles="error")
    assert not (tmp_path / "out" / "prepared.yaml").exists()


def test_too_many_bad_particles_is_one_error_and_leaves_nothing(demo_star, tmp_path):
    star, data = demo_star
    spoilt = bad_set(star, data, tmp_path / "bad")
    with pytest.raises(InputError, match=r"particles\.star: at least 4 of 120 particles are bad "
                                         r"\(1 bad_number:rlnDefocusU, 1 constant_image, 1 "
                                         r"index_past_stack, 1 non_finite_pixels\): more than "
                                         r"prepare.max_bad_fraction 0.03"):
        prepare_stack(spoilt, tmp_path / "out", max_res_A=8.0, max_bad_fraction=0.03)
    assert not (tmp_path / "out" / "prepared.yaml").exists()
    assert not list((tmp_path / "out").glob("stack_*"))
    with pytest.raises(ConfigError, match="prepare.bad_particles"):
        prepare_stack(spoilt, tmp_path / "out", bad_particles="ignore")


def test_number_faults_find_every_unusable_value(demo_star):
    from class2d.faults import number_faults

    table = io.read_particles(demo_star[0])
    defocus = table.particles["rlnDefocusV"].astype(object)
    defocus[[2, 5, 9]] = ["abc", np.nan, "inf"]
    table.particles["rlnDefocusV"] = defocus
    table.particles.loc[7, "rlnDefocusAngle"] = np.nan
    found = number_faults(table)
    assert found.rows.tolist() == [2, 5, 7, 9]
    assert found.reasons.tolist() == ["bad_number:rlnDefocusV"] * 2 + [
        "bad_number:rlnDefocusAngle", "bad_number:rlnDefocusV"]
