"""The small demo run, interrupted, rerun, read back and raced (tests/killing.py's SMALL).

Kill anywhere and resume (a few trials; ``bench/kill_trials.py`` runs ≥ 20); every output
read by the clients users have (cryosparc-tools, ``relion_star_handler``,
``mrcfile.validate``); the same classes whatever the cores, shards or iterations per job;
two runs on one ``outdir``: the second stops at Snakemake's lock.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from class2d import io
from killing import (SMALL, Moment, differences, kill_and_resume, output_files, run_workflow,
                     workflow_command)

#: CI's trials: a prepare shard mid-write, the gather cut off, the last stage
CI_MOMENTS = [Moment("prepare", 0.5), Moment("gather", 0.0), Moment("templates", 0.3)]


@pytest.mark.slow
@pytest.mark.parametrize("moment", CI_MOMENTS, ids=str)
def test_kill_anywhere_then_resume_gives_the_same_bytes(small_run, tmp_path_factory, moment):
    outdir = tmp_path_factory.mktemp("small") / "kill_run"
    trial = kill_and_resume(outdir, SMALL, moment)
    assert trial.resume_rc == 0, trial.resume_tail
    assert trial.running, "the run ended before the kill"
    assert differences(small_run, outdir) == []
    assert [p for p in outdir.rglob("*") if ".tmp" in p.name] == []   # stale temporaries gone


#: CryoSPARC's own dtypes of the particle fields we write, from a real Class2D export
#: (tests/conftest.py's cs_class2d) where it has them
CS_UNITS = {"alignments2D/pose": "rad", "alignments2D/shift": "px", "blob/psize_A": "Å"}


@pytest.mark.slow
def test_cryosparc_tools_loads_every_cs_with_cryosparc_dtypes(small_run, data_file):
    dataset = pytest.importorskip("cryosparc.dataset")
    real = np.load(data_file("cs_class2d"))
    paths = sorted(small_run.rglob("*.cs"))
    assert {str(p.relative_to(small_run)) for p in paths} == {
        f"{stage}/{name}.cs" for stage, names in (
            ("prepare", ("rejected",)), ("classify", ("classes", "particles")),
            ("dedup", ("particles", "rejected")),
            ("select", ("particles", "rejected")), ("rebalance", ("particles", "excluded")),
            ("templates", ("templates",))) for name in names}
    for path in paths:
        loaded = dataset.Dataset.load(path)
        ours = np.load(path)
        assert len(loaded) == len(ours), path
        assert set(loaded.fields()) == set(ours.dtype.names), path
        for name in set(ours.dtype.names) & set(real.dtype.names):
            kind = real.dtype[name]
            if kind.kind in "SUO":
                continue                              # strings: CryoSPARC's length varies
            assert ours.dtype[name] == kind, (path, name, ours.dtype[name], kind)
    # units: pose in radians, shift in px of alignments2D/psize_A, as the STAR says in ° and Å
    cs = dataset.Dataset.load(small_run / "classify" / "particles.cs")
    star = io.read_particles(small_run / "classify" / "particles.star").particles
    np.testing.assert_allclose(np.degrees(cs["alignments2D/pose"]), star["rlnAnglePsi"],
                               atol=1e-3)
    np.testing.assert_allclose(cs["alignments2D/shift"][:, 0] * cs["alignments2D/psize_A"],
                               star["rlnOriginXAngst"], atol=1e-3)
    np.testing.assert_array_equal(cs["alignments2D/class"] + 1, star["rlnClassNumber"])
    assert (cs["blob/sign"] == 1).all()        # the demo's images hold white particles


@pytest.mark.slow
@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not installed")
def test_relion_reads_every_star_and_every_mrc_validates(small_run, tmp_path):
    stars = sorted(small_run.rglob("*.star"))
    assert len(stars) == 15     # demo 2, prepare 2, classify 2, dedup 2, select 3, rebalance 3,
    #                             templates 1
    for i, star in enumerate(stars):
        out = tmp_path / f"{i}.star"
        run = subprocess.run(["relion_star_handler", "--i", str(star), "--o", str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 0, (star, run.stdout + run.stderr)
        ours = starfile.read(star, always_dict=True)
        theirs = starfile.read(out, always_dict=True)
        for name, block in ours.items():
            if hasattr(block, "columns") and name in theirs:
                assert len(theirs[name]) == len(block), (star, name)
    stacks = sorted(list(small_run.rglob("*.mrcs")) + list(small_run.rglob("*.mrc")))
    assert len(stacks) == 7         # demo 2, prepare 2, classify, select, templates
    for stack in stacks:
        assert mrcfile.validate(str(stack), print_file=open("/dev/null", "w")), stack


@pytest.fixture(scope="module")
def other_ways(tmp_path_factory) -> dict[str, Path]:
    """SMALL's classification run three other ways (to classify/particles.star)."""
    ways = {"cores 1": (1, SMALL),
            "4 shards": (2, {**SMALL, "prepare": {"shards": 4}}),
            "5 iterations per job": (2, {**SMALL, "classify": {**SMALL["classify"],
                                                                "iterations_per_job": 5}})}
    runs = {}
    for name, (cores, config) in ways.items():
        outdir = tmp_path_factory.mktemp("ways") / "results"
        runs[name] = run_workflow(outdir, config, cores,
                                  extra=(str(outdir / "classify" / "particles.star"),))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("way", ["cores 1", "4 shards", "5 iterations per job"])
def test_the_same_classes_any_way_it_is_run(small_run, other_ways, way):
    """Iterations per job change nothing: the same bytes.  Cores (BLAS threads) and shards
    (E-step batches) change the order of float32 sums: every particle in the same class
    (the issue allows 99.9 %: of 300 particles that is all of them), ψ within 0.05°
    (measured: 0.012° on one core), origins within 1e-3 Å, class averages within 1e-4 of
    their maximum."""
    ours = io.read_particles(other_ways[way] / "classify" / "particles.star").particles
    reference = io.read_particles(small_run / "classify" / "particles.star").particles
    np.testing.assert_array_equal(ours["rlnClassNumber"], reference["rlnClassNumber"])
    with mrcfile.open(other_ways[way] / "classify/classes.mrcs") as a, \
            mrcfile.open(small_run / "classify/classes.mrcs") as b:
        if way == "5 iterations per job":
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(ours["rlnAnglePsi"], reference["rlnAnglePsi"])
            return
        np.testing.assert_allclose(a.data, b.data, atol=1e-4 * np.abs(b.data).max())
    turn = np.mod(ours["rlnAnglePsi"] - reference["rlnAnglePsi"] + 180, 360) - 180
    assert np.abs(turn).max() < 0.05
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(ours[column], reference[column], atol=1e-3)


@pytest.mark.slow
def test_a_second_run_on_one_outdir_stops_at_the_lock(small_run, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("small") / "lock_run"
    cmd = workflow_command(outdir, SMALL)
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = outdir / "logs" / "simulate_demo.log"
    while not started.exists() and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert first.wait() == 0
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout + second.stderr, second.stderr[-2000:]
    assert output_files(outdir).keys() == output_files(small_run).keys()
    assert differences(small_run, outdir) == []
