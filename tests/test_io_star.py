"""RELION STAR reading and writing, on the real files in ../shared/data."""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import starfile
import starfile.writer

from class2d.errors import InputError
from class2d.io import (read_images, read_particles, read_star, require_ctf, write_stack,
                        write_star, write_star_blocks)

#: label, particles, optics groups, Å/px of group 1, box (None: not in the STAR, stack absent)
PARTICLE_STARS = [
    ("relion31", 5, 1, 2.806, 256),               # header says 1 Å: must not be used
    ("relion31_reversed", 5, 1, 2.806, 256),
    ("relion31_6groups", 139, 6, 1.25, 196),
    ("empiar10076_star", 7, 1, 5.0 * 1e4 / 38168, 320),   # box from the MRC header (0 Å there)
    ("aspire30", 17, 2, 5.0 * 1e4 / 37369.207031, 200),
    ("aspire31", 17, 2, 1.4, 200),                 # no rlnImageSize: box from the header
    ("aspire_incomplete_ctf", 1, 1, 5.0 * 1e4 / 37369.207031, 200),
    ("aspire_one_image", 1, 1, 5.0 * 1e4 / 37369.207031, None),
    ("aspire_d4", 17, 2, 5.0 * 1e4 / 37369.207031, 200),
    ("sta_tilt", 219, 1, 1.96 * 1e4 / 10000, 64),
    ("relion5", 17, 1, 0.89, 448),
    ("relion30_pfcrt", 5, 1, 1.035 * 1e4 / 10000, None),
    ("topaz_particles", 1500, 1, 3.733333 * 1e4 / 38023, None),
    ("one_loop", 16, 1, 5.0 * 1e4 / 10000, None),
]

#: real STAR files that hold no particles, and why reading them fails
NOT_PARTICLE_STARS = [
    ("postprocess", "no particle block"),
    ("pipeline", "no particle block"),
    ("model", "no particle block"),
    ("optimiser2d", "no particle block"),
    ("optimiser3d", "no particle block"),
    ("sampling2d", "no particle block"),
    ("sampling3d", "no particle block"),
    ("topaz_ctf", "no particle block"),        # per-micrograph CTF, no rlnImageName
    ("data_style", "no pixel size"),           # starfile's parser test: images but no optics
]


@pytest.mark.parametrize("label, n, groups, apix, box", PARTICLE_STARS)
def test_reads_every_particle_star(data_file, label, n, groups, apix, box):
    table = read_star(data_file(label))
    assert table.n == n
    assert len(table.optics) == groups
    first_group = table.particles["rlnOpticsGroup"].to_numpy() == 1
    assert table.pixel_size()[first_group][0] == pytest.approx(apix, rel=1e-12)
    if box is None:
        assert "rlnImageSize" not in table.optics.columns
        with pytest.raises(InputError, match="no rlnImageSize"):
            table.box_size()
    else:
        assert np.all(table.box_size() == box)
    legacy = {"rlnMagnification", "rlnDetectorPixelSize", "rlnOriginX", "rlnOriginY"}
    assert not legacy & set(table.particles.columns)
    assert set(table.particles["rlnOpticsGroup"]) <= set(table.optics["rlnOpticsGroup"])
    assert table.source == str(data_file(label))


@pytest.mark.parametrize("label, problem", NOT_PARTICLE_STARS)
def test_non_particle_stars_raise_input_error(data_file, label, problem):
    path = data_file(label)
    assert starfile.read(path, always_dict=True)          # a valid STAR file, just not particles
    with pytest.raises(InputError, match=problem) as err:
        read_star(path)
    assert str(err.value).startswith(f"{path}: ")


def test_relion31_known_values(data_file):
    table = read_star(data_file("relion31"))
    first = table.particles.iloc[0]
    assert first["rlnDefocusU"] == 13108.082418
    assert first["rlnDefocusAngle"] == -160.39
    assert first["rlnOriginXAngst"] == 0.019324
    assert first["rlnImageOriginalName"].startswith("000001@Extract/job133/")   # carried through
    ctf = table.ctf_params()
    assert ctf.voltage[0] == 300.0 and ctf.cs[0] == 0.01 and ctf.amplitude_contrast[0] == 0.1
    paths, indices = table.image_locations()
    assert set(paths) == {str(data_file("relion31_stack"))}
    assert indices.tolist() == [0, 1, 2, 3, 4]


def test_block_order_does_not_matter(data_file):
    one, two = read_star(data_file("relion31")), read_star(data_file("relion31_reversed"))
    pd.testing.assert_frame_equal(one.particles, two.particles)
    pd.testing.assert_frame_equal(one.optics, two.optics)


def test_relion30_optics_groups_and_origins(data_file):
    path = data_file("aspire30")
    raw = starfile.read(path)
    table = read_star(path)
    apix = 5.0 * 1e4 / 37369.207031
    # two voltages (300 and 200 kV) make two groups, as in the RELION 3.1 version of the file
    assert sorted(table.optics["rlnVoltage"]) == [200.0, 300.0]
    voltages = table.optics_column("rlnVoltage")
    np.testing.assert_array_equal(voltages, raw["rlnVoltage"].to_numpy())
    np.testing.assert_allclose(table.particles["rlnOriginXAngst"], raw["rlnOriginX"] * apix, rtol=1e-15)
    np.testing.assert_allclose(table.particles["rlnOriginYAngst"], raw["rlnOriginY"] * apix, rtol=1e-15)
    assert "rlnGroupNumber" in table.particles.columns
    assert read_star(data_file("aspire_d4")).particles["rlnSymmetryGroup"].iloc[0] == "D4"


def test_relion306_origins_in_pixels(data_file):
    table = read_star(data_file("relion30_pfcrt"))
    assert table.particles["rlnOriginXAngst"].iloc[0] == pytest.approx(-0.14063 * 1.035, rel=1e-12)
    assert table.particles["rlnOriginYAngst"].iloc[0] == pytest.approx(-0.04688 * 1.035, rel=1e-12)
    assert table.particles["rlnImageOriginalName"].iloc[0] == "000001@J407/imported/subtracted.mrcs"


def test_empiar10076_star_values(data_file):
    table = read_star(data_file("empiar10076_star"))
    np.testing.assert_array_equal(table.particles["rlnDefocusU"],
                                  [15301.1, 15303.0, 15150.7, 15181.9, 15366.8, 15305.0, 15177.4])
    assert table.pixel_size()[0] == pytest.approx(1.31, abs=1e-5)
    assert table.optics["rlnAmplitudeContrast"].tolist() == [0.07]


def test_incomplete_ctf_is_caught_by_require_ctf(data_file):
    table = read_star(data_file("aspire_incomplete_ctf"))
    with pytest.raises(InputError, match="rlnVoltage") as err:
        require_ctf(table)
    assert str(data_file("aspire_incomplete_ctf")) in str(err.value)
    require_ctf(read_star(data_file("aspire30")))


def test_no_ctf_columns_raises(data_file):
    with pytest.raises(InputError, match=r"rlnDefocusU") as err:
        require_ctf(read_star(data_file("one_loop")))
    assert str(err.value).startswith(f"{data_file('one_loop')}: ")


@pytest.mark.parametrize("label", [row[0] for row in PARTICLE_STARS])
def test_round_trip(data_file, tmp_path, label, assert_same_images):
    table = read_star(data_file(label))
    out = tmp_path / "out.star"
    write_star(table, out)
    back = read_star(out)
    names = "rlnImageName"
    pd.testing.assert_frame_equal(back.particles.drop(columns=names),
                                  table.particles.drop(columns=names))
    pd.testing.assert_frame_equal(back.optics.drop(columns="rlnImageDimensionality", errors="ignore"),
                                  table.optics.drop(columns="rlnImageDimensionality", errors="ignore"))
    assert_same_images(back, table)
    # what starfile itself reads from our file agrees, and the layout is RELION 3.1's
    raw = starfile.read(out)
    assert list(raw) == ["optics", "particles"]
    pd.testing.assert_frame_equal(raw["particles"].drop(columns=names),
                                  table.particles.drop(columns=names))
    text = out.read_text()
    assert text.count("# version 30001") == 2
    assert re.search(r"# version 30001\n\ndata_optics\n", text)
    assert list(tmp_path.iterdir()) == [out]          # no temporary file left behind


def test_relion5_extra_columns_survive(data_file, tmp_path):
    source = data_file("relion5")
    table = read_star(source)
    write_star(table, tmp_path / "r5.star")
    back = read_star(tmp_path / "r5.star")
    extra = ["rlnBeamTiltX", "rlnBeamTiltY", "rlnOddZernike", "rlnEvenZernike", "rlnMagMat00",
             "rlnMagMat01", "rlnMagMat10", "rlnMagMat11", "rlnCtfDataAreCtfPremultiplied",
             "rlnMicrographOriginalPixelSize"]
    pd.testing.assert_frame_equal(back.optics[extra], table.optics[extra])
    zernike = "[0.0680480107376,0.0982451014894,-1.79877045848,0,0,-1.36333410593]"
    assert back.optics["rlnOddZernike"].iloc[0] == zernike
    assert zernike in (tmp_path / "r5.star").read_text()
    assert zernike in source.read_text()


def test_six_optics_groups_round_trip(data_file, tmp_path):
    table = read_star(data_file("relion31_6groups"))
    assert table.optics["rlnOpticsGroupName"].tolist()[:2] == ["opticsGroup5", "opticsGroup3"]
    assert np.unique(table.pixel_size()).tolist() == [1.24, 1.25]
    write_star(table, tmp_path / "six.star")
    back = read_star(tmp_path / "six.star")
    np.testing.assert_array_equal(back.optics_column("rlnSphericalAberration"),
                                  table.optics_column("rlnSphericalAberration"))


def test_image_paths_resolve_like_relion_project(tmp_path):
    """RELION resolves image names against its project directory, an ancestor of job folders."""
    project = tmp_path / "project"
    images = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    write_stack(project / "Extract" / "job007" / "stack.mrcs", images, apix=2.0)
    job = project / "Class2D" / "job012"
    job.mkdir(parents=True)
    frame = pd.DataFrame({"rlnImageName": [f"{i:06d}@Extract/job007/stack.mrcs" for i in (3, 1)],
                          "rlnOpticsGroup": [1, 1], "rlnDefocusU": [1e4, 2e4],
                          "rlnDefocusV": [1e4, 2e4]})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [2.0]})
    starfile.write({"optics": optics, "particles": frame}, job / "run_data.star")
    table = read_star(job / "run_data.star")
    assert table.base_dir == str(project)
    assert table.box_size().tolist() == [16, 16]
    np.testing.assert_array_equal(read_images(table), images[[2, 0]])


def test_overwrite_false_refuses(data_file, tmp_path):
    table = read_star(data_file("relion31"))
    write_star(table, tmp_path / "a.star")
    with pytest.raises(FileExistsError):
        write_star(table, tmp_path / "a.star", overwrite=False)


# ---------------------------------------------------------------- bad input


def _write_relion31(path, pixel_size=1.5, groups=(1,), image="1@stack.mrcs"):
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
                           "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [pixel_size],
                           "rlnImageSize": [16]})
    particles = pd.DataFrame({"rlnImageName": [image] * len(groups), "rlnOpticsGroup": list(groups),
                              "rlnDefocusU": [1e4] * len(groups), "rlnDefocusV": [1e4] * len(groups)})
    starfile.write({"optics": optics, "particles": particles}, path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_star(tmp_path / "nope.star")
    assert str(err.value).startswith(str(tmp_path / "nope.star"))


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.star"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as err:
        read_star(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("pixel_size", [0.0, -1.2])
def test_bad_pixel_size(tmp_path, pixel_size):
    path = _write_relion31(tmp_path / "p.star", pixel_size=pixel_size)
    with pytest.raises(InputError, match="must be > 0") as err:
        read_star(path)
    assert str(path) in str(err.value)


def test_missing_pixel_size(tmp_path):
    path = tmp_path / "p.star"
    starfile.write(pd.DataFrame({"rlnImageName": ["1@s.mrcs"], "rlnDefocusU": [1e4]}), path)
    with pytest.raises(InputError, match="no pixel size") as err:
        read_star(path)
    assert str(path) in str(err.value)


def test_unknown_optics_group(tmp_path):
    path = _write_relion31(tmp_path / "g.star", groups=(1, 3))
    with pytest.raises(InputError, match="optics group 3"):
        read_star(path)


def test_bad_image_name(tmp_path):
    path = _write_relion31(tmp_path / "n.star", image="first@stack.mrcs")
    with pytest.raises(InputError, match="N@path") as err:
        read_star(path)
    assert str(path) in str(err.value)


def test_read_particles_dispatches_on_extension(data_file, tmp_path):
    assert read_particles(data_file("relion31")).n == 5
    assert read_particles(data_file("empiar10076_cs")).n == 7
    (tmp_path / "p.txt").write_text("")
    with pytest.raises(InputError, match="expected .star or .cs"):
        read_particles(tmp_path / "p.txt")


def test_particles_file_is_never_modified(data_file, tmp_path):
    source = data_file("relion31")
    before = source.read_bytes()
    table = read_star(source)
    write_star(table, tmp_path / "x.star")
    assert source.read_bytes() == before


# ---------------------------------------------------------------- RELION acceptance


def _run(*args: str, cwd) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not on PATH")
def test_relion_reads_our_star_and_stack(data_file, tmp_path):
    table = read_star(data_file("relion31"))
    images = read_images(table)
    write_stack(tmp_path / "particles.mrcs", images, apix=2.806)
    ours = table.with_columns(rlnImageName=[f"{i + 1:06d}@particles.mrcs" for i in range(table.n)])
    ours.base_dir = str(tmp_path)
    write_star(ours, tmp_path / "ours.star")

    out = _run("relion_star_handler", "--i", "ours.star", "--o", "selected.star",
               "--select", "rlnDefocusU", "--minval", "0", cwd=tmp_path)
    assert "with 5 item(s)" in out
    back = read_star(tmp_path / "selected.star")
    assert back.n == 5
    assert back.pixel_size().tolist() == [2.806] * 5
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnAnglePsi", "rlnOriginXAngst",
                   "rlnOriginYAngst", "rlnCoordinateX"):
        np.testing.assert_allclose(back.particles[column], table.particles[column], atol=1e-6)
    assert back.particles["rlnImageName"].str.endswith("@particles.mrcs").all()

    stats = _run("relion_image_handler", "--i", "ours.star", "--stats", cwd=tmp_path)
    found = re.findall(r"avg= (\S+) stddev= (\S+)", stats)
    assert len(found) == 5
    want = np.c_[images.mean(axis=(1, 2)), images.std(axis=(1, 2))]
    np.testing.assert_allclose(np.array(found, float), want, rtol=1e-4, atol=1e-6)
    header = _run("relion_image_handler", "--i", "particles.mrcs", "--stats", cwd=tmp_path)
    assert "angpix = 2.806" in header


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not on PATH")
def test_relion_reads_star_converted_from_cryosparc(data_file, tmp_path):
    table = read_particles(data_file("cs_class2d"))
    write_star(table, tmp_path / "from_cs.star")
    out = _run("relion_star_handler", "--i", "from_cs.star", "--o", "selected.star",
               "--select", "rlnClassNumber", "--minval", "2", "--maxval", "2", cwd=tmp_path)
    chosen = table.particles["rlnClassNumber"].to_numpy() == 2
    assert chosen.sum() == 7 and "with 7 item(s)" in out
    back = read_star(tmp_path / "selected.star")
    np.testing.assert_allclose(back.particles["rlnAnglePsi"], table.particles["rlnAnglePsi"][chosen],
                               atol=1e-6)
    np.testing.assert_allclose(back.particles["rlnOriginYAngst"],
                               table.particles["rlnOriginYAngst"][chosen], atol=1e-6)
    assert back.pixel_size() == pytest.approx(np.full(7, 1.345), rel=1e-6)


def _awkward_blocks() -> dict[str, pd.DataFrame]:
    """Tables with the values a STAR writer can get wrong: float32 and float64 that need
    every digit, tiny and huge exponents, NaN, −0, ints, strings empty or with spaces."""
    rng = np.random.default_rng(5)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{k}@classes.mrcs" for k in (1, 2, 3, 4)],
        "rlnClassNumber": np.array([1, 2, 3, 4], np.int64),
        "rlnClassDistribution": rng.random(4),                        # float64, 16–17 digits
        "rlnNormCorrection": rng.random(4).astype(np.float32),
        "rlnEstimatedResolution": [1e-7, 1e300, np.nan, -0.0],
        "rlnMicrographName": ["Movies/a b.mrc", "", "m.mrc", "x"]})
    groups = pd.DataFrame({"c2dSuperclass": [1, 2], "c2dParticleCount": [10, 0]})
    return {"classes": classes, "superclasses": groups}


def test_star_blocks_round_trip_through_starfile(tmp_path):
    blocks = _awkward_blocks()
    write_star_blocks(blocks, tmp_path / "b.star")
    back = starfile.read(tmp_path / "b.star", always_dict=True)
    assert list(back) == ["classes", "superclasses"]
    pd.testing.assert_frame_equal(back["superclasses"], blocks["superclasses"])
    got, want = back["classes"], blocks["classes"]
    assert got.columns.tolist() == want.columns.tolist()
    for column in ("rlnClassNumber", "rlnClassDistribution", "rlnEstimatedResolution"):
        np.testing.assert_array_equal(got[column].to_numpy(), want[column].to_numpy())
    assert np.signbit(got["rlnEstimatedResolution"].iloc[3])                # −0 stays −0
    # float32 is written at float32 precision, and reads back to the same float32
    np.testing.assert_array_equal(got["rlnNormCorrection"].to_numpy(np.float32),
                                  want["rlnNormCorrection"].to_numpy())
    assert got["rlnReferenceImage"].tolist() == want["rlnReferenceImage"].tolist()
    assert got["rlnMicrographName"].fillna("").tolist() == ["Movies/a b.mrc", "", "m.mrc", "x"]


def test_star_text_has_the_documented_form(tmp_path):
    frame = pd.DataFrame({"rlnA": np.array([0.1, np.nan], np.float32), "rlnB": [1 / 3, 2.5e-8],
                          "rlnC": [7, -1], "rlnD": ["a b", "c"]})
    write_star_blocks({"t": frame}, tmp_path / "t.star")
    assert (tmp_path / "t.star").read_text() == (
        "# written by class2d\n\ndata_t\n\nloop_\n_rlnA #1\n_rlnB #2\n_rlnC #3\n_rlnD #4\n"
        '0.1\t0.3333333333333333\t7\t"a b"\nnan\t2.5e-08\t-1\tc\n\n\n')


def test_star_bytes_do_not_depend_on_the_time(data_file, tmp_path, monkeypatch):
    """starfile.write stamps the time into its banner: classify/classes.star written through
    it differed between two identical runs."""
    blocks = _awkward_blocks()
    table = read_star(data_file("relion31_6groups"))
    write_star_blocks(blocks, tmp_path / "a.star")
    write_star(table, tmp_path / "a_particles.star")

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 1, 2, 3, 4, 5)

    monkeypatch.setattr(starfile.writer, "datetime", Later)
    write_star_blocks(blocks, tmp_path / "b.star")
    write_star(table, tmp_path / "b_particles.star")
    assert (tmp_path / "a.star").read_bytes() == (tmp_path / "b.star").read_bytes()
    assert ((tmp_path / "a_particles.star").read_bytes()
            == (tmp_path / "b_particles.star").read_bytes())
