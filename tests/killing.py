"""Kill the demo workflow anywhere, resume it, and compare every output with an uninterrupted run.

    >>> reference = run_workflow(folder / "kill_ref", SMALL)          # uninterrupted
    >>> trial = kill_and_resume(folder / "kill_000", SMALL, Moment("gather", 0.3))
    >>> trial.running            # the jobs the kill cut off, e.g. ["gather"]
    >>> differences(reference, trial.outdir)                         # [] when all agree

A kill is SIGKILL to the whole process group (Snakemake and every job) ``delay_s`` seconds
after the stage's first job has written its log (``Moment(stage, delay_s)``), or
``delay_s`` seconds after the start (``Moment(None, delay_s)``).  The resume is what the
README tells users: ``snakemake --unlock`` then the same command again.  Outputs are
compared byte for byte (nothing class2d writes carries a time: two uninterrupted runs give
the same bytes); the output folders' names have the same length, so the absolute paths some
files hold are compared by substituting one folder's path for the other's.  Used by
``tests/test_reliability_runs.py`` (a few trials) and ``bench/kill_trials.py`` (≥ 20).
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

#: a demo of a few seconds per job: 300 particles of 32 px, 4 classes, 2 shards, two online
#: jobs (iterations 1-2 with the initial classes, 3-4), one full pass, every later stage
SMALL = {
    "demo": {"n_particles": 300, "box": 32, "apix": 6.0, "snr": 0.5, "n_objects": 4,
             "junk_fraction": 0.0, "duplicate_fraction": 0.05},
    "prepare": {"shards": 2},
    "classify": {"n_classes": 4, "max_res_A": 12.0, "online_iterations": 4,
                 "batch_per_class": 30, "final_full_iterations": 1, "iterations_per_job": 2},
}

#: every stage of SMALL's run: the log its first job writes on starting, and its scripts
STAGES = {
    "simulate": ("logs/simulate_demo.log", ("simulate_demo",)),
    "prepare": ("logs/prepare/shard_000.log", ("prepare_shard", "prepare_stack")),
    "init": ("logs/classify/init_classes.log", ("init_classes",)),
    "iterations": ("logs/classify/iteration_004.log", ("classify_iteration",)),
    "shard passes": ("logs/classify/full_005_shard_000.log", ("classify_full_shard",)),
    "gather": ("logs/classify/gather_005.log", ("gather_full_pass",)),
    "export": ("logs/classify/export_classes.log", ("export_classes",)),
    "truth": ("logs/compare_with_truth.log", ("compare_with_truth",)),    # the demo's check
    "dedup": ("logs/remove_duplicates.log", ("remove_duplicates",)),
    "select": ("logs/select_classes.log", ("select_classes",)),
    "rebalance": ("logs/rebalance_classes.log", ("rebalance_classes",)),
    "templates": ("logs/export_templates.log", ("export_templates",)),
}
#: rule script name -> stage
SCRIPT_STAGE = {script: stage for stage, (_, scripts) in STAGES.items() for script in scripts}
#: the temporary copy of a rule's script that Snakemake runs: .snakemake/scripts/tmpXXXX.<name>.py
SCRIPT_COPY = re.compile(r"\.snakemake/scripts/tmp[^/.]+\.(\w+)\.py")


def workflow_command(outdir: Path, config: dict, cores: int = 2) -> list[str]:
    """The snakemake command line running ``config`` into ``outdir`` (config written beside it)."""
    path = outdir.parent / f"{outdir.name}.yaml"
    path.write_text(yaml.safe_dump({**config, "outdir": str(outdir)}))
    return [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(path),
            "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO)]


def run_workflow(outdir: Path, config: dict, cores: int = 2, extra: tuple = ()) -> Path:
    """Run the workflow to the end; ``RuntimeError`` with the log's tail when it fails."""
    run = subprocess.run(workflow_command(outdir, config, cores) + list(extra),
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"workflow into {outdir} failed:\n{run.stderr[-3000:]}")
    return outdir


@dataclasses.dataclass(frozen=True)
class Moment:
    """When to kill: ``delay_s`` s after ``stage``'s log appears (None: after the start)."""

    stage: str | None
    delay_s: float

    def __str__(self) -> str:
        return f"{self.stage or 'start'} + {self.delay_s:.2f} s"


@dataclasses.dataclass
class Trial:
    """What one kill did: the jobs it cut off (stages; ["between jobs"] when only Snakemake
    ran; [] when the run had ended), the temporary files it left, and the resume's exit
    status and the tail of its output."""

    outdir: Path
    moment: Moment
    running: list[str]
    leftovers: list[str]
    resume_rc: int
    resume_tail: str


def group_scripts(pgid: int) -> list[str]:
    """Rule scripts run by the processes of process group ``pgid`` (read from /proc)."""
    scripts = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # fields after the command name (which may hold spaces): state, ppid, pgrp
        if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
            continue
        scripts += SCRIPT_COPY.findall(cmdline)
    return sorted(set(scripts))


def kill_and_resume(outdir: Path, config: dict, moment: Moment, cores: int = 2,
                    timeout_s: float = 600) -> Trial:
    """Start the workflow, SIGKILL its process group at ``moment``, unlock and rerun it."""
    cmd = workflow_command(outdir, config, cores)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    trigger = outdir / STAGES[moment.stage][0] if moment.stage else None
    while trigger is not None and not trigger.exists() and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    time.sleep(moment.delay_s)
    ended = proc.poll() is not None
    scripts = [] if ended else group_scripts(proc.pid)
    if not ended:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    running = ([] if ended else
               sorted({SCRIPT_STAGE.get(s, s) for s in scripts}) or ["between jobs"])
    leftovers = [str(p.relative_to(outdir)) for p in outdir.rglob("*") if ".tmp" in p.name]
    subprocess.run(cmd + ["--unlock"], capture_output=True, check=True)
    resume = subprocess.run(cmd, capture_output=True, text=True)
    return Trial(outdir, moment, running, leftovers, resume.returncode,
                 (resume.stdout + resume.stderr)[-3000:])


def output_files(outdir: Path) -> dict[str, Path]:
    """Every file under ``outdir`` but the logs (they hold times), by relative path."""
    return {str(p.relative_to(outdir)): p for p in sorted(outdir.rglob("*"))
            if p.is_file() and p.relative_to(outdir).parts[0] != "logs"}


def differences(reference: Path, outdir: Path) -> list[str]:
    """Relative paths of the files that differ between two output folders (missing on one
    side, or different bytes once ``reference``'s path is read as ``outdir``'s); the folder
    names must have the same length."""
    if len(str(reference)) != len(str(outdir)):
        raise ValueError(f"{reference} and {outdir}: folder paths of different lengths")
    ours, theirs = output_files(outdir), output_files(reference)
    old, new = str(reference).encode(), str(outdir).encode()
    return sorted(set(ours) ^ set(theirs)) + [
        name for name in sorted(set(ours) & set(theirs))
        if theirs[name].read_bytes().replace(old, new) != ours[name].read_bytes()]
