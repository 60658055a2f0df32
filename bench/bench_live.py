"""Live 2D at size: the time of a round against the number of new particles, and the
classes after the last round against a batch run on the whole file.

    python bench/bench_live.py --base 100000 --rounds 1000 2000 10000 100000 \
        [--classes 20] [--seed 1] [--work /scratch/live] [--cores 2]

A labelled set of ``base + sum(rounds)`` particles (``bench_accuracy.dataset``: 16 objects
at 64 px, SNR 0.1, CTF, junk and duplicate picks) is fed to ``class2d live`` as a STAR that
grows: first its ``base`` rows, then each round's rows appended as soon as the watcher has
said the last round is done (the STAR is replaced atomically, as RELION and CryoSPARC write
theirs).  The watcher runs the real workflow (classification only: the later stages are
off) and stops by itself when the file has not grown for ``--idle`` seconds.  Per round it
prints the particles added, the round's case (a full iteration over all, or the new ones
assigned: CryoSPARC's rule, ``2 × batch_per_class × n_classes`` new since the last full
iteration), the watcher's seconds and the ARI of the good particles so far; then the same
workflow runs once on the whole file (a batch run) and both ARIs are printed.  Results go
to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

from bench_accuracy import CLASSIFY, dataset
from class2d import io
from class2d.metrics import adjusted_rand
from class2d.simulate.output import read_truth

#: the watcher's line for a round (``class2d.watch.status_line``)
ROUND = re.compile(r"round (\d+): (\d+) particles, \S+ classes, ([\d.]+) s( \(new particles "
                   r"assigned\))?")
OFF = {stage: {"activate": False} for stage in ("dedup", "select", "rebalance", "templates")}


def write_rows(table: io.ParticleTable, rows: int, target: str) -> None:
    """The first ``rows`` particles of ``table`` to ``target`` (atomically)."""
    io.write_particles(table.subset(np.arange(rows)), target)


def good_ari(outdir: str, truth) -> float:
    """ARI of the good particles classified so far (the input's first rows)."""
    found = io.read_particles(os.path.join(outdir, "classify", "particles.star")).particles
    n = len(found)
    good = (truth["junk"] == "").to_numpy()[:n]
    return adjusted_rand(truth["true_class"].to_numpy()[:n][good],
                         found["rlnClassNumber"].to_numpy()[good])


def write_config(path: str, particles: str, outdir: str, n_classes: int) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump({"particles": particles, "outdir": outdir, **OFF,
                        "classify": {**CLASSIFY, "n_classes": n_classes}}, fh)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, nargs="+", default=[1000, 2000, 10_000, 100_000])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="/tmp/bench_live")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.work = os.path.abspath(args.work)       # the workflow runs there (its .snakemake/)
    os.makedirs(args.work, exist_ok=True)
    total = args.base + sum(args.rounds)
    star = dataset(args.work, "objects", total, 64, args.seed)
    table = io.read_particles(star)
    truth = read_truth(os.path.join(os.path.dirname(star), "truth.star"))
    # the growing STAR beside the images, so that its image paths stay the same
    growing = os.path.join(os.path.dirname(star), "growing.star")
    live_out, batch_out = (os.path.join(args.work, name) for name in ("live", "batch"))
    for folder in (live_out, batch_out):
        subprocess.run(["rm", "-rf", folder], check=True)
    config = write_config(os.path.join(args.work, "live.yaml"), growing, live_out, args.classes)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; "
          f"{total} particles of 64 px (seed {args.seed}), {args.classes} classes, "
          f"--cores {args.cores}", flush=True)
    write_rows(table, args.base, growing)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "class2d.cli", "live", "--every", str(args.every), "--idle",
         str(args.idle), "--cores", args.cores, "--configfile", config],
        stdout=subprocess.PIPE, stderr=open(os.path.join(args.work, "live.log"), "w"),
        text=True, cwd=args.work)
    sizes, added = [args.base], [args.base]
    for n in args.rounds:
        sizes.append(sizes[-1] + n)
        added.append(n)
    try:
        for i, line in enumerate(_round_lines(watcher, len(sizes))):
            number, particles, seconds, assigned = line
            assert particles == sizes[i], (line, sizes[i])
            case = "assigned" if assigned else ("batch" if i == 0 else "full")
            print(f"round {number}: +{added[i]} particles, {particles} in all, {case}, "
                  f"{seconds:.1f} s, ARI {good_ari(live_out, truth):.3f}", flush=True)
            if i + 1 < len(sizes):
                write_rows(table, sizes[i + 1], growing)
        watcher.wait(timeout=args.idle + 600)
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGINT)
            watcher.wait()
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile",
                    write_config(os.path.join(args.work, "batch.yaml"), growing, batch_out,
                                 args.classes), "--snakefile", os.path.join(
                        os.path.dirname(os.path.abspath(__file__)), "..", "Snakefile")],
                   check=True, capture_output=True, cwd=args.work)
    print(f"batch run on all {sizes[-1]}: {time.perf_counter() - tic:.1f} s, ARI "
          f"{good_ari(batch_out, truth):.3f}; live after the last round: ARI "
          f"{good_ari(live_out, truth):.3f}", flush=True)


def _round_lines(watcher: subprocess.Popen, count: int):
    """The watcher's first ``count`` round lines: (round, particles, seconds, assigned)."""
    seen = 0
    for text in watcher.stdout:
        print(f"  watcher: {text.rstrip()}", flush=True)
        found = ROUND.search(text)
        if "failed" in text:
            raise RuntimeError(text)
        if found:
            yield int(found[1]), int(found[2]), float(found[3]), bool(found[4])
            seen += 1
            if seen == count:
                return


if __name__ == "__main__":
    main()
