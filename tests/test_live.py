"""Live classification (class2d.live): a particle file that grows between two runs of the
same snakemake command, against a batch run on the whole file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from class2d import io, live, prepare
from class2d.metrics import adjusted_rand
from class2d.simulate import read_truth, simulate_demo

REPO = Path(__file__).resolve().parents[1]

#: 300 particles of 32 px, 4 objects; shards of 100; a live round is a full iteration once
#: 2 × 10 × 4 = 80 particles arrived since the last one
CONFIG = {
    "prepare": {"shards": 0, "particles_per_shard": 100},
    "classify": {"n_classes": 4, "max_res_A": 12.0, "online_iterations": 4,
                 "batch_per_class": 10, "final_full_iterations": 1, "iterations_per_job": 4},
    **{stage: {"activate": False} for stage in ("dedup", "select", "rebalance", "templates")},
}
DEMO = {"n_particles": 300, "box": 32, "apix": 6.0, "snr": 0.5, "n_objects": 4,
        "junk_fraction": 0.0, "duplicate_fraction": 0.0}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("live_set")
    return Path(simulate_demo(folder, seed=0, **DEMO))


def write_rows(source: Path, target: Path, rows: np.ndarray) -> None:
    table = io.read_particles(source)
    io.write_particles(table.subset(rows), target)


def run(particles: Path, outdir: Path) -> str:
    """The workflow on ``particles`` into ``outdir``; returns its log (stderr)."""
    config = outdir.parent / f"{outdir.name}.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "particles": str(particles),
                                      "outdir": str(outdir)}))
    done = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                           str(config), "--directory", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def stacks(outdir: Path) -> dict[str, tuple[int, int]]:
    """Every prepared stack file: (inode, mtime in ns)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted((outdir / "prepare").glob("stack_*.mrcs"))}


def ari(outdir: Path, truth_star: Path) -> float:
    truth = read_truth(truth_star)["true_class"].to_numpy()
    found = io.read_particles(outdir / "classify" / "particles.star").particles
    return adjusted_rand(truth[: len(found)], found["rlnClassNumber"].to_numpy())


def test_plan_keeps_the_shards_of_appended_rows(tmp_path):
    hashes = np.arange(150, dtype=np.uint64)
    first = live.plan_shards(hashes, str(tmp_path), 0, 100)
    assert first.rows == ((0, 75), (75, 150)) and first.case == "fresh"
    (tmp_path / "rows.json").write_text(
        '{"rows": 150, "digest": "%s", "settings": {"shards": 0, "particles_per_shard": 100},'
        ' "shard_rows": [[0, 75], [75, 150]]}' % live.digest(hashes))
    grown = live.plan_shards(np.arange(260, dtype=np.uint64), str(tmp_path), 0, 100)
    assert grown.case == "grown"
    assert grown.rows == ((0, 75), (75, 175), (175, 260))
    assert grown.digests[0] == first.digests[0]
    rewritten = live.plan_shards(np.arange(1, 261, dtype=np.uint64), str(tmp_path), 0, 100)
    assert rewritten.case == "rewritten" and rewritten.rows == prepare.shard_rows(260, 3)
    assert live.plan_shards(hashes, str(tmp_path), 0, 50).case == "fresh"    # other setting


#: the four appends after the first 150 rows, and what each live round does: 20, 40 and 70
#: particles since the last full iteration are assigned, 150 (>= 80) make one
APPENDS = ((170, "assigning the 20 new ones"), (190, "assigning the 20 new ones"),
           (220, "assigning the 30 new ones"), (300, "one full iteration over all 300"))


@pytest.mark.slow
def test_appended_particles_prepare_only_new_shards_and_classify_as_a_batch(labelled,
                                                                            tmp_path):
    outdir = tmp_path / "live"
    # the STAR beside the images, so that its image paths stay the same
    growing = labelled.parent / f"growing_{tmp_path.name}.star"
    write_rows(labelled, growing, np.arange(150))
    assert "fresh run on 150" in run(growing, outdir)
    first = before = stacks(outdir)
    assert list(before) == ["stack_000.mrcs", "stack_001.mrcs"]
    n = 150
    for round_, (rows, case) in enumerate(APPENDS, start=1):
        write_rows(labelled, growing, np.arange(rows))
        assert f"grew from {n} to {rows} particles" in run(growing, outdir)
        assert case in (outdir / f"logs/classify/live_{round_:03d}.log").read_text()
        after = stacks(outdir)
        # only the last shard grows (to 100 rows) and new ones are added: the others' files
        # are not written again
        last = sorted(before)[-1]
        assert {name: after[name] for name in before if name != last} == {
            name: stamp for name, stamp in before.items() if name != last}
        assert set(before) <= set(after) and len(after) == -(-(rows - 75) // 100) + 1
        assert io.read_particles(outdir / "classify/particles.star").n == rows
        before, n = after, rows
        if round_ == 1:
            assert "Nothing to be done" in run(growing, outdir)       # unchanged: no job
    assert stacks(outdir)["stack_000.mrcs"] == first["stack_000.mrcs"]
    # one point of the convergence table (and plot) per round, after the batch's iterations
    kinds = [line.split("\t")[1] for line in
             (outdir / "classify/convergence.tsv").read_text().splitlines()[1:]]
    assert kinds[-5:] == ["full"] + ["live assigned"] * 3 + ["live full"], kinds

    run(labelled, tmp_path / "batch")
    truth = labelled.parent / "truth.star"
    batch, grown = ari(tmp_path / "batch", truth), ari(outdir, truth)
    assert grown >= batch - 0.03, (grown, batch)

    # a row in the middle rewritten (left out): a fresh run, and the log says why
    write_rows(labelled, growing, np.delete(np.arange(300), 120))
    log = run(growing, outdir)
    assert "the input was rewritten, not appended to" in log
    assert not (outdir / "classify" / "live_005").exists()
    assert stacks(outdir)["stack_000.mrcs"] != first["stack_000.mrcs"]   # new boundaries
    assert io.read_particles(outdir / "classify/particles.star").n == 299


def test_row_hashes_are_read_again_only_when_the_file_changes(labelled, tmp_path,
                                                               monkeypatch):
    """The graph asks for the input's row hashes on every run and in every cluster job: the
    copy kept in the prepare folder answers while the file's size and time are the same;
    an appended file is read again."""
    star = tmp_path / "particles.star"
    write_rows(labelled, star, np.arange(150))
    prepared = tmp_path / "prepare"
    prepared.mkdir()
    first = live.input_hashes(str(star), str(prepared))
    np.testing.assert_array_equal(first, live.row_hashes(io.read_particles(star)))
    reads = []
    monkeypatch.setattr(live.io, "read_particles",
                        lambda path, real=io.read_particles: reads.append(path) or real(path))
    np.testing.assert_array_equal(live.input_hashes(str(star), str(prepared)), first)
    assert reads == []
    write_rows(labelled, star, np.arange(210))
    grown = live.input_hashes(str(star), str(prepared))
    assert [str(path) for path in reads].count(str(star)) == 1 and grown.size == 210
    np.testing.assert_array_equal(grown[:150], first)


def test_the_gallery_says_which_live_round_it_shows():
    from class2d.em.export import live_round

    batch = [{"kind": "online"}] * 3 + [{"kind": "full"}]
    assert live_round(batch) == ""
    assert live_round(batch + [{"kind": "live assigned"}, {"kind": "live full"}]) == \
        ", live round 2"


@pytest.mark.slow
def test_the_watcher_runs_a_round_each_time_the_file_grows(labelled, tmp_path):
    """``class2d live`` on a real workflow: a round for the first rows, one for the rows
    appended after it said so, then it stops by itself when the file stays the same."""
    growing = labelled.parent / f"watched_{tmp_path.name}.star"
    write_rows(labelled, growing, np.arange(150))
    outdir = tmp_path / "live"
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "particles": str(growing),
                                      "outdir": str(outdir)}))
    watcher = subprocess.Popen([sys.executable, "-m", "class2d.cli", "live", "--every", "0.5",
                                "--idle", "3", "--cores", "2", "--configfile", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               cwd=tmp_path)
    lines = []
    for line in watcher.stdout:
        lines.append(line.rstrip())
        if "round 0: 150 particles, 4 classes" in line:
            write_rows(labelled, growing, np.arange(210))
    assert watcher.wait(timeout=60) == 0, lines
    assert "round 1: 210 particles, 4 classes" in lines[1], lines
    assert lines[1].endswith("(new particles assigned)"), lines
    assert lines[2] == "no new particles for 3 s: stopping" and len(lines) == 3, lines
    assert io.read_particles(outdir / "classify" / "particles.star").n == 210
