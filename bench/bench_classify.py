"""End-to-end CPU benchmark: 3,000 particles of 64 px (16 objects + junk) into 20 classes.

    python bench/bench_classify.py [--particles 3000] [--exhaustive] [--relion]

Prints the work done (particles, classes, poses searched, FLOPs), the seconds of
prepare and classify, the achieved E-step GFLOP/s and its ratio to the float32 matmul
peak measured on this machine in the same run (the better of one measurement before and
one after the classification, so that a slow moment of a shared machine does not flatter
the ratio); with --relion (and RELION installed) also runs relion_refine's 2D
classification on the same data and prints the time ratio and both adjusted Rand indices
against the ground truth.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np

from class2d import io
from class2d.classify import classify_all
from class2d.em.state import ClassState
from class2d.metrics import adjusted_rand
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset

CLASSIFY = {"n_classes": 20, "max_res_A": 6.0, "particle_diameter_A": 120.0,
            "mask_diameter_A": 150.0}


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
           "--tau2_fudge", "2", "--particle_diameter", str(CLASSIFY["mask_diameter_A"]),
           "--ctf", "--flatten_solvent", "--zero_mask", "--oversampling", "1",
           "--psi_step", "12", "--offset_range", "5", "--offset_step", "2", "--norm", "--scale",
           "--j", str(cores), "--pool", "30", "--dont_combine_weights_via_disc"]
    seconds = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True,
                                             cwd=os.path.dirname(os.path.abspath(star))))
    data = io.read_particles(f"{out}_it025_data.star").particles
    return seconds, data["rlnClassNumber"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--exhaustive", action="store_true",
                        help="score every class at every pose (class_prune_margin 0)")
    parser.add_argument("--relion", action="store_true", help="also time relion_refine")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
          f"numpy {np.__version__}")
    peak_before = matmul_peak()
    with tempfile.TemporaryDirectory() as work:
        data = simulate(args.particles, box=64, apix=3.0, snr=0.05, n_objects=16,
                        junk_fraction=0.1, duplicate_fraction=0.0, seed=7)
        star = write_dataset(data, os.path.join(work, "data"))
        tic = time.perf_counter()
        prepare_stack(star, os.path.join(work, "prepare"), max_res_A=CLASSIFY["max_res_A"])
        t_prepare = time.perf_counter() - tic
        tic = time.perf_counter()
        config = {**CLASSIFY, "class_prune_margin": 0.0} if args.exhaustive else CLASSIFY
        with TimedSteps() as timed:
            classify_all(os.path.join(work, "prepare"), os.path.join(work, "classify"), config,
                         backend="cpu")
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
        if args.relion and shutil.which("relion_refine"):
            seconds, relion_labels = run_relion(star, work, CLASSIFY["n_classes"], cores)
            relion_ari = adjusted_rand(data.truth["true_class"].to_numpy()[good],
                                       relion_labels[good])
            print(f"RELION relion_refine: {seconds:.1f} s, ARI {relion_ari:.3f}; class2d is "
                  f"{seconds / (t_prepare + t_classify):.1f}x faster")


if __name__ == "__main__":
    main()
