"""Accuracy benchmark across sizes: does a set of 10⁵ particles sort as well as 3·10³?

    python bench/bench_accuracy.py --kind objects --particles 3000 30000 100000 \
        --classes 20 --data-seeds 1 2 3 [--run-seeds 1] [--box 64] [--work /scratch/acc]
    python bench/bench_accuracy.py --kind views --particles 3000 --classes 50

Each labelled set comes from the simulator (``class2d.simulate.write_labelled``, in
chunks): ``objects`` is 16 distinct objects, ``views`` the continuous-view phantom at
uniformly random views; both at SNR 0.1 (``--snr``), 3 Å/px, CTF per micrograph over
0.5–3.5 µm with up to 1,000 Å astigmatism, 1/16 each of noise, ice/carbon-edge and
aggregate picks and 1/16 duplicate picks (a set is reused when ``--work`` already holds
it).  The set is prepared and classified in-process with the default settings (``--set
key=value`` changes a classify setting), then the automatic class selection runs on the
result (``--select key=value`` changes one of its settings).  Per run it prints the work
(particles, classes, E-step GFLOP), the seconds of prepare and classify, and against the
truth:

- ARI and purity of the good particles' classes (duplicates included, junk left out);
- psi_err: median over classes (≥ 20 good particles) of the circular s.d. of ψ_ours − ψ_true
  within the class's majority object; shift_err: median over those classes of the mean
  error of the origins rotated into the class frame, Å (``metrics.origin_spread``);
- view_sd: median over classes of the RMS angle between a member's viewing direction and
  the class's mean direction, degrees (for ``views`` the spread of views in a class; for
  ``objects``, where each object is one view, what a class mixes);
- largest: the largest class's share of all particles, and largest_good that of the
  largest class holding mostly good particles, against the largest true class's;
- junk_in_junk: share of the junk picks in classes that are mostly junk;
- good_kept, junk_removed: after select's automatic rule (and its per-particle z-score);

then the median and range over the runs (data seeds × run seeds) per size.  Results go to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np
import yaml

from class2d import io, layout
from class2d.classify import classify_all
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState
from class2d.metrics import adjusted_rand, circular_sd_deg, origin_spread, purity
from class2d.prepare import prepare_stack
from class2d.select import select_classes
from class2d.simulate import write_labelled
from class2d.simulate.layout import view_directions
from class2d.simulate.output import read_truth

#: classify settings every run shares (the particle is 60 % of the box: 115 Å at 64 px)
CLASSIFY = {"max_res_A": 6.0}
METRICS = ("ari", "purity", "psi_err", "shift_err", "view_sd", "largest", "largest_good",
           "largest_true", "junk_in_junk", "good_kept", "junk_removed", "gflops", "seconds")


def dataset(work: str, kind: str, n: int, box: int, seed: int, snr: float = 0.1) -> str:
    """The labelled set's STAR (``class2d.simulate.write_labelled``), made unless ``work``
    holds it."""
    folder = os.path.join(work, f"{kind}_{n}_{box}px_snr{snr:g}_seed{seed}")
    star = os.path.join(folder, "particles.star")
    if not os.path.exists(star):
        write_labelled(folder, n, box, seed, kind, snr)
    return star


def view_sd_deg(directions: np.ndarray) -> float:
    """RMS angle (degrees) between unit directions (m, 3) and their normalised mean."""
    mean = directions.mean(axis=0)
    mean /= max(np.linalg.norm(mean), 1e-12)
    angles = np.degrees(np.arccos(np.clip(directions @ mean, -1.0, 1.0)))
    return float(np.sqrt(np.mean(angles ** 2)))


def score(truth, table, kept: np.ndarray) -> dict:
    """The accuracy figures of one classification (see the module docstring)."""
    classes = table["rlnClassNumber"].to_numpy()
    junk = (truth["junk"] != "").to_numpy()
    good = ~junk
    true_class = truth["true_class"].to_numpy()
    counts = np.zeros((classes.max() + 1, true_class.max() + 1))
    np.add.at(counts, (classes[good], true_class[good]), 1)      # class × true class
    psi = table["rlnAnglePsi"].to_numpy()
    origins = table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    true_origins = truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    directions = view_directions(truth["rlnAngleRot"].to_numpy(), truth["rlnAngleTilt"].to_numpy())
    psi_err, shift_err, view_sd = [], [], []
    for k in np.flatnonzero(counts.sum(axis=1) >= 20):
        members = good & (classes == k)
        view_sd.append(view_sd_deg(directions[members]))
        members &= true_class == counts[k].argmax()
        psi_err.append(circular_sd_deg(psi[members] - truth["rlnAnglePsi"].to_numpy()[members]))
        shift_err.append(origin_spread(psi[members], origins[members], true_origins[members]))
    junk_classes = [k for k in np.unique(classes) if junk[classes == k].mean() > 0.5]
    sizes = np.bincount(classes)
    mostly_good = np.bincount(classes, good) > sizes / 2
    return {
        "ari": adjusted_rand(true_class[good], classes[good]),
        "purity": purity(true_class[good], classes[good]),
        "psi_err": float(np.median(psi_err)), "shift_err": float(np.median(shift_err)),
        "view_sd": float(np.median(view_sd)),
        "largest": float(sizes.max() / classes.size),
        "largest_good": float(sizes[mostly_good].max(initial=0) / classes.size),
        "largest_true": float(np.bincount(true_class[good]).max() / classes.size),
        "junk_in_junk": float(np.isin(classes[junk], junk_classes).mean()) if junk.any() else 1.0,
        "good_kept": float(kept[good].mean()),
        "junk_removed": float(1.0 - kept[junk].mean()) if junk.any() else 1.0,
    }


def run(star: str, out: str, n_classes: int, seed: int, settings: dict,
        select_settings: dict | None = None) -> dict:
    """Prepare, classify and select ``star`` into ``out`` (made anew); the figures.
    ``select_settings``: keyword arguments of ``select_classes`` to change."""
    shutil.rmtree(out, ignore_errors=True)
    config = {**CLASSIFY, **settings, "n_classes": n_classes}
    params = ClassifyParams.from_config(config, seed)
    tic = time.perf_counter()
    prepare_stack(star, os.path.join(out, "prepare"), max_res_A=params.align_res_A)
    classify_all(os.path.join(out, "prepare"), os.path.join(out, "classify"), config, seed, "cpu")
    seconds = time.perf_counter() - tic
    select_classes(os.path.join(out, "classify", "classes.star"),
                   os.path.join(out, "classify", "particles.star"), os.path.join(out, "select"),
                   **(select_settings or {}))
    table = io.read_particles(os.path.join(out, "classify", "particles.star")).particles
    selected = io.read_particles(os.path.join(out, "select", "particles.star")).particles
    kept = table["rlnImageName"].isin(selected["rlnImageName"]).to_numpy()
    truth = read_truth(os.path.join(os.path.dirname(star), "truth.star"))
    last = ClassState.load(layout.state_path(os.path.join(out, "classify"),
                                             params.online_iterations
                                             + params.final_full_iterations))
    trace = " ".join(f"{row['iteration']}:{row['changed']:.2f}/"
                     f"{max(row['class_sizes']) / max(sum(row['class_sizes']), 1e-9):.2f}"
                     for row in last.history)
    gflops = sum(row["gflops"] for row in last.history)
    return {**score(truth, table, kept), "gflops": gflops, "seconds": seconds, "trace": trace}


def summary_line(label: str, rows: list[dict]) -> str:
    """Median [min–max] of each figure over ``rows``."""
    cells = []
    for key in METRICS:
        values = [r[key] for r in rows]
        med = statistics.median(values)
        cells.append(f"{key} {med:.3g} [{min(values):.3g}–{max(values):.3g}]"
                     if len(values) > 1 else f"{key} {med:.3g}")
    return f"{label}: " + ", ".join(cells)


def parse_settings(pairs: list[str]) -> dict:
    """``key=value`` pairs, values read as YAML (numbers, booleans)."""
    return {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("objects", "views"), default="objects")
    parser.add_argument("--particles", type=int, nargs="+", default=[3000, 30000, 100000])
    parser.add_argument("--classes", type=int, nargs="+", default=[20])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--run-seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--work", default="/tmp/bench_accuracy")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="classify settings to change")
    parser.add_argument("--select", nargs="*", default=[], metavar="KEY=VALUE",
                        help="select settings to change (select_classes' keywords, e.g. "
                             "max_particle_zscore=null)")
    parser.add_argument("--keep", action="store_true", help="keep each run's output folder")
    parser.add_argument("--trace", action="store_true",
                        help="print each iteration's changed share and largest class")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = parse_settings(args.set)
    select_settings = parse_settings(args.select)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; "
          f"{args.kind}, box {args.box}, SNR {args.snr:g}, run seeds {args.run_seeds}, "
          f"settings {settings or 'defaults'}, select {select_settings or 'defaults'}", flush=True)
    for k in args.classes:
        for n in args.particles:
            rows = []
            for seed in args.data_seeds:
                star = dataset(args.work, args.kind, n, args.box, seed, args.snr)
                for run_seed in args.run_seeds:
                    out = os.path.join(args.work, f"run_{args.kind}_{n}_snr{args.snr:g}_K{k}_"
                                                  f"d{seed}_r{run_seed}")
                    row = run(star, out, k, run_seed, settings, select_settings)
                    rows.append(row)
                    print(f"{args.kind} N {n} K {k} data seed {seed} run seed {run_seed}: "
                          + ", ".join(f"{key} {row[key]:.3g}" for key in METRICS), flush=True)
                    if args.trace:
                        print(f"  iteration:changed/largest class {row['trace']}", flush=True)
                    if not args.keep:
                        shutil.rmtree(out, ignore_errors=True)
            print(summary_line(f"{args.kind} N {n} K {k}, median [range] of "
                               f"{len(rows)} runs", rows), flush=True)


if __name__ == "__main__":
    main()
