"""CryoSPARC .cs reading and writing, and STAR ⇄ .cs conversion, on real files (../shared/data)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from class2d.errors import InputError
from class2d.io import (read_cs, read_images, read_particles, read_star, write_cs, write_particles,
                        write_stack)

F4 = dict(rtol=2e-7, atol=0)         # float32 precision


@pytest.mark.parametrize("label, n, apix, box", [
    ("cs_class2d", 22, 1.345, 300),
    ("cs_refine3d", 2019, 2.95, 180),
    ("empiar10076_cs", 7, 1.31, 320),
])
def test_reads_every_particle_cs(data_file, label, n, apix, box):
    table = read_cs(data_file(label))
    raw = np.load(data_file(label))
    assert table.n == n
    assert table.pixel_size() == pytest.approx(np.full(n, apix), rel=1e-5)
    assert np.all(table.box_size() == box)
    np.testing.assert_array_equal(table.particles["rlnDefocusU"], raw["ctf/df1_A"])
    np.testing.assert_array_equal(table.particles["rlnDefocusV"], raw["ctf/df2_A"])
    np.testing.assert_allclose(table.particles["rlnDefocusAngle"],
                               np.degrees(raw["ctf/df_angle_rad"].astype(float)))
    np.testing.assert_array_equal(table.optics_column("rlnVoltage"), raw["ctf/accel_kv"])
    numbers = table.particles["rlnImageName"].str.split("@").str[0].astype(int)
    np.testing.assert_array_equal(numbers, raw["blob/idx"].astype(int) + 1)
    np.testing.assert_array_equal(table.particles["uid"], raw["uid"])
    assert table.cs_dtype == raw.dtype


def test_schema_only_cs_has_no_particles(data_file):
    path = data_file("cs_schema_only")
    assert len(np.load(path)) == 0 and "blob/path" not in np.load(path).dtype.names
    with pytest.raises(InputError, match="no blob/path") as err:
        read_cs(path)
    assert str(err.value).startswith(f"{path}: ")


def test_class2d_export_alignments(data_file):
    """Order, units and signs of ``alignments2D/*`` on the real CryoSPARC 2D-classification export.

    Evidence for the mapping (see ``class2d.io.cs``):
    * unit: ``alignments2D/shift`` is in pixels of the alignment, ``alignments2D/psize_A`` — here
      equal to ``blob/psize_A`` (1.345 Å) — and every shift in this file is a whole multiple of
      6 px (CryoSPARC's coarse shift grid at this box), which Å values would not be;
    * order: pyem's ``csparc2star`` (``metadata/cryosparc2.py``) assigns the (n, 2) field to
      ``star.Relion.ORIGINS == ["rlnOriginX", "rlnOriginY"]``, i.e. column 0 is x; helicon's
      converter does the same.  (cryosparc-tools' README example unpacks it as ``shift_y,
      shift_x``, in a snippet that is otherwise wrong — it multiplies the fractions it meant to
      assign.)  The file itself cannot tell x from y: both columns range over the same grid;
    * sign: pyem copies shift and pose unchanged (``rlnAnglePsi = degrees(pose)``, after scaling
      the shift by ``alignments2D/psize_A / blob/psize_A``); helicon negates both.  We follow pyem.
    """
    path = data_file("cs_class2d")
    raw = np.load(path)
    table = read_cs(path)
    shift, psize = raw["alignments2D/shift"].astype(float), raw["alignments2D/psize_A"].astype(float)
    np.testing.assert_array_equal(psize, raw["blob/psize_A"])
    np.testing.assert_array_equal(shift % 6, 0)
    assert np.abs(shift).max() == 18 and raw["blob/shape"][0].tolist() == [300, 300]
    p = table.particles
    np.testing.assert_array_equal(p["rlnOriginXAngst"], shift[:, 0] * psize)
    np.testing.assert_array_equal(p["rlnOriginYAngst"], shift[:, 1] * psize)
    np.testing.assert_array_equal(p["rlnAnglePsi"], np.degrees(raw["alignments2D/pose"].astype(float)))
    np.testing.assert_array_equal(p["rlnClassNumber"], raw["alignments2D/class"].astype(int) + 1)
    assert p["rlnClassNumber"].tolist()[:5] == [5, 2, 2, 1, 2]
    assert p["rlnOriginYAngst"].iloc[0] == pytest.approx(12 * 1.345, rel=2e-7)
    np.testing.assert_array_equal(p["alignments2D/class_posterior"], raw["alignments2D/class_posterior"])
    # exported .cs files mark paths "next to the .cs" with a leading '>': dropped
    assert raw["blob/path"][0].startswith(b">J1/imported/")
    assert p["rlnImageName"].iloc[0] == "1@J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs"


def test_refine3d_fields_are_kept(data_file):
    table = read_cs(data_file("cs_refine3d"))
    raw = np.load(data_file("cs_refine3d"))
    for k in range(3):
        np.testing.assert_array_equal(table.particles[f"alignments3D/pose[{k}]"],
                                      raw["alignments3D/pose"][:, k])
    assert table.particles["ctf/type"].iloc[0] == "ctffind4"
    assert "rlnClassNumber" not in table.particles.columns       # no 2D classification in it


@pytest.mark.parametrize("label", ["cs_class2d", "cs_refine3d", "empiar10076_cs"])
def test_cs_round_trip_is_exact(data_file, tmp_path, label):
    source = data_file(label)
    for path in source.parent.glob(source.stem + ".*"):      # the .cs and its images, if any
        shutil.copy(path, tmp_path)
    table = read_cs(tmp_path / source.name)
    write_cs(table, tmp_path / "out.cs")
    raw, back = np.load(source), np.load(tmp_path / "out.cs")
    assert back.dtype == raw.dtype                             # order, dtypes, shapes, string widths
    for name in raw.dtype.names:
        want = np.char.lstrip(raw[name], b">") if name == "blob/path" else raw[name]
        np.testing.assert_array_equal(back[name], want, err_msg=name)
    again = read_cs(tmp_path / "out.cs")
    pd.testing.assert_frame_equal(again.particles, table.particles)
    pd.testing.assert_frame_equal(again.optics, table.optics)


@pytest.mark.parametrize("label", ["cs_class2d", "empiar10076_cs"])
def test_cs_through_star_keeps_relion_columns(data_file, tmp_path, label, assert_same_images):
    table = read_cs(data_file(label))
    write_particles(table, tmp_path / "p.star")
    via_star = read_star(tmp_path / "p.star")
    # of the .cs fields only the contrast sign passes through a STAR (as c2dContrastSign)
    assert [c for c in via_star.particles.columns if "/" in c or c == "uid"] == ["blob/sign"]
    assert "c2dContrastSign" in (tmp_path / "p.star").read_text()
    relion = [c for c in table.particles.columns if c.startswith("rln") and c != "rlnImageName"]
    pd.testing.assert_frame_equal(via_star.particles[relion], table.particles[relion])
    assert_same_images(via_star, table)
    write_cs(via_star, tmp_path / "p.cs")
    raw, back = np.load(data_file(label)), np.load(tmp_path / "p.cs")
    for name in ("blob/idx", "blob/shape", "blob/psize_A", "blob/sign", "ctf/accel_kv", "ctf/cs_mm",
                 "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A", "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/bfactor"):
        np.testing.assert_array_equal(back[name], raw[name], err_msg=name)
    if "alignments2D/class" in raw.dtype.names:
        for name in ("alignments2D/class", "alignments2D/pose", "alignments2D/shift"):
            np.testing.assert_array_equal(back[name], raw[name], err_msg=name)


def test_empiar10076_star_and_cs_describe_the_same_images(data_file, tmp_path):
    star, cs = read_star(data_file("empiar10076_star")), read_cs(data_file("empiar10076_cs"))
    for got, want in zip(cs.image_locations(), star.image_locations()):
        np.testing.assert_array_equal(got, want)
    assert set(star.image_locations()[0]) == {str(data_file("empiar10076_stack"))}
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_allclose(cs.particles[column], star.particles[column], **F4)
    for column in ("rlnImagePixelSize", "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        np.testing.assert_allclose(cs.optics_column(column), star.optics_column(column), **F4)
    np.testing.assert_array_equal(read_images(cs), read_images(star))

    # STAR → .cs → table agrees with the STAR, and with the .cs CryoSPARC wrote
    write_cs(star, tmp_path / "from_star.cs")
    converted = read_cs(tmp_path / "from_star.cs")
    for got, want in zip(converted.image_locations(), star.image_locations()):
        np.testing.assert_array_equal(got, want)
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        np.testing.assert_allclose(converted.particles[column], star.particles[column], **F4)
    mine, theirs = np.load(tmp_path / "from_star.cs"), np.load(data_file("empiar10076_cs"))
    for name in ("blob/idx", "blob/shape", "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A",
                 "ctf/df2_A", "ctf/df_angle_rad", "blob/psize_A"):
        assert mine.dtype[name] == theirs.dtype[name], name
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-6, err_msg=name)


def test_star_origin_cs_has_cryosparc_fields(data_file, tmp_path):
    table = read_star(data_file("relion31"))
    write_cs(table, tmp_path / "r.cs")
    out = np.load(tmp_path / "r.cs")
    assert out.dtype["uid"] == np.dtype("<u8") and len(np.unique(out["uid"])) == 5
    assert out.dtype["blob/idx"] == np.dtype("<u4") and out["blob/idx"].tolist() == [0, 1, 2, 3, 4]
    assert out.dtype["blob/shape"] == np.dtype(("<u4", (2,)))
    assert out["blob/shape"][0].tolist() == [256, 256]
    assert out["blob/psize_A"][0] == np.float32(2.806)
    assert out.dtype["blob/sign"] == np.dtype("<f4") and out["blob/sign"].tolist() == [1.0] * 5
    assert out.dtype["alignments2D/class"] == np.dtype("<u4")
    assert out["alignments2D/class"].tolist() == [0] * 5
    p = table.particles
    np.testing.assert_allclose(out["alignments2D/pose"], np.radians(p["rlnAnglePsi"]), **F4)
    np.testing.assert_allclose(out["alignments2D/shift"][:, 0] * 2.806, p["rlnOriginXAngst"], rtol=1e-6)
    np.testing.assert_allclose(out["ctf/df_angle_rad"], np.radians(p["rlnDefocusAngle"]), **F4)
    assert "location/center_x_frac" not in out.dtype.names    # micrographs absent: shape unknown
    uids_again = np.load(tmp_path / "r.cs")["uid"]
    write_cs(table, tmp_path / "r2.cs")
    np.testing.assert_array_equal(np.load(tmp_path / "r2.cs")["uid"], uids_again)   # deterministic


def test_each_particles_contrast_sign_survives_cs_star_cs(data_file, tmp_path):
    """A .cs merging CryoSPARC-extracted (-1, dark) and imported (+1, white) particles:
    each keeps its blob/sign through the table, a STAR and back, and cryosparc-tools reads
    it from the .cs we write; a table without the column (a RELION STAR's) gives +1."""
    raw = np.load(data_file("empiar10076_cs"))
    signs = np.array([-1, 1, -1, -1, 1, -1, 1], np.float32)
    raw["blob/sign"] = signs
    source = _save_cs(tmp_path / "mixed.cs", raw)
    write_particles(read_cs(source), tmp_path / "mixed.star")
    via_star = read_star(tmp_path / "mixed.star")
    np.testing.assert_array_equal(via_star.image_signs(), signs)
    write_cs(via_star, tmp_path / "back.cs")
    np.testing.assert_array_equal(np.load(tmp_path / "back.cs")["blob/sign"], signs)
    assert read_star(data_file("empiar10076_star")).image_signs().tolist() == [1.0] * 7
    dataset = pytest.importorskip("cryosparc.dataset")
    np.testing.assert_array_equal(dataset.Dataset.load(tmp_path / "back.cs")["blob/sign"], signs)


def test_locations_from_micrograph_headers(data_file, tmp_path):
    """Coordinates become fractions of the micrograph (ny, nx) read from its header, and back."""
    table = read_star(data_file("relion31"))
    write_stack(tmp_path / "mic.mrc", np.zeros((1, 3000, 4000), np.float32), apix=1.403)
    table = table.with_columns(rlnMicrographName=["mic.mrc"] * table.n)
    table.base_dir = str(tmp_path)
    write_cs(table, tmp_path / "loc.cs")
    out = np.load(tmp_path / "loc.cs")
    assert out["location/micrograph_shape"][0].tolist() == [3000, 4000]
    p = table.particles
    np.testing.assert_allclose(out["location/center_x_frac"], p["rlnCoordinateX"] / 4000, **F4)
    np.testing.assert_allclose(out["location/center_y_frac"], p["rlnCoordinateY"] / 3000, **F4)
    back = read_cs(tmp_path / "loc.cs")
    np.testing.assert_allclose(back.particles["rlnCoordinateX"], table.particles["rlnCoordinateX"], **F4)
    np.testing.assert_allclose(back.particles["rlnCoordinateY"], table.particles["rlnCoordinateY"], **F4)
    assert back.particles["rlnMicrographName"].tolist() == ["mic.mrc"] * 5


def test_blob_path_falls_back_to_basename(data_file, tmp_path):
    raw = np.load(data_file("empiar10076_cs"))
    raw["blob/path"] = b"J3/imported/empiar_10076_7.mrc"
    np.save(tmp_path / "moved.npy", raw)
    (tmp_path / "moved.npy").rename(tmp_path / "moved.cs")
    shutil.copy(data_file("empiar10076_stack"), tmp_path)
    table = read_particles(tmp_path / "moved.cs")
    assert set(table.image_locations()[0]) == {str(tmp_path / "empiar_10076_7.mrc")}
    assert read_images(table, rows=[6]).shape == (1, 320, 320)


# ---------------------------------------------------------------- bad input


def _save_cs(path, array):
    with open(path, "wb") as handle:
        np.save(handle, array)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_cs(tmp_path / "absent.cs")
    assert str(tmp_path / "absent.cs") in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", bytes(range(256)) * 8],
                         ids=["empty", "bad-npy", "bytes"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.cs"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a CryoSPARC .cs file") as err:
        read_cs(path)
    assert str(err.value).startswith(f"{path}: ")


def test_plain_array_is_not_a_cs(tmp_path):
    path = _save_cs(tmp_path / "plain.cs", np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="structured array"):
        read_cs(path)


def test_cs_without_blob_path(data_file, tmp_path):
    raw = np.load(data_file("empiar10076_cs"))
    keep = [n for n in raw.dtype.names if n != "blob/path"]
    path = _save_cs(tmp_path / "noblob.cs", raw[keep])
    with pytest.raises(InputError, match="no blob/path") as err:
        read_cs(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("psize", [0.0, -1.31])
def test_bad_pixel_size(data_file, tmp_path, psize):
    raw = np.load(data_file("empiar10076_cs"))
    raw["blob/psize_A"][3] = psize
    path = _save_cs(tmp_path / "psize.cs", raw)
    with pytest.raises(InputError, match="must be > 0") as err:
        read_cs(path)
    assert str(path) in str(err.value)


def test_missing_pixel_size(data_file, tmp_path):
    raw = np.load(data_file("empiar10076_cs"))
    path = _save_cs(tmp_path / "nopsize.cs", raw[[n for n in raw.dtype.names if n != "blob/psize_A"]])
    with pytest.raises(InputError, match="no pixel size"):
        read_cs(path)


def test_mixed_box_sizes(data_file, tmp_path):
    raw = np.load(data_file("empiar10076_cs"))
    raw["blob/shape"][2] = (256, 256)
    path = _save_cs(tmp_path / "mixed.cs", raw)
    with pytest.raises(InputError, match="mixed box sizes") as err:
        read_cs(path)
    assert str(path) in str(err.value)


# ---- one writer: every .cs goes through write_cs_fields

def test_class_averages_cs_has_cryosparcs_dtypes(tmp_path):
    from class2d.em.export import _write_classes_cs

    classes = pd.DataFrame({"rlnEstimatedResolution": [8.5, 999.0],
                            "c2dEffectiveClasses": [1.25, 0.0], "c2dParticleCount": [7, 0],
                            "c2dMeanPosterior": [0.75, 0.0]})
    _write_classes_cs(str(tmp_path / "classes.cs"), classes, 64, 3.5)
    array = np.load(tmp_path / "classes.cs")
    # CryoSPARC's dtypes: uid u8, indices and counts u4, floats f4
    assert array.dtype["uid"] == np.dtype("<u8")
    assert array.dtype["blob/idx"] == array.dtype["alignments2D/class"] == np.dtype("<u4")
    assert array.dtype["blob/shape"] == np.dtype(("<u4", (2,)))
    assert array.dtype["alignments2D/num_particles"] == np.dtype("<u4")
    assert array.dtype["alignments2D/res_A"] == np.dtype("<f4")
    assert array["uid"].tolist() == [1, 2] and array["blob/idx"].tolist() == [0, 1]
    assert array["blob/path"].tolist() == [b"classes.mrcs"] * 2
    assert array["blob/shape"].tolist() == [[64, 64]] * 2
    assert array["blob/psize_A"].tolist() == [3.5, 3.5] and array["blob/sign"].tolist() == [1, 1]
    assert array["alignments2D/res_A"].tolist() == [8.5, 999.0]
    assert array["alignments2D/class_ess"].tolist() == [1.25, 0.0]
    assert array["alignments2D/num_particles"].tolist() == [7, 0]
    assert array["alignments2D/class_posterior"].tolist() == [0.75, 0.0]


def test_an_empty_set_keeps_the_fields_of_its_template(data_file, tmp_path):
    from class2d.io import write_particle_set

    table = read_cs(data_file("cs_class2d"))
    paths = write_particle_set(table.subset(np.zeros(table.n, bool)), tmp_path, "none",
                               template=table)
    empty, full = np.load(paths["none.cs"]), np.load(write_cs_to(table, tmp_path / "all.cs"))
    assert empty.shape == (0,) and empty.dtype == full.dtype


def write_cs_to(table, path):
    write_cs(table, path)
    return path
