"""The Snakemake workflow end to end on a tiny demo: lint, outputs, RELION, kill -9 and resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from killing import SMALL

from class2d import io
from class2d.metrics import adjusted_rand
from class2d.simulate import read_truth

REPO = Path(__file__).resolve().parents[1]

#: a demo small enough for seconds per job: killing.SMALL (every stage, two online jobs) with
#: 240 particles
TINY = {**SMALL, "demo": {**SMALL["demo"], "n_particles": 240}}


#: smaller still, for running the classification twice: 2 online iterations, 2 shards
TWICE = {
    "demo": {**TINY["demo"], "n_particles": 120},
    "prepare": {"shards": 2},
    "classify": {"n_classes": 3, "max_res_A": 12.0, "online_iterations": 2,
                 "batch_per_class": 20, "final_full_iterations": 1},
}


def workflow_command(outdir: Path, cores: int = 2, config: dict = TINY) -> list[str]:
    """The snakemake command line for a demo (``config``, the tiny one unless given) writing
    into ``outdir``."""
    path = outdir.parent / f"{outdir.name}.yaml"
    path.write_text(yaml.safe_dump({**config, "outdir": str(outdir)}))
    return [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile",
            str(path), "--directory", str(REPO)]


@pytest.mark.slow
def test_lint_has_nothing_to_say():
    out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Lints for" not in out.stdout + out.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp("wf") / "results"
    run = subprocess.run(workflow_command(outdir), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return outdir


@pytest.mark.slow
def test_workflow_writes_every_classify_output(finished_run):
    cls = finished_run / "classify"
    for name in ("classes.mrcs", "classes.star", "classes.cs", "particles.star", "particles.cs",
                 "gallery.png", "convergence.tsv"):
        assert (cls / name).is_file(), name
    assert mrcfile.validate(str(cls / "classes.mrcs"))
    with mrcfile.open(cls / "classes.mrcs") as mrc:
        assert mrc.data.shape == (4, 32, 32)
        assert float(mrc.voxel_size.x) == pytest.approx(6.0)
    classes = starfile.read(cls / "classes.star")
    particles = io.read_particles(cls / "particles.star")
    assert particles.n == 240
    counts = np.bincount(particles.particles["rlnClassNumber"], minlength=5)[1:]
    np.testing.assert_array_equal(classes["c2dParticleCount"], counts)
    assert list(counts) == sorted(counts, reverse=True)       # sorted by size
    # the original images, not the prepared stack, are what rlnImageName points at
    paths, _ = particles.image_locations()
    assert all(p.endswith(os.path.join("demo", "particles.mrcs")) for p in paths)
    cs = np.load(cls / "particles.cs")
    np.testing.assert_array_equal(cs["alignments2D/class"] + 1,
                                  particles.particles["rlnClassNumber"])
    table = pd.read_csv(cls / "convergence.tsv", sep="\t")
    assert table["iteration"].tolist() == [1, 2, 3, 4, 5]
    assert table["kind"].tolist() == ["online"] * 4 + ["full"]


@pytest.mark.slow
def test_workflow_puts_particles_in_their_true_classes(finished_run):
    """Adjusted Rand index of the classes against the demo's truth (duplicate picks share
    their first pick's class).  Measured: 0.978 for this demo (seed 0); the same run
    in-process on demo seeds 0–9 gave 0.31–0.98, median 0.69.  Shards gathered in the
    wrong order, or any row mix-up between the stack and the table, give ~0."""
    truth = read_truth(finished_run / "demo" / "truth.star")
    particles = io.read_particles(finished_run / "classify/particles.star").particles
    assert len(truth) == len(particles) == 240
    assert adjusted_rand(truth["true_class"].to_numpy(),
                         particles["rlnClassNumber"].to_numpy()) >= 0.6


@pytest.mark.slow
def test_one_shard_gives_what_two_shards_give(finished_run, tmp_path):
    """The same classification with ``prepare.shards: 1``: the same classes for every
    particle; poses and class averages to float rounding (the E-step's batches differ:
    measured ψ 5e-4°, origins 1e-5 Å, averages 5e-6 of their maximum)."""
    outdir = tmp_path / "results"
    target = outdir / "classify" / "particles.star"
    run = subprocess.run(workflow_command(outdir, config={**TINY, "prepare": {"shards": 1}})
                         + [str(target)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list((outdir / "prepare").glob("stack_*.mrcs"))) == 1
    assert len(list((finished_run / "prepare").glob("stack_*.mrcs"))) == 2
    one = io.read_particles(target).particles
    two = io.read_particles(finished_run / "classify/particles.star").particles
    np.testing.assert_array_equal(one["rlnClassNumber"], two["rlnClassNumber"])
    turn = np.mod(one["rlnAnglePsi"] - two["rlnAnglePsi"] + 180, 360) - 180
    assert np.abs(turn).max() < 0.01
    for column in ("rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(one[column], two[column], atol=1e-3)
    with mrcfile.open(outdir / "classify/classes.mrcs") as a, \
            mrcfile.open(finished_run / "classify/classes.mrcs") as b:
        np.testing.assert_allclose(a.data, b.data, atol=1e-4 * np.abs(b.data).max())


@pytest.mark.slow
@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not installed")
def test_relion_reads_the_classified_particles(finished_run, tmp_path):
    out = subprocess.run(["relion_star_handler", "--i", str(finished_run / "classify/particles.star"),
                          "--o", str(tmp_path / "sel.star"), "--select", "rlnClassNumber",
                          "--minval", "1", "--maxval", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    ours = io.read_particles(finished_run / "classify/particles.star").particles
    theirs = starfile.read(tmp_path / "sel.star")["particles"]
    assert len(theirs) == int((ours["rlnClassNumber"] == 1).sum())
    stats = subprocess.run(["relion_image_handler", "--i",
                            str(finished_run / "classify/classes.mrcs"), "--stats"],
                           capture_output=True, text=True)
    assert stats.returncode == 0, stats.stdout + stats.stderr


@pytest.mark.slow
@pytest.mark.parametrize("log, output", [
    ("iteration_004.log", "iter_004/state.npz"),                    # an online job
    ("full_005_shard_001.log", "iter_005/shard_001.npz"),           # a full pass's 2nd shard
])
def test_kill_during_a_job_then_resume_gives_the_same_result(finished_run, tmp_path, log,
                                                             output):
    """SIGKILL the whole run as soon as the job has started (its log exists) and before it
    wrote its output, so that the job is cut off mid-run; the rerun after --unlock gives
    what the uninterrupted run gave."""
    outdir = tmp_path / "results"
    # the cores of the uninterrupted run: a job's threads (BLAS's float32 sums) follow them
    cmd = workflow_command(outdir, cores=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    started = outdir / "logs" / "classify" / log
    deadline = time.time() + 240
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert started.exists(), f"the run never started the job logging to {log}"
    assert not (outdir / "classify" / output).exists(), "the job finished before the kill"
    assert not (outdir / "classify" / "particles.star").exists()
    assert not list(outdir.rglob(".*.tmp*"))        # nothing half-written kept its final name
    subprocess.run(cmd + ["--unlock"], check=True, capture_output=True)
    rerun = subprocess.run(cmd + ["--rerun-incomplete"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ours = io.read_particles(outdir / "classify/particles.star").particles
    reference = io.read_particles(finished_run / "classify/particles.star").particles
    for column in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_array_equal(ours[column].to_numpy(), reference[column].to_numpy())
    with mrcfile.open(outdir / "classify/classes.mrcs") as a, \
            mrcfile.open(finished_run / "classify/classes.mrcs") as b:
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.slow
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "nodefocus.star"
    bad.write_text("data_particles\n\nloop_\n_rlnImageName #1\n_rlnImagePixelSize #2\n"
                   "1@none.mrcs 1.0\n")
    outdir = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--directory",
                          str(REPO), "--config", f"particles={bad}", f"outdir={outdir}"],
                         capture_output=True, text=True)
    assert run.returncode != 0
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0], run.stderr[-2000:]
    assert not (outdir / "prepare" / "prepared.yaml").exists()


@pytest.mark.slow
@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_star_handler") is None, reason="RELION is not installed")
def test_every_stage_output_opens_in_relion_and_our_reader(finished_run, tmp_path):
    for stage in ("dedup", "select", "rebalance"):
        star = finished_run / stage / "particles.star"
        ours = io.read_particles(star)
        assert io.read_particles(finished_run / stage / "particles.cs").n == ours.n
        out = subprocess.run(["relion_star_handler", "--i", str(star), "--o",
                              str(tmp_path / f"{stage}.star"), "--select", "rlnClassNumber",
                              "--minval", "1"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert len(starfile.read(tmp_path / f"{stage}.star")["particles"]) == ours.n
    for stack in ("select/classes.mrcs", "templates/templates.mrcs"):
        assert mrcfile.validate(str(finished_run / stack))
        out = subprocess.run(["relion_image_handler", "--i", str(finished_run / stack),
                              "--stats"], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    kept = io.read_particles(finished_run / "dedup/particles.star").n
    rejected = len(starfile.read(finished_run / "dedup/rejected.star")["particles"])
    assert kept + rejected == 240 and rejected > 0


@pytest.mark.slow
def test_more_shards_than_particles_is_one_line_before_any_job(tmp_path):
    """The shard count is known when the DAG is built (2,000 demo particles, 5,000 shards)."""
    config = tmp_path / "shards.yaml"
    config.write_text(yaml.safe_dump({"outdir": str(tmp_path / "out"),
                                      "prepare": {"shards": 5000}}))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                          "--configfile", str(config), "--directory", str(REPO)],
                         capture_output=True, text=True)
    assert run.returncode != 0
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: config prepare.shards: 5000 shard(s) for 2000 particles: need "
                      "between 1 and one shard per particle"], run.stderr[-2000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_same_seed_gives_byte_identical_classify_outputs(tmp_path):
    """Checkpoints, shards, assignments, STAR, .cs, MRC, gallery and convergence table: the
    same bytes from two runs (times are measured, so they go to the logs only)."""
    outdirs = [tmp_path / "first", tmp_path / "second"]
    runs = []
    for outdir in outdirs:                          # at the same time, one core each
        with open(tmp_path / f"{outdir.name}.log", "w") as log:
            runs.append(subprocess.Popen(workflow_command(outdir, cores=1, config=TWICE)
                                         + [str(outdir / "classify" / "convergence.tsv")],
                                         stdout=log, stderr=subprocess.STDOUT))
    for outdir, run in zip(outdirs, runs):
        assert run.wait() == 0, (tmp_path / f"{outdir.name}.log").read_text()[-3000:]
    first, second = ({str(p.relative_to(cls)): p.read_bytes()
                      for p in sorted(cls.rglob("*")) if p.is_file()}
                     for cls in (outdir / "classify" for outdir in outdirs))
    assert {"state.npz", "shard_000.npz", "shard_001.npz", "assignments.npz", "gallery.png",
            "convergence.tsv", "classes.star", "particles.cs"} <= {Path(p).name for p in first}
    assert sorted(first) == sorted(second)
    assert [p for p in first if first[p] != second[p]] == []
