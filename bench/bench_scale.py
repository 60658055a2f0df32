"""Scale benchmark: the real workflow (prepare + classify) on synthetic sets of growing size.

    python bench/bench_scale.py --particles 10000 30000 100000 --box 256 --apix 1.0 \
        --classes 50 [--work /scratch/bench_scale] [--cores 2] [--memory-gb 4]
    python bench/bench_scale.py --particles 30000 --classes 50 100 200

For each (N, K): makes the synthetic set (``class2d.simulate.write_simulated``: 16
objects, 10 % junk, SNR 0.05; reused when ``--work`` already holds it), runs
``snakemake --cores C`` up to ``classify/classes.star`` in a fresh output folder, and
reads every job's closing log line (``…: done in S s, peak memory G GB``, written by
``class2d.runner.run_step``).  Prints, as each run ends, per stage (simulate, prepare,
online iterations, full pass): seconds summed over its jobs and the peak RSS of its largest
job; the machine's mean load during the run; the E-step's FLOPs, seconds, FLOP rate and
its ratio to the float32 matmul peak measured before the runs (measured again after);
and at the end the cost per particle as N grows.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import subprocess
import sys
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np
import yaml

from bench_classify import matmul_peak
from class2d.progress import peak_memory_gb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: a job's closing line, as class2d.runner.run_step writes it
CLOSING = re.compile(r"(\w+): (?:done in|failed after) ([\d.]+) s, peak memory ([\d.]+) GB")
#: an online iteration's or a full-pass shard's work, as class2d.em.online logs it
ESTEP = re.compile(r"([\d.]+) GFLOP, E-step ([\d.]+) s")
#: the jobs of the online iterations (``class2d.classify``); the rest of classification is
#: the full pass (shards, gather, export)
ONLINE_STEPS = ("init_step", "iteration_step")


def dataset(work: str, n: int, box: int, apix: float, seed: int,
            memory_gb: float) -> tuple[str, float, float]:
    """The synthetic set's STAR (made unless present): (path, seconds, peak GB; 0 if reused)."""
    folder = os.path.join(work, f"data_{n}_{box}px_{apix:g}A_seed{seed}")
    star = os.path.join(folder, "particles.star")
    if os.path.exists(star):
        return star, 0.0, 0.0
    # the simulation runs in its own process, so that its peak memory is its own
    code = ("import sys, time; from class2d.simulate import write_simulated; "
            "from class2d.budget import simulate_chunk; from class2d.progress import "
            "peak_memory_gb; t = time.perf_counter(); "
            f"write_simulated({folder!r}, simulate_chunk({memory_gb}, {box}, 2), "
            f"n_particles={n}, box={box}, apix={apix}, snr=0.05, n_objects=16, "
            f"junk_fraction=0.1, duplicate_fraction=0.0, n_micrographs={max(4, n // 100)}, "
            f"seed={seed}); print(time.perf_counter() - t, peak_memory_gb())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=REPO)
    seconds, peak = map(float, out.stdout.split()[-2:])
    return star, seconds, peak


def run_workflow(star: str, outdir: str, args: argparse.Namespace,
                 n_classes: int) -> tuple[float, float]:
    """snakemake up to classify/classes.star: (wall seconds, mean 1-minute load average of the
    machine during the run, sampled every 10 s: above --cores, other work shared the cores)."""
    config = {"particles": star, "outdir": outdir, "backend": "cpu", "seed": 0,
              "memory_gb": args.memory_gb, "threads": args.cores,
              "classify": {"n_classes": n_classes, "max_res_A": args.max_res,
                           "online_iterations": args.iterations},
              "particle_diameter_A": 0.6 * args.box * args.apix}
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "bench_config.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(config, handle)
    tic = time.perf_counter()
    loads = []
    with open(os.path.join(outdir, "snakemake.log"), "w") as log:     # the jobs' lines too
        run = subprocess.Popen([sys.executable, "-m", "snakemake",
                                os.path.join(outdir, "classify", "classes.star"), "--cores",
                                str(args.cores), "--configfile", path, "--snakefile",
                                os.path.join(REPO, "Snakefile"), "--directory", REPO],
                               stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                code = run.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                loads.append(os.getloadavg()[0])
    if code:
        raise subprocess.CalledProcessError(code, run.args)
    return time.perf_counter() - tic, float(np.mean(loads)) if loads else os.getloadavg()[0]


def job_lines(outdir: str) -> list[tuple[str, float, float]]:
    """(function, seconds, peak GB) of every job, from the closing lines of its log."""
    rows = []
    for log in sorted(glob.glob(os.path.join(outdir, "logs", "**", "*.log"), recursive=True)):
        with open(log) as handle:
            found = CLOSING.findall(handle.read())
        rows += [(name, float(s), float(gb)) for name, s, gb in found[-1:]]
    return rows


def estep(outdir: str) -> tuple[float, float]:
    """(E-step GFLOP, E-step seconds) summed over every online iteration and full-pass shard,
    from the lines ``class2d.em.online`` logs (the state files hold no measured times)."""
    gflop = seconds = 0.0
    for log in glob.glob(os.path.join(outdir, "logs", "classify", "*.log")):
        with open(log) as handle:
            for flops, estep_s in ESTEP.findall(handle.read()):
                gflop, seconds = gflop + float(flops), seconds + float(estep_s)
    return gflop, seconds


def report(n: int, k: int, wall: float, load: float, outdir: str, sim_seconds: float,
           sim_peak: float, peak: float) -> None:
    """Print one run's lines as soon as it ends (a long series is read as it goes)."""
    jobs = job_lines(outdir)
    stage = {"prepare": [j for j in jobs if "prepare" in j[0]],
             "online": [j for j in jobs if j[0] in ONLINE_STEPS],
             "full pass": [j for j in jobs if "prepare" not in j[0] and j[0] not in ONLINE_STEPS]}
    gflop, e_seconds = estep(outdir)
    parts = [f"simulate {sim_seconds:.0f} s / {sim_peak:.2f} GB" if sim_seconds
             else "simulate reused"]
    for name, stage_jobs in stage.items():
        parts.append(f"{name} {sum(j[1] for j in stage_jobs):.0f} s in {len(stage_jobs)} jobs / "
                     f"{max((j[2] for j in stage_jobs), default=0.0):.2f} GB")
    rate = gflop / e_seconds if e_seconds else 0.0
    print(f"N {n}, K {k}: workflow {wall:.0f} s end to end (load {load:.1f}); "
          + "; ".join(parts))
    print(f"    E-step {gflop / 1e3:.2f} TFLOP in {e_seconds:.0f} s: {rate:.1f} GFLOP/s = "
          f"{rate / peak:.0%} of the peak; {1e3 * wall / n:.2f} ms per particle end to "
          f"end, {1e3 * sum(j[1] for j in stage['full pass']) / n:.2f} ms in the full pass",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--classes", type=int, nargs="+", default=[50])
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--apix", type=float, default=1.0)
    parser.add_argument("--max-res", type=float, default=6.0, help="Å")
    parser.add_argument("--iterations", type=int, default=20, help="online iterations")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--work", default="bench_scale_work",
                        help="folder for the data sets (reused) and the runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}; workflow on --cores {args.cores}, memory_gb {args.memory_gb}")
    peak_before = matmul_peak()
    print(f"float32 matmul peak before the runs: {peak_before:.1f} GFLOP/s", flush=True)
    print("N, K: stage wall s (sum of its jobs' s) / peak RSS of its largest job GB")
    results = []
    for n in args.particles:
        star, sim_seconds, sim_peak = dataset(work, n, args.box, args.apix, args.seed,
                                             args.memory_gb)
        for k in args.classes:
            outdir = os.path.join(work, f"run_{n}_{args.box}px_K{k}_it{args.iterations}")
            subprocess.run(["rm", "-rf", outdir], check=True)
            wall, load = run_workflow(star, outdir, args, k)
            results.append((n, k, wall))
            report(n, k, wall, load, outdir, sim_seconds, sim_peak, peak_before)
    print(f"float32 matmul peak after the runs: {matmul_peak():.1f} GFLOP/s (the ratios above "
          f"are to the peak before)")
    base = {k: wall / n for n, k, wall in results if n == min(args.particles)}
    for n, k, wall in results:
        print(f"cost per particle, N {n} K {k}: {wall / n / base[k]:.2f}x that at "
              f"N {min(args.particles)}")
    print(f"this script's own peak memory: {peak_memory_gb():.2f} GB")


if __name__ == "__main__":
    main()
