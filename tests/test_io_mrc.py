"""MRC stacks: reading real stacks, gathering particle images, writing valid stacks."""

from __future__ import annotations

import datetime
import io
import warnings

import mrcfile
import mrcfile.mrcobject
import numpy as np
import pandas as pd
import pytest

import class2d.io.mrc as mrc_module
from class2d.errors import InputError
from class2d.io import (ParticleTable, read_cs, read_header, read_images, read_star, read_stack,
                        write_stack)


def _mrcfile_data(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # RELION's stacks have no MAP ID
        with mrcfile.open(path, permissive=True) as mrc:
            return np.array(mrc.data)


def _table(tmp_path, names, box=16, apix=2.0) -> ParticleTable:
    particles = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [apix], "rlnImageSize": [box]})
    return ParticleTable(particles, optics, base_dir=str(tmp_path), source=str(tmp_path / "t.star"))


@pytest.mark.parametrize("label, shape, header_apix", [
    ("relion31_stack", (5, 256, 256), 1.0),
    ("empiar10076_stack", (7, 320, 320), 0.0),
    ("aspire_stack", (17, 200, 200), 0.0),
    ("sta_tilt_stack", (220, 64, 64), 1.0),
])
def test_read_stack_matches_mrcfile(data_file, label, shape, header_apix):
    path = data_file(label)
    stack = read_stack(path)
    assert stack.shape == shape and stack.dtype == np.float32
    assert isinstance(stack, np.memmap)
    np.testing.assert_array_equal(stack, _mrcfile_data(path))
    assert read_header(path).header_apix == header_apix      # the header's (wrong) pixel size
    assert not isinstance(read_stack(path, mmap=False), np.memmap)


def test_read_images_relion31(data_file):
    table = read_star(data_file("relion31"))
    assert table.pixel_size()[0] == 2.806                    # not the header's 1 Å
    reference = _mrcfile_data(data_file("relion31_stack"))
    images = read_images(table)
    assert images.shape == (5, 256, 256) and images.dtype == np.float32
    np.testing.assert_array_equal(images, reference)
    np.testing.assert_array_equal(read_images(table, rows=[4, 0, 2]), reference[[4, 0, 2]])
    mask = np.array([False, True, False, True, False])
    np.testing.assert_array_equal(read_images(table, rows=mask, dtype=np.float64), reference[mask])


@pytest.mark.parametrize("label", ["empiar10076_star", "empiar10076_cs"])
def test_read_images_empiar10076(data_file, label):
    table = read_star(data_file(label)) if label.endswith("star") else read_cs(data_file(label))
    images = read_images(table, rows=[6, 3])
    assert images.shape == (2, 320, 320)
    np.testing.assert_array_equal(images, _mrcfile_data(data_file("empiar10076_stack"))[[6, 3]])


def test_read_images_from_several_stacks_opens_each_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 16, 16)), rng.normal(size=(3, 16, 16))
    write_stack(tmp_path / "a.mrcs", a, apix=2.0)
    write_stack(tmp_path / "sub" / "b.mrcs", b, apix=2.0)
    table = _table(tmp_path, ["2@sub/b.mrcs", "4@a.mrcs", "1@a.mrcs", "3@sub/b.mrcs", "4@a.mrcs"])
    opened = []
    real = mrc_module.read_stack
    monkeypatch.setattr(mrc_module, "read_stack",
                        lambda path, mmap=True: opened.append(path) or real(path, mmap))
    images = read_images(table)
    np.testing.assert_allclose(images, np.stack([b[1], a[3], a[0], b[2], a[3]]), rtol=1e-7)
    assert sorted(opened) == [str(tmp_path / "a.mrcs"), str(tmp_path / "sub" / "b.mrcs")]
    assert read_images(table, rows=[]).shape == (0, 16, 16)


def test_write_stack_is_valid_with_pixel_size(tmp_path):
    images = np.random.default_rng(3).normal(size=(6, 32, 32))
    path = tmp_path / "out.mrcs"
    write_stack(path, images, apix=1.75)
    assert mrcfile.validate(str(path), print_file=io.StringIO())
    with mrcfile.open(path) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.data.shape == (6, 32, 32)
        assert mrc.is_image_stack() and int(mrc.header.ispg) == 0
        assert mrc.voxel_size.x == pytest.approx(1.75) and mrc.voxel_size.y == pytest.approx(1.75)
        np.testing.assert_array_equal(mrc.data, images.astype(np.float32))
    assert read_header(path).header_apix == pytest.approx(1.75)
    write_stack(tmp_path / "one.mrcs", images[0], apix=1.0)
    assert read_stack(tmp_path / "one.mrcs").shape == (1, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.mrcs", "out.mrcs"]


def test_write_stack_bytes_do_not_depend_on_the_time(tmp_path, monkeypatch):
    """mrcfile's default label holds the time of writing, so two writes a second apart
    differed (and test_simulate's same-seed test failed when its writes crossed a second)."""
    images = np.random.default_rng(4).normal(size=(2, 16, 16))
    write_stack(tmp_path / "a.mrcs", images, apix=1.0)

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2031, 1, 2, 3, 4, 5)

    monkeypatch.setattr(mrcfile.mrcobject, "datetime", Later)
    write_stack(tmp_path / "b.mrcs", images, apix=1.0)
    assert (tmp_path / "a.mrcs").read_bytes() == (tmp_path / "b.mrcs").read_bytes()
    with mrcfile.open(tmp_path / "a.mrcs") as mrc:
        assert mrc.header.nlabl == 1 and mrc.header.label[0].decode().startswith("class2d ")


def test_write_stack_refuses(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8)), apix=1.0)
    with pytest.raises(FileExistsError):
        write_stack(tmp_path / "s.mrcs", np.zeros((1, 8, 8)), apix=1.0, overwrite=False)
    for apix in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            write_stack(tmp_path / "t.mrcs", np.zeros((1, 8, 8)), apix=apix)


# ---------------------------------------------------------------- bad input


def test_index_past_end_of_stack(tmp_path):
    write_stack(tmp_path / "five.mrcs", np.zeros((5, 16, 16)), apix=2.0)
    table = _table(tmp_path, ["1@five.mrcs", "7@five.mrcs"])
    with pytest.raises(InputError, match=r"five.mrcs has 5 images, the table asks for image 7") as err:
        read_images(table)
    assert str(err.value).startswith(f"{tmp_path / 't.star'}: ")


def test_missing_stack(tmp_path):
    table = _table(tmp_path, ["1@gone.mrcs"])
    with pytest.raises(InputError, match="file not found") as err:
        read_images(table)
    assert str(tmp_path / "gone.mrcs") in str(err.value) and "t.star" in str(err.value)


def test_mixed_box_sizes(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 16, 16)), apix=2.0)
    write_stack(tmp_path / "b.mrcs", np.zeros((2, 24, 24)), apix=2.0)
    table = _table(tmp_path, ["1@a.mrcs", "1@b.mrcs"])
    table.optics = table.optics.drop(columns="rlnImageSize")
    with pytest.raises(InputError, match="mixed box sizes") as err:
        read_images(table)
    assert "t.star" in str(err.value)


def test_mixed_box_sizes_in_relion30_star(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 16, 16)), apix=2.0)
    write_stack(tmp_path / "b.mrcs", np.zeros((2, 24, 24)), apix=2.0)
    path = tmp_path / "mixed.star"
    path.write_text("data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n1@a.mrcs 2.0\n1@b.mrcs 2.0\n")
    with pytest.raises(InputError, match="mixed box sizes") as err:
        read_star(path)
    assert str(err.value).startswith(f"{path}: ")


def test_box_size_disagrees_with_stack(tmp_path):
    write_stack(tmp_path / "a.mrcs", np.zeros((2, 16, 16)), apix=2.0)
    with pytest.raises(InputError, match="holds 16 px images, rlnImageSize says 32"):
        read_images(_table(tmp_path, ["1@a.mrcs"], box=32))


def test_truncated_stack(tmp_path):
    write_stack(tmp_path / "full.mrcs", np.zeros((4, 16, 16)), apix=2.0)
    data = (tmp_path / "full.mrcs").read_bytes()
    (tmp_path / "cut.mrcs").write_bytes(data[:-500])
    with pytest.raises(InputError, match="truncated") as err:
        read_stack(tmp_path / "cut.mrcs")
    assert str(err.value).startswith(str(tmp_path / "cut.mrcs"))


@pytest.mark.parametrize("content", [b"", b"not an mrc" * 200, bytes(range(256)) * 8],
                         ids=["empty", "text", "bytes"])
def test_corrupt_stack(tmp_path, content):
    (tmp_path / "bad.mrcs").write_bytes(content)
    with pytest.raises(InputError) as err:
        read_stack(tmp_path / "bad.mrcs")
    assert str(err.value).startswith(f"{tmp_path / 'bad.mrcs'}: ")


def test_non_square_stack(tmp_path):
    with mrcfile.new(tmp_path / "rect.mrcs") as mrc:
        mrc.set_data(np.zeros((2, 16, 24), np.float32))
    with pytest.raises(InputError, match="not square"):
        read_stack(tmp_path / "rect.mrcs")
