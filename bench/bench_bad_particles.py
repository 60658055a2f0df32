"""Ten bad particles among 10⁵ (issue 27): the run ends, ``prepare/rejected.star`` lists
exactly those ten with their reasons, and every other particle gets the class and pose it
gets in the same set without them.

    python bench/bench_bad_particles.py [--particles 100000] [--box 64] [--work /tmp/bad]

Takes (or makes, in ``--work``) the 16-object labelled set of ``bench_accuracy.py`` and
writes two STARs from it: ``without.star`` leaves ten rows out, ``spoilt.star`` breaks the
same ten rows in place: three blank images and two with NaN pixels (in a small stack
``bad.mrcs``), two defocus values that are text, three image indices past the end of their
stack.  Both are prepared in two shards and classified in-process with the defaults (20
classes, seed 1); the script prints the time of each run, the rejected rows and reasons
against the ten, and whether the good particles' classes, ψ and origins are the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np
import starfile

from bench_accuracy import CLASSIFY, dataset
from class2d import io
from class2d.classify import classify_all
from class2d.prepare import prepare_stack

#: what is broken in the ten rows, in order
BROKEN = ("blank",) * 3 + ("NaN",) * 2 + ("defocus text",) * 2 + ("index past stack",) * 3


def spoil(star: str, work: str, seed: int = 1) -> tuple[str, str, np.ndarray]:
    """(spoilt STAR, STAR without the ten rows, the ten rows' indices) next to ``star``."""
    tables = starfile.read(star, always_dict=True)
    particles = tables["particles"]
    # the column holds text in one file: written alike in both, as the same text
    particles["rlnDefocusU"] = [f"{value:.6f}" for value in particles["rlnDefocusU"]]
    rows = np.sort(np.random.default_rng(seed).choice(len(particles), len(BROKEN),
                                                      replace=False))
    folder = os.path.dirname(star)
    box = int(tables["optics"]["rlnImageSize"].iloc[0])
    apix = float(tables["optics"]["rlnImagePixelSize"].iloc[0])
    images = np.zeros((5, box, box), np.float32)
    images[3:, box // 2, box // 2] = np.nan
    images[3:, :box // 4] = 1.0
    io.write_stack(os.path.join(folder, "bad.mrcs"), images, apix)
    spoilt = particles.copy()
    for k, (row, kind) in enumerate(zip(rows, BROKEN)):
        if kind in ("blank", "NaN"):
            spoilt.loc[row, "rlnImageName"] = f"{k + 1}@bad.mrcs"
        elif kind == "defocus text":
            spoilt.loc[row, "rlnDefocusU"] = "1.5e4um" if k % 2 else "unknown"
        else:
            stack = spoilt.loc[row, "rlnImageName"].split("@", 1)[1]
            spoilt.loc[row, "rlnImageName"] = f"{len(particles) + 1 + k}@{stack}"
    paths = (os.path.join(folder, "spoilt.star"), os.path.join(folder, "without.star"))
    starfile.write({**tables, "particles": spoilt}, paths[0], overwrite=True)
    starfile.write({**tables, "particles": particles.drop(index=rows).reset_index(drop=True)},
                   paths[1], overwrite=True)
    return paths[0], paths[1], rows


def image(name: str) -> str:
    """``index@file name`` of an ``rlnImageName`` (its folder left out)."""
    index, path = name.split("@", 1)
    return f"{int(index)}@{os.path.basename(path)}"


def run(star: str, out: str, seed: int) -> tuple[io.ParticleTable, float]:
    """Prepare (two shards) and classify ``star`` into ``out``: (particles, seconds)."""
    tic = time.perf_counter()
    prepare_stack(star, os.path.join(out, "prepare"), max_res_A=CLASSIFY["max_res_A"],
                  shards=2)
    classify_all(os.path.join(out, "prepare"), os.path.join(out, "classify"),
                 {**CLASSIFY, "n_classes": 20}, seed, "cpu")
    seconds = time.perf_counter() - tic
    return io.read_particles(os.path.join(out, "classify", "particles.star")), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=100000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--work", default="/tmp/bench_bad_particles")
    args = parser.parse_args(argv)
    star = dataset(args.work, "objects", args.particles, args.box, 1)
    spoilt, without, rows = spoil(star, args.work)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} CPUs; "
          f"{args.particles} particles of {args.box} px, 20 classes, ten broken rows: "
          f"{', '.join(f'{r + 1} ({kind})' for r, kind in zip(rows, BROKEN))}")
    results = {}
    for name, path in (("spoilt", spoilt), ("without", without)):
        results[name] = run(path, os.path.join(args.work, f"run_{name}"), 1)
        print(f"{name}: {results[name][0].n} particles classified in {results[name][1]:.0f} s")
    rejected = io.read_particles(os.path.join(args.work, "run_spoilt", "prepare",
                                              "rejected.star")).particles
    print("rejected:", "; ".join(f"{image(name)} ({reason})" for name, reason in zip(
        rejected["rlnImageName"], rejected["c2dRejectReason"])))
    listed = starfile.read(spoilt, always_dict=True)["particles"]["rlnImageName"].to_numpy()
    print(f"rejected.star lists exactly the ten: "
          f"{sorted(map(image, rejected['rlnImageName'])) == sorted(map(image, listed[rows]))}")
    a, b = (results[name][0].particles for name in ("spoilt", "without"))
    same = {column: bool(np.array_equal(a[column].to_numpy(), b[column].to_numpy()))
            for column in ("rlnImageName", "rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst",
                           "rlnOriginYAngst")}
    print("same for the good particles:", ", ".join(f"{k} {v}" for k, v in same.items()))


if __name__ == "__main__":
    main()
