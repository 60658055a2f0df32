"""The workflow as users drive it beyond ``--cores`` on one machine: through a real Slurm
scheduler with the shipped profile, as a Snakemake module of a host workflow, as a
``snakemake --report``, and with the selection page's saved file.

One small local demo run (``local_run``) is the reference the Slurm and module runs must
reproduce exactly, and the run the report and selection tests read.  Every run starts in its
own temporary directory with ``--snakefile``, as a user's run from elsewhere would.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import yaml

from class2d import io

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"

#: a demo of seconds per job, the whole chain: 120 particles of 32 px, 3 classes, 2 online
#: iterations and one full pass over 2 shards (so a cluster gets two shard jobs); one thread
#: per job so that both shard jobs fit on a 2-CPU node at once
SMALL = {
    "backend": "cpu", "threads": 1, "memory_gb": 1, "outdir": "results",
    "demo": {"n_particles": 120, "box": 32, "apix": 6.0, "snr": 0.5, "n_objects": 4,
             "junk_fraction": 0.0, "duplicate_fraction": 0.05},
    "prepare": {"shards": 2},
    "classify": {"n_classes": 3, "max_res_A": 12.0, "online_iterations": 2,
                 "batch_per_class": 20, "final_full_iterations": 1},
    # off: each is one more scheduler round trip (≥ 12 s) for the Slurm run
    "dedup": {"activate": False}, "rebalance": {"activate": False},
    "templates": {"activate": False},
}

#: outputs that the Slurm run must reproduce
SAME_OUTPUTS = ["classify/classes.mrcs", "classify/classes.star", "classify/particles.star",
                "select/classes.star", "select/particles.star", "select/classes.mrcs"]

#: seconds before a hung run is killed (Snakemake may ignore SIGTERM while polling Slurm)
HARD_LIMIT_S = 600


def snakemake(cwd: Path, *args: str, snakefile: Path = SNAKEFILE, timeout: int = HARD_LIMIT_S,
              check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake in ``cwd`` under ``timeout -s KILL``; with ``check``, a non-zero exit
    fails the test with the end of its output."""
    command = ["timeout", "-s", "KILL", str(timeout), sys.executable, "-m", "snakemake",
               "--snakefile", str(snakefile), *args]
    run = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if check:
        assert run.returncode == 0, (f"{' '.join(command)} exited {run.returncode}:\n"
                                     f"{(run.stdout + run.stderr)[-4000:]}")
    return run


def write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def particles(path: Path) -> pd.DataFrame:
    return starfile.read(path, always_dict=True)["particles"]


def assert_same_outputs(got: Path, want: Path) -> None:
    """Images bit for bit, tables value for value."""
    for name in SAME_OUTPUTS:
        if name.endswith(".mrcs"):
            with mrcfile.open(got / name) as a, mrcfile.open(want / name) as b:
                np.testing.assert_array_equal(a.data, b.data, err_msg=name)
                assert a.voxel_size == b.voxel_size, name
        else:
            block = "particles" if name.endswith("particles.star") else "classes"
            pd.testing.assert_frame_equal(starfile.read(got / name, always_dict=True)[block],
                                          starfile.read(want / name, always_dict=True)[block],
                                          obj=name)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    """The small demo run with --cores 2; returns its working directory (outputs in results/)."""
    cwd = tmp_path_factory.mktemp("local")
    snakemake(cwd, "--cores", "2", "--configfile", str(write_config(cwd, SMALL)))
    return cwd


# ---------------------------------------------------------------- Slurm
def slurm_cluster() -> None:
    """Start the single-node cluster of .ci/slurm_start.sh (nothing when one answers), or skip
    naming why (under CI=true the skip fails: CI installs Slurm)."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed "
                    "(pip install snakemake-executor-plugin-slurm)")
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm not installed (apt-get install munge slurmctld slurmd slurm-client)")
    try:
        start = subprocess.run([str(REPO / ".ci" / "slurm_start.sh")], capture_output=True,
                               text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip(".ci/slurm_start.sh did not finish in 120 s")
    if start.returncode != 0:
        pytest.skip(f"no Slurm cluster: {start.stderr.strip()}")


def slurm_job(job_id: str) -> dict[str, str]:
    """Slurm's record of a job (``scontrol show job``; kept MinJobAge = 600 s after the end)."""
    shown = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id],
                           capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", shown))


def slurm_profile(folder: Path) -> list[str]:
    """Snakemake's arguments for the shipped profile on the test cluster (logs in ``folder``)."""
    return ["--profile", str(REPO / "profiles" / "slurm"),
            # no accounting on the test cluster: sacct would fail and Snakemake hang
            "--slurm-status-command", "squeue", "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks", "1",
            "--slurm-logdir", str(folder / "slurm_logs")]


def slurm_submissions(log: str) -> list[tuple[str, str, str]]:
    """(Slurm job id, rule or group, wildcards) of every job Snakemake's ``log`` submitted:
    "Job 9 has been submitted with SLURM jobid 7 (log: …/rule_classify_full_shard/003_001/7.log)",
    "Job 5f… has been submitted with SLURM jobid 8 (log: …/group_setup_init_classes_…/8.log)"."""
    return re.findall(r"submitted with SLURM jobid (\d+) \(log: "
                      r"\S*/(?:rule|group)_(\w+)/(?:(\S+)/)?\d+\.log", log)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_run_with_the_shipped_profile_matches_the_local_run(local_run, tmp_path):
    slurm_cluster()
    config = write_config(tmp_path, SMALL)
    run = snakemake(tmp_path, *slurm_profile(tmp_path), "--configfile", str(config))
    submitted = slurm_submissions(run.stdout + run.stderr)
    rules = {rule for _, rule, _ in submitted}
    # the profile's groups: prepare_stack + init_classes, then gather_full_pass onwards
    assert rules == {"simulate_demo", "prepare_shard", "setup_init_classes_prepare_stack",
                     "classify_full_shard", "finish_compare_with_truth_export_classes_"
                     "gather_full_pass_select_classes"}, submitted
    shards = {wildcards: job for job, rule, wildcards in submitted
              if rule == "classify_full_shard"}
    assert sorted(shards) == ["003_000", "003_001"], submitted      # iteration 3, shards 0 and 1
    records = [slurm_job(job) for job in shards.values()]
    for record in records:
        assert record["JobState"] == "COMPLETED", record
        # the rule's threads, mem_mb and runtime (240 min) reached the scheduler
        assert record["NumCPUs"] == "1" and record["MinMemoryNode"] == "1000M", record
        assert record["TimeLimit"] == "04:00:00", record
    # in parallel: each started before the other ended (ISO times sort as text)
    assert max(r["StartTime"] for r in records) < min(r["EndTime"] for r in records), records
    assert_same_outputs(tmp_path / "results", local_run / "results")


@pytest.mark.slow
@pytest.mark.slurm
def test_live_round_through_slurm(local_run, tmp_path):
    """``class2d live`` with the shipped Slurm profile: the rows appended to a classified
    STAR are prepared and assigned by Slurm jobs, and the watcher stops when idle."""
    slurm_cluster()
    demo = local_run / "results" / "demo" / "particles.star"
    # the STAR beside the images, so that its image paths stay the same
    growing = demo.parent / f"growing_{tmp_path.name}.star"
    table = io.read_particles(demo)
    io.write_particles(table.subset(np.arange(80)), growing)
    config = write_config(tmp_path, {**SMALL, "particles": str(growing)})
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config))      # the batch, here
    log = tmp_path / "watcher.log"
    with open(log, "w") as err:
        watcher = subprocess.Popen(
            ["timeout", "-s", "KILL", str(HARD_LIMIT_S), sys.executable, "-m", "class2d.cli",
             "live", "--every", "1", "--idle", "3", *slurm_profile(tmp_path),
             "--configfile", str(config)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        lines = []
        for line in watcher.stdout:
            lines.append(line.rstrip())
            if "round 0: 80 particles" in line:                  # nothing new: no job
                io.write_particles(table.subset(np.arange(120)), growing)
        assert watcher.wait() == 0, (lines, log.read_text()[-3000:])
    assert "round 1: 120 particles, 3 classes" in lines[1], lines
    assert lines[1].endswith("(new particles assigned)") and "stopping" in lines[2], lines
    rules = {rule for _, rule, _ in slurm_submissions(log.read_text())}
    assert "classify_live_round" in rules and "prepare_shard" in rules, rules
    assert io.read_particles(tmp_path / "results" / "classify" / "particles.star").n == 120


# ---------------------------------------------------------------- module
@pytest.mark.slow
def test_class2d_as_a_module_of_a_host_workflow(local_run, tmp_path):
    """The host passes its own class2d config (the small run, with templates) and chains its
    own rule on the templates. Planned from scratch, the whole class2d DAG comes in under
    class2d_* names; run where the local run was, it reuses that run's files (the module's
    rules are the same rules) and runs only the template export and its own rule."""
    host = REPO / "tests" / "module_host" / "Snakefile"
    config = {"class2d_snakefile": str(SNAKEFILE),
              "class2d": {**SMALL, "templates": {"activate": True}}}
    dry = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path, config)),
                    snakefile=host)
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout + dry.stderr, re.MULTILINE))
    assert planned.get("class2d_classify_full_shard") == "2", dry.stderr[-3000:]
    assert planned.get("class2d_export_templates") == planned.get("count_templates") == "1"

    results = local_run / "results"
    stamp = (results / "select" / "classes.mrcs").stat().st_mtime_ns
    run = snakemake(local_run, "--cores", "2", "--configfile",
                    str(write_config(local_run / "host", config)), snakefile=host)
    ran = dict(re.findall(r"^(\w+)\s+(\d+)$", run.stdout + run.stderr, re.MULTILINE))
    assert ran == {"class2d_export_templates": "1", "count_templates": "1", "all": "1",
                   "total": "3"}, run.stderr[-3000:]
    assert (results / "select" / "classes.mrcs").stat().st_mtime_ns == stamp
    templates = starfile.read(results / "templates" / "templates.star")
    selected = starfile.read(results / "select" / "classes.star")
    assert len(templates) == len(selected) > 0
    with mrcfile.open(results / "templates" / "templates.mrcs") as mrc:
        assert mrc.data.shape == (len(selected), 32, 32)
    count = (local_run / "host" / "template_count.tsv").read_text()
    assert count == f"templates\t{len(templates)}\n"


# ---------------------------------------------------------------- report
def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in px from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.mark.slow
@pytest.mark.chromium
def test_report_shows_the_gallery_and_the_convergence_plot(local_run):
    """snakemake --report after the run; in headless Chromium the description is on the
    first page, and under "2D classification" both pictures open at their own size."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed (pip install playwright)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    report = local_run / "report.html"
    snakemake(local_run, "--configfile", "config.yaml", "--report", str(report))
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    shown, captions = {}, {}
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=args)
        page = browser.new_page()
        for name in ("gallery.png", "convergence.png"):
            page.goto(f"file://{report}")
            first = page.locator("body").inner_text()
            page.get_by_text("2D classification", exact=True).click()
            page.locator("tr", has_text=f"classify/{name}").locator("a[iconname=eye]").click()
            image = page.locator(f"img[src^='data:image/png'][src*='filename={name}']")
            image.wait_for()
            shown[name] = tuple(image.evaluate("i => [i.naturalWidth, i.naturalHeight]"))
            page.goto(f"file://{report}")
            page.get_by_text("2D classification", exact=True).click()
            page.locator("tr", has_text=f"classify/{name}").locator(
                "a[iconname=information-circle]").click()
            captions[name] = page.locator("body").inner_text()
        browser.close()
    assert "cryo-EM 2D classification of demo into 3 classes" in first
    for name in shown:
        assert shown[name] == png_size(local_run / "results" / "classify" / name)
    assert "The class averages after the last full pass" in captions["gallery.png"]
    assert "mean log-likelihood per particle" in captions["convergence.png"]


# ---------------------------------------------------------------- selection page
@pytest.mark.slow
def test_saved_selection_goes_where_the_page_says_and_the_next_run_uses_it(local_run):
    """Page, README and config name the same file, and a rerun selects what it lists (runs
    last: it changes the local run's select/ outputs)."""
    results = local_run / "results"
    where = "results/select/selection.json"
    page = (results / "select" / "selection.html").read_text()
    assert f"Move the downloaded file to <code>{where}</code>" in page
    assert "selection_file" not in page
    assert "{outdir}/select/selection.json" in (REPO / "config" / "config.yaml").read_text()
    assert "`results/select/selection.json`" in (REPO / "README.md").read_text()
    before = starfile.read(results / "select" / "classes.star")["rlnClassNumber"].tolist()
    classes = starfile.read(results / "classify" / "classes.star")["rlnClassNumber"].tolist()
    chosen = [n for n in classes if n not in before] or classes[-1:]
    (results / "select" / "selection.json").write_text(json.dumps({"selected": chosen}))
    snakemake(local_run, "results/select/particles.star", "--cores", "2",
              "--configfile", "config.yaml")
    kept = particles(results / "select" / "particles.star")["rlnClassNumber"]
    classified = particles(results / "classify" / "particles.star")["rlnClassNumber"]
    rejected = particles(results / "select" / "rejected.star")["rlnClassNumber"]
    assert sorted(set(kept)) == chosen
    # every particle of the listed classes is kept, or rejected by its outlier z-score
    # (select.max_particle_zscore)
    assert len(kept) + int(rejected.isin(chosen).sum()) == int(classified.isin(chosen).sum())
    assert len(kept) > 0.5 * int(classified.isin(chosen).sum())
    assert f"selection file {where}" in (results / "select" / "selection.html").read_text()
