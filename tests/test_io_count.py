"""Tests of class2d.io.count: the cheap particle count equals the parsed table's rows."""

from __future__ import annotations

import pytest

from class2d import io
from class2d.errors import InputError
from class2d.io.count import count_particles

LABELS = ["relion31", "relion31_reversed", "relion31_6groups", "empiar10076_star",
          "empiar10076_cs", "aspire30", "aspire31", "relion5", "relion30_pfcrt",
          "cs_class2d", "cs_refine3d", "sta_tilt"]


@pytest.mark.parametrize("label", LABELS)
def test_count_equals_rows_read(data_file, label):
    path = data_file(label)
    assert count_particles(path) == io.read_particles(path).n


def test_count_of_a_written_table_and_of_a_relion30_block(tmp_path):
    from class2d.simulate import simulate

    table = simulate(37, box=16, apix=5.0, n_micrographs=2, seed=1).table
    io.write_particles(table, tmp_path / "p.star")
    assert count_particles(tmp_path / "p.star") == 37
    # RELION 3.0: one block named data_, header lines with "#n", a comment and blank lines
    (tmp_path / "old.star").write_text(
        "\ndata_\n\nloop_\n_rlnImageName #1\n_rlnDefocusU #2\n"
        "1@a.mrcs 10000\n# a comment\n2@a.mrcs 11000\n\n3@a.mrcs 12000\n")
    assert count_particles(tmp_path / "old.star") == 3


def test_count_of_no_particle_block_or_no_file(data_file, tmp_path):
    with pytest.raises(InputError, match="no particle block"):
        count_particles(data_file("postprocess"))
    with pytest.raises(InputError, match="file not found"):
        count_particles(tmp_path / "none.star")
