"""End-to-end CPU benchmark: 3,000 particles of 64 px (16 objects + junk) into 20 classes.

    python bench/bench_classify.py [--particles 3000] [--exhaustive] [--relion]
    python bench/bench_classify.py --workflow [--repeats 3] [--iterations-per-job 20]

Prints the work done (particles, classes, poses searched, FLOPs), the seconds of
prepare and classify, a time budget (the seconds, share of the run and calls of each part
that the library times, ``class2d.timing``: prepare, each online iteration's E-step,
M-step, twins and refill, the full pass, bias, outlier features, export), the achieved
E-step GFLOP/s and its ratio to the float32 matmul peak measured on this machine in the
same run (the better of one measurement before and one after the classification, so that
a slow moment of a shared machine does not flatter the ratio); with --relion (and RELION
installed) also runs relion_refine's 2D classification on the same data and prints the
time ratio and both adjusted Rand indices against the ground truth.

With --workflow it times the same data and settings two ways, in alternating order, each
in a fresh process: in-process (``prepare_stack`` then ``classify_all``) and through the
Snakemake workflow (prepare and classify, the later stages off); it prints both wall
times (interpreter start and imports included in both), their ratio, where the workflow's
time went (its jobs' wall time per rule from Snakemake's job records, and the time
outside jobs), the load average, whether both gave the same class averages, and the last
workflow run's time budget: the parts its jobs logged, what their steps did not time, the
jobs' own start and end, and Snakemake's time outside jobs.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np
import yaml

from class2d import discs, io, timing
from class2d.classify import classify_all
from class2d.em.state import ClassState
from class2d.metrics import adjusted_rand
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset

#: particle 117 Å: a 150 Å mask (9/7, ``discs``)
CLASSIFY = {"n_classes": 20, "max_res_A": 6.0, "particle_diameter_A": 117.0}
MASK_DIAMETER_A = discs.mask_diameter_A(CLASSIFY["particle_diameter_A"])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the in-process run of --workflow, in a fresh process: argv star, out_dir, classify config
IN_PROCESS = """
import json, os, sys, time
import class2d
from class2d.classify import classify_all
from class2d.em.params import ClassifyParams
from class2d.prepare import prepare_stack
star, out, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tic = time.perf_counter()
prepare_stack(star, os.path.join(out, "prepare"), diameter_A=config["particle_diameter_A"],
              max_res_A=ClassifyParams.from_config(config, 0).align_res_A)
classify_all(os.path.join(out, "prepare"), os.path.join(out, "classify"), config, 0, "cpu")
print(time.perf_counter() - tic)
"""


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 GEMM rate of NumPy's BLAS on this machine, GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(func) -> float:
    tic = time.perf_counter()
    func()
    return time.perf_counter() - tic


class TimedSteps(logging.Handler):
    """Collects the measured times that ``class2d.em.online`` logs for each online iteration
    and full-pass shard (the result files hold no times: the same seed gives the same bytes)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rows: list[dict] = []
        self.logger = logging.getLogger("class2d.em.online")

    def __enter__(self) -> "TimedSteps":
        self.saved_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.saved_level)

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, dict) and "estep_seconds" in record.args:
            self.rows.append(record.args)


def run_relion(star: str, work: str, n_classes: int, cores: int) -> tuple[float, np.ndarray]:
    """relion_refine 2D classification with the GUI's default EM settings, 25 iterations.

    RELION resolves image names against its working directory: it runs in the STAR's."""
    out = os.path.abspath(os.path.join(work, "relion", "run"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = ["relion_refine", "--i", os.path.basename(star), "--o", out, "--K", str(n_classes),
           "--iter", "25",
           "--tau2_fudge", "2", "--particle_diameter", str(MASK_DIAMETER_A),
           "--ctf", "--flatten_solvent", "--zero_mask", "--oversampling", "1",
           "--psi_step", "12", "--offset_range", "5", "--offset_step", "2", "--norm", "--scale",
           "--j", str(cores), "--pool", "30", "--dont_combine_weights_via_disc"]
    seconds = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True,
                                             cwd=os.path.dirname(os.path.abspath(star))))
    data = io.read_particles(f"{out}_it025_data.star").particles
    return seconds, data["rlnClassNumber"].to_numpy()


def job_times(outdir: str) -> dict[str, list[float]]:
    """Wall seconds of each job that wrote into ``outdir``, by rule, from Snakemake's job
    records (``.snakemake/metadata``: one per output file, named by its path in URL-safe
    base64; paths too long for one file name, which a temporary folder's are not, skipped)."""
    records = os.path.join(REPO, ".snakemake", "metadata")
    jobs = {}
    for name in os.listdir(records):
        if name.startswith("@"):
            continue
        path = base64.urlsafe_b64decode(name).decode(errors="replace")
        if path.startswith(outdir + os.sep):
            with open(os.path.join(records, name)) as fh:
                info = json.load(fh)
            key = (info["rule"], info["endtime"])       # one job's outputs share its end
            jobs[key] = min(jobs.get(key, info["endtime"]), info["starttime"])
    by_rule = collections.defaultdict(list)
    for (rule, end), start in jobs.items():
        by_rule[rule].append(end - start)
    return by_rule


def job_logs(outdir: str) -> list[str]:
    """The text of every job log of the workflow run in ``outdir``."""
    texts = []
    for folder, _, files in os.walk(os.path.join(outdir, "logs")):
        for name in files:
            with open(os.path.join(folder, name)) as fh:
                texts.append(fh.read())
    return texts


def step_seconds(outdir: str) -> float:
    """Seconds spent inside the library call of every job of the workflow run in ``outdir``
    (each job log's closing line ``<step>: done in <s> s``, written by class2d.runner)."""
    return sum(float(m) for text in job_logs(outdir)
               for m in re.findall(r": done in ([0-9.]+) s", text))


def logged_budget(outdir: str) -> timing.Budget:
    """The time budgets of every job of the workflow run in ``outdir``, summed (each job
    log's line ``time budget: {...}``, written by class2d.runner)."""
    budget = timing.Budget()
    for text in job_logs(outdir):
        for line in re.findall(re.escape(timing.LOG_PREFIX) + r"(\{.*\})", text):
            budget.merge(timing.Budget.from_json(line))
    return budget


def print_budget(budget: timing.Budget, wall: float,
                 other: dict[str, float] | None = None) -> None:
    """One table: each timed part (a part's own seconds, those of the parts nested in it
    apart), then ``other`` (rows measured outside the library), then the run's time that no
    row holds (where there is any); seconds, share of ``wall`` and calls.  Below it, the
    names timed under several parts, summed wherever they ran."""
    rows = [(path, part.seconds, str(part.calls)) for path, part in sorted(budget.parts.items())]
    rows += [(name, seconds, "") for name, seconds in (other or {}).items()]
    untimed = wall - sum(seconds for _, seconds, _ in rows)
    if abs(untimed) >= 0.005:
        rows.append(("(not timed)", untimed, ""))
    width = max(len(name) for name, _, _ in rows)
    print(f"time budget, {wall:.1f} s in all (a part's own seconds, without its nested parts):")
    print(f"  {'part':<{width}} {'seconds':>8} {'share':>6} {'calls':>6}")
    for name, seconds, calls in rows:
        print(f"  {name:<{width}} {seconds:8.2f} {seconds / wall:6.1%} {calls:>6}")
    names = collections.Counter(path.rsplit(timing.SEPARATOR, 1)[-1] for path in budget.parts)
    shared = [name for name, count in sorted(names.items()) if count > 1]
    if shared:
        print("  wherever nested: " + ", ".join(
            f"{name} {budget.seconds(name):.2f} s ({budget.seconds(name) / wall:.1%})"
            for name in shared))


def compare_workflow(star: str, work: str, config: dict, repeats: int,
                     iterations_per_job: int | None) -> None:
    """In-process against workflow runs on ``star``, alternating which goes first."""
    cores = os.cpu_count() or 1
    if iterations_per_job:
        config = {**config, "iterations_per_job": iterations_per_job}
    # untimed: fills Numba's cache of this checkout, which a changed source file empties
    subprocess.run([sys.executable, "-c", IN_PROCESS, star, os.path.join(work, "warm-up"),
                    json.dumps({**config, "online_iterations": 2})], check=True,
                   capture_output=True)
    times = {"in-process": [], "workflow": []}
    work_only, steps = [], []
    for r in range(repeats):
        order = ["in-process", "workflow"] if r % 2 == 0 else ["workflow", "in-process"]
        for kind in order:
            out = os.path.join(work, f"{kind}_{r}")
            load = os.getloadavg()[0]
            if kind == "in-process":
                cmd = [sys.executable, "-c", IN_PROCESS, star, out, json.dumps(config)]
            else:
                settings = {"particles": star, "outdir": out, "backend": "cpu", "seed": 0,
                            "particle_diameter_A": config["particle_diameter_A"],
                            "classify": {k: v for k, v in config.items()
                                         if k != "particle_diameter_A"},
                            **{stage: {"activate": False} for stage in
                               ("dedup", "select", "rebalance", "templates")}}
                with open(out + ".yaml", "w") as fh:
                    yaml.safe_dump(settings, fh)
                cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores),
                       "--configfile", out + ".yaml", "--snakefile",
                       os.path.join(REPO, "Snakefile"), "--directory", REPO]
            tic = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            seconds = time.perf_counter() - tic
            if run.returncode:
                raise SystemExit(f"{kind} run failed:\n{run.stderr[-3000:]}")
            if kind == "in-process":
                work_only.append(float(run.stdout.split()[-1]))
            else:
                steps.append(step_seconds(out))
            times[kind].append(seconds)
            print(f"run {r + 1} {kind}: {seconds:.1f} s (load average {load:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after)", flush=True)
        with open(os.path.join(work, f"in-process_{r}", "classify", "classes.mrcs"), "rb") as a, \
                open(os.path.join(work, f"workflow_{r}", "classify", "classes.mrcs"), "rb") as b:
            print(f"  same class averages (bytes): {'yes' if a.read() == b.read() else 'NO'}")
    jobs = job_times(os.path.join(work, f"workflow_{repeats - 1}"))
    in_jobs = sum(sum(v) for v in jobs.values())
    print(f"last workflow run: {sum(len(v) for v in jobs.values())} jobs, "
          f"{in_jobs:.1f} s in jobs, {times['workflow'][-1] - in_jobs:.1f} s outside them "
          "(Snakemake's start, DAG, scheduling)")
    for rule, seconds in sorted(jobs.items(), key=lambda item: -sum(item[1])):
        print(f"  {rule}: {len(seconds)} job(s), {sum(seconds):.1f} s")
    last = os.path.join(work, f"workflow_{repeats - 1}")
    budget = logged_budget(last)
    print_budget(budget, times["workflow"][-1], {
        "steps, not timed": steps[-1] - budget.total,
        "jobs outside their step (interpreter, imports, exit)": in_jobs - steps[-1],
        "Snakemake outside jobs (start, DAG, scheduling)": times["workflow"][-1] - in_jobs})
    med = {kind: statistics.median(v) for kind, v in times.items()}
    for kind, values in times.items():
        print(f"{kind}: median {med[kind]:.1f} s, range {min(values):.1f}-{max(values):.1f} s "
              f"over {len(values)} runs")
    print(f"in-process work alone (after imports): median {statistics.median(work_only):.1f} s")
    # the load moves the work by tens of percent between runs; what each way adds to it moves less
    extra = {"in-process": [t - w for t, w in zip(times["in-process"], work_only)],
             "workflow": [t - w for t, w in zip(times["workflow"], steps)]}
    for kind, values in extra.items():
        print(f"{kind}: time outside the library calls (starts, imports, Snakemake, exits; "
              "Numba's first kernel load is inside them): "
              f"median {statistics.median(values):.1f} s, range {min(values):.1f}-"
              f"{max(values):.1f} s")
    work = statistics.median(work_only)
    added = {kind: statistics.median(values) for kind, values in extra.items()}
    print(f"workflow / in-process from those, on the median work of {work:.1f} s: "
          f"{(work + added['workflow']) / (work + added['in-process']):.2f}")
    pairs = [w / i for w, i in zip(times["workflow"], times["in-process"])]
    print(f"workflow / in-process: {med['workflow'] / med['in-process']:.2f} (medians); "
          f"per pair {', '.join(f'{p:.2f}' for p in pairs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--exhaustive", action="store_true",
                        help="score every class at every pose (class_prune_margin 0)")
    parser.add_argument("--relion", action="store_true", help="also time relion_refine")
    parser.add_argument("--workflow", action="store_true",
                        help="time the Snakemake workflow against the in-process run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (--workflow)")
    parser.add_argument("--iterations-per-job", type=int, default=0,
                        help="classify.iterations_per_job (--workflow; 0: the config's)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as work:
        data = simulate(args.particles, box=64, apix=3.0, snr=0.05, n_objects=16,
                        junk_fraction=0.1, duplicate_fraction=0.0, seed=7)
        star = write_dataset(data, os.path.join(work, "data"))
        if args.workflow:
            compare_workflow(star, work, CLASSIFY, args.repeats, args.iterations_per_job)
            return
        peak_before = matmul_peak()
        tic = time.perf_counter()
        with timing.record() as budget:
            prepare_stack(star, os.path.join(work, "prepare"), max_res_A=CLASSIFY["max_res_A"],
                          diameter_A=CLASSIFY["particle_diameter_A"])
            t_prepare = time.perf_counter() - tic
            tic = time.perf_counter()
            config = {**CLASSIFY, "class_prune_margin": 0.0} if args.exhaustive else CLASSIFY
            with TimedSteps() as timed:
                classify_all(os.path.join(work, "prepare"), os.path.join(work, "classify"),
                             config, backend="cpu")
            t_classify = time.perf_counter() - tic
        last = sorted(d for d in os.listdir(os.path.join(work, "classify")) if d.startswith("iter_"))[-1]
        history = ClassState.load(os.path.join(work, "classify", last, "state.npz")).history
        flops = sum(row["gflops"] for row in history) * 1e9
        e_seconds = sum(row["estep_seconds"] for row in timed.rows)
        it_seconds = sum(row["seconds"] for row in timed.rows)
        poses = sum(row["particles"] * row["local_poses"] for row in history)
        labels = io.read_particles(os.path.join(work, "classify", "particles.star")).particles
        good = (data.truth["junk"] == "").to_numpy()
        ours = labels["rlnClassNumber"].to_numpy()
        ari = adjusted_rand(data.truth["true_class"].to_numpy()[good], ours[good])
        rate = flops / e_seconds / 1e9
        peak = max(peak_before, matmul_peak())
        print(f"measured float32 matmul peak: {peak:.1f} GFLOP/s (before the run "
              f"{peak_before:.1f})")
        dense = sum(row["particles"] * row["local_poses"] * 4.0 * row["frequencies"]
                    for row in history) * CLASSIFY["n_classes"]
        print(f"particles {args.particles}, classes {CLASSIFY['n_classes']}, iterations "
              f"{len(history)}, particle-poses (all classes, local search) "
              f"{poses * CLASSIFY['n_classes']:.3g}")
        print(f"E-step products done {flops / 1e12:.2f} TFLOP (prepass + candidate classes; "
              f"scoring every class would be ≈ {dense / 1e12:.2f} TFLOP) in {e_seconds:.1f} s: "
              f"{rate:.1f} GFLOP/s = {rate / peak:.0%} of the measured peak; "
              f"iterations {it_seconds:.1f} s in all")
        print(f"prepare {t_prepare:.1f} s + classify {t_classify:.1f} s = "
              f"{t_prepare + t_classify:.1f} s end to end")
        print(f"adjusted Rand index (good particles vs truth): {ari:.3f}")
        print_budget(budget, t_prepare + t_classify)
        print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
        if args.relion and shutil.which("relion_refine"):
            seconds, relion_labels = run_relion(star, work, CLASSIFY["n_classes"], cores)
            relion_ari = adjusted_rand(data.truth["true_class"].to_numpy()[good],
                                       relion_labels[good])
            print(f"RELION relion_refine: {seconds:.1f} s, ARI {relion_ari:.3f}; class2d is "
                  f"{seconds / (t_prepare + t_classify):.1f}x faster")


if __name__ == "__main__":
    main()
