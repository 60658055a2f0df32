"""Shared test fixtures: the real cryo-EM files in ``../shared/data`` (addressed by label).

Under ``CI=true`` a test marked ``relion``, ``chromium`` or ``slurm`` that skips (the tool
is not installed) is reported as failed: CI installs them, so a skip there means the install
broke.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: ``../shared/data`` relative to the repository root
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: labels of the real files the tests use, relative to ``SHARED_DATA``
DATA_FILES = {
    "relion31": "particles/cryodrgn_relion31/relion31.star",
    "relion31_reversed": "particles/cryodrgn_relion31/relion31.v2.star",
    "relion31_6groups": "particles/cryodrgn_relion31/relion31.6opticsgroups.star",
    "relion31_stack": "particles/cryodrgn_relion31/relion31.mrcs",
    "empiar10076_star": "particles/cryodrgn_empiar10076/empiar_10076_7.star",
    "empiar10076_cs": "particles/cryodrgn_empiar10076/empiar_10076_7.cs",
    "empiar10076_stack": "particles/cryodrgn_empiar10076/empiar_10076_7.mrc",
    "aspire30": "particles/aspire_sample/sample_particles_relion30.star",
    "aspire31": "particles/aspire_sample/sample_particles_relion31.star",
    "aspire_incomplete_ctf": "particles/aspire_sample/sample_incomplete_ctf_params.star",
    "aspire_one_image": "particles/aspire_sample/sample_relion_one_image.star",
    "aspire_d4": "particles/aspire_sample/sample_relion_symmetry_group_D4.star",
    "aspire_stack": "particles/aspire_sample/sample.mrcs",
    "sta_tilt": "particles/cryodrgn_sta_ribo_tilt/sta_testing_bin8.star",
    "sta_tilt_stack":
        "particles/cryodrgn_sta_ribo_tilt/ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs",
    "relion5": "metadata/relion_misc/relion5.star",
    "relion30_pfcrt": "metadata/relion_misc/FinalRefinement-OriginalParticles-PfCRT.star",
    "model": "metadata/relion_misc/sample_data_model.star",
    "topaz_particles": "metadata/topaz_empiar10025/particles.star",
    "topaz_ctf": "metadata/topaz_empiar10025/ctf_params.star",
    "one_loop": "metadata/relion_starfile_pkg/one_loop.star",
    "postprocess": "metadata/relion_starfile_pkg/postprocess.star",
    "pipeline": "metadata/relion_starfile_pkg/default_pipeline.star",
    "data_style": "metadata/relion_starfile_pkg/rln3.1_data_style.star",
    "optimiser2d": "metadata/relion_starfile_pkg/relion_tutorial/run_it025_optimiser_2D.star",
    "optimiser3d": "metadata/relion_starfile_pkg/relion_tutorial/run_it025_optimiser_3D.star",
    "sampling2d": "metadata/relion_starfile_pkg/relion_tutorial/run_it025_sampling_2D.star",
    "sampling3d": "metadata/relion_starfile_pkg/relion_tutorial/run_it025_sampling_3D.star",
    "cs_class2d": "metadata/cryosparc/cryosparc_J2_particles_exported.cs",
    "cs_refine3d": "metadata/cryosparc/cryosparc_P12_J24_001_particles.cs",
    "cs_schema_only": "metadata/cryosparc/4k_dataset_schema_only.cs",
}


#: markers of tests that need an external tool CI installs; under CI their skips fail
REQUIRED_IN_CI = ("relion", "chromium", "slurm")


def in_ci() -> bool:
    """True where the environment says this is a CI run (``CI=true``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, turn the skip of a test that needs RELION, Chromium or Slurm into a failure."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    needs = [name for name in REQUIRED_IN_CI if item.get_closest_marker(name)]
    if needs:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"CI=true and this test needs {', '.join(needs)}, "
                           f"but it was skipped: {reason}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found: {SHARED_DATA} (../shared/data from the repository root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_file(shared_data):
    """``data_file("relion31")`` → path of a labelled real file; skips when it is missing."""

    def get(label: str) -> Path:
        path = shared_data / DATA_FILES[label]
        if not path.is_file():
            pytest.skip(f"real test file missing: {path}")
        return path

    return get


@pytest.fixture
def assert_same_images():
    """Check that two particle tables point at the same images.

    Existing images must resolve to the same files and indices; names of missing images are
    kept as written by the writers (they are relative to a project directory that cannot be
    known), so for those the names themselves must agree.
    """

    def check(got_table, want_table) -> None:
        (got, got_idx), (want, want_idx) = got_table.image_locations(), want_table.image_locations()
        np.testing.assert_array_equal(got_idx, want_idx)
        exists = np.array([Path(p).is_file() for p in want], bool)
        np.testing.assert_array_equal(got[exists], want[exists])
        np.testing.assert_array_equal(got_table.particles["rlnImageName"].to_numpy()[~exists],
                                      want_table.particles["rlnImageName"].to_numpy()[~exists])

    return check


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """The small demo of ``tests/killing.py`` (every stage) run once to the end, into
    ``…/kill_ref`` (its config beside it, ``kill_ref.yaml``)."""
    from killing import SMALL, run_workflow

    return run_workflow(tmp_path_factory.mktemp("small") / "kill_ref", SMALL)
