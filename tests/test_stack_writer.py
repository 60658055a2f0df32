"""Tests of class2d.io.stack_writer: a stack written piece by piece."""

from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest

from class2d.io.mrc import write_stack
from class2d.io.stack_writer import stack_writer


@pytest.fixture
def images():
    return np.random.default_rng(0).standard_normal((10, 16, 16)).astype(np.float32) + 0.3


def test_pieces_in_any_order_give_write_stacks_bytes(images, tmp_path):
    write_stack(tmp_path / "whole.mrcs", images, 2.5)
    with stack_writer(tmp_path / "pieces.mrcs", 10, 16, 2.5) as stack:
        stack.write(6, images[6:])
        stack.write_rows(np.array([5, 0, 3]), images[[5, 0, 3]])
        stack.write(1, images[1:3])
        stack.write_rows(np.array([4]), images[[4]])
    assert (tmp_path / "pieces.mrcs").read_bytes() == (tmp_path / "whole.mrcs").read_bytes()
    assert mrcfile.validate(str(tmp_path / "pieces.mrcs"), print_file=open(os.devnull, "w"))
    with mrcfile.open(tmp_path / "pieces.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.voxel_size.x == pytest.approx(2.5) and mrc.header.ispg == 0


def test_missing_rows_or_an_error_leave_no_file(images, tmp_path):
    path = tmp_path / "stack.mrcs"
    with pytest.raises(ValueError, match="1 of 10 images never written .first: row 9"):
        with stack_writer(path, 10, 16, 2.5) as stack:
            stack.write(0, images[:9])
    with pytest.raises(RuntimeError):
        with stack_writer(path, 10, 16, 2.5) as stack:
            stack.write(0, images)
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    write_stack(path, images[:2], 1.0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="outside the stack"):
        with stack_writer(path, 10, 16, 2.5) as stack:
            stack.write(5, images)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["stack.mrcs"]


def test_a_stack_ended_early_is_the_stack_of_its_first_rows(images, tmp_path):
    """Planned for 10, ended at 7 (three images turned out unusable): the bytes of a stack
    written with those 7 alone."""
    write_stack(tmp_path / "seven.mrcs", images[:7], 2.5)
    with stack_writer(tmp_path / "ended.mrcs", 10, 16, 2.5) as stack:
        stack.write(0, images[:4])
        stack.write(4, images[4:7])
        stack.end_at(7)
    assert (tmp_path / "ended.mrcs").read_bytes() == (tmp_path / "seven.mrcs").read_bytes()
    with pytest.raises(ValueError, match="cannot end at 0"):
        with stack_writer(tmp_path / "none.mrcs", 10, 16, 2.5) as stack:
            stack.end_at(0)
    assert not (tmp_path / "none.mrcs").exists()
