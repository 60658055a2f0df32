"""GPU benchmark: the classification workflow on the CUDA backend at a realistic size, checked
against the CPU backend, measured against this card's float32 peak (measured in the same run).

    python bench/bench_gpu.py --particles 20000 --box 64 --classes 50
        [--online-iterations 20] [--check-particles 1500] [--skip-kernel] [--skip-workflow]
        [--skip-check] [--tile-n 64 --tile-q 64 --tile-f 16 --micro-n 4 --micro-q 4]

1. Card: name, SMs; float32 FMA peak (independent FMA chains in registers), copy bandwidth.
2. Score kernel at the run's shape (K classes; rotations, shifts and frequencies of the final
   search): ``score_classes`` over every class (host particles in, host results out, the
   rotations kept on the card by ``rotate_references`` as the E-step has them), the same
   over two candidate classes per particle (what class pruning leaves late in a run), and
   the ``partials`` kernel alone; FLOPs (N·K·R·T·4F + N·K·R·2F, DESIGN §3), seconds,
   TFLOP/s and the fraction of the FMA peak.
3. Workflow: a synthetic set of N particles (a simulated set of at most --base particles,
   repeated with fresh noise up to N: simulating 10⁵ images would take minutes of CPU),
   written, prepared and classified with ``classify_all(backend="cuda")``: seconds per
   stage, per iteration (E-step FLOP rate and fraction of the peak), host↔device bytes
   (``cuda_device.TRANSFERS``) and the largest of them by buffer
   (``cuda_device.TRANSFERS_BY_NAME``), the class sums apart, ARI against the truth.
   The class sums stay on the card through each E-step pass (``cuda_insert.InsertionSums``)
   and come back once per pass ("sums"); before, every chunk of a pass sent them up as
   zeros and brought them back ("bp_num", "bp_den": now only where they do not fit the card).
4. Check: the same workflow on the first --check-particles particles with the CPU and the
   CUDA backend: adjusted Rand index between the two (exit status 1 below --min-ari).

Exits with a message, not a traceback, where there is no GPU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np
from bench_classify import TimedSteps  # a sibling script: bench/ is on sys.path when run

#: FMAs per thread and loop trip of the peak kernel: 8 independent chains × 8 unrolled steps
_CHAINS = 8
#: classification settings of bench_classify (6 Å, 120 Å particles), scaled with the box
#: particle 117 Å: a 150 Å mask (9/7, ``discs``)
CLASSIFY = {"max_res_A": 6.0, "particle_diameter_A": 117.0}
#: the box spans this many Å whatever its size in px (so a larger box is a finer sampling)
BOX_A = 192.0


def _need_gpu() -> None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("bench_gpu: NUMBA_ENABLE_CUDASIM=1 selects the simulator; unset it to benchmark")
    from class2d.kernels import cuda_available

    usable, why = cuda_available()
    if not usable:
        sys.exit(f"bench_gpu: no usable CUDA GPU here ({why}); run it on a machine with an "
                 f"NVIDIA GPU and driver")


def _kernels():
    from numba import cuda, float32

    @cuda.jit
    def fma_chains(out, n_iter):
        i = cuda.grid(1)
        b, c = float32(0.9999), float32(1e-4)
        x0, x1, x2, x3 = float32(i), float32(i + 1), float32(i + 2), float32(i + 3)
        x4, x5, x6, x7 = float32(i + 4), float32(i + 5), float32(i + 6), float32(i + 7)
        for _ in range(n_iter):
            for _ in range(8):
                x0 = x0 * b + c
                x1 = x1 * b + c
                x2 = x2 * b + c
                x3 = x3 * b + c
                x4 = x4 * b + c
                x5 = x5 * b + c
                x6 = x6 * b + c
                x7 = x7 * b + c
        out[i] = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7

    @cuda.jit
    def copy(src, dst):
        for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
            dst[i] = src[i]

    return fma_chains, copy


def _event_seconds(launch, repeats: int = 3) -> float:
    """Best time of ``launch()`` measured with CUDA events."""
    from numba import cuda

    best = math.inf
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        launch()
        stop.record()
        stop.synchronize()
        best = min(best, cuda.event_elapsed_time(start, stop) / 1e3)
    return best


def fma_peak() -> float:
    """float32 FLOP/s of independent FMA chains on every SM (FMA = 2 FLOPs)."""
    from numba import cuda

    fma_chains, _ = _kernels()
    blocks = cuda.get_current_device().MULTIPROCESSOR_COUNT * 16
    threads = 256
    out = cuda.device_array(blocks * threads, np.float32)
    n_iter = 64
    fma_chains[blocks, threads](out, n_iter)                        # compile
    while True:
        seconds = _event_seconds(lambda: fma_chains[blocks, threads](out, n_iter))
        if seconds > 0.2:
            return blocks * threads * n_iter * 8 * _CHAINS * 2 / seconds
        n_iter *= 4


def bandwidth(n_bytes: int = 1 << 30) -> float:
    """Bytes/s moved by a grid-stride float32 copy (read + write)."""
    from numba import cuda

    _, copy = _kernels()
    src = cuda.device_array(n_bytes // 4, np.float32)
    dst = cuda.device_array_like(src)
    blocks = cuda.get_current_device().MULTIPROCESSOR_COUNT * 32
    copy[blocks, 256](src, dst)
    return 2 * n_bytes / _event_seconds(lambda: copy[blocks, 256](src, dst), repeats=10)


def _wall(func) -> float:
    from numba import cuda

    cuda.synchronize()
    tic = time.perf_counter()
    func()
    cuda.synchronize()
    return time.perf_counter() - tic


def search_shape(box: int, apix: float) -> tuple[object, int, int]:
    """(frequency set, rotations R, shifts per axis) of the final search of this workflow at
    CLASSIFY's resolution (seen particles: the local shift grid), from its own parameters."""
    from class2d.em.grids import FrequencySet
    from class2d.em.params import ClassifyParams

    params = ClassifyParams.from_config(dict(CLASSIFY, n_classes=2))
    res = params.align_res_A
    r_align = min(box / 2, box * apix / res)
    side, _ = params.shift_grid(res, box, apix)
    n_rot = max(1, int(round(360.0 / params.psi_step(res, box, apix))))
    return (FrequencySet.within(box, r_align), n_rot,
            min(side, 2 * params.local_shift_steps + 1))


def kernel_stage(n: int, k_count: int, box: int, apix: float, n_top: int, repeats: int,
                 peak: float) -> None:
    """Time ``score_classes`` and ``partials`` at the workflow's final search shape."""
    from class2d.kernels import cuda as backend, cuda_device as dev, cuda_resident, cuda_score
    from numba import cuda

    freqs, n_rot, side = search_shape(box, apix)
    n_freq = freqs.size
    rng = np.random.default_rng(0)
    grid = 2 * box
    grids = (rng.standard_normal((k_count, grid, grid))
             + 1j * rng.standard_normal((k_count, grid, grid))).astype(np.complex64)
    psi = np.deg2rad(np.arange(n_rot) * 360.0 / n_rot).astype(np.float32)
    arot = backend.rotate_references(grids, freqs.fx, freqs.fy, psi, 2)    # kept on the card
    iy, ix = np.divmod(np.arange(side * side), side)
    phase = freqs.phases(np.stack([ix - side // 2, iy - side // 2], axis=1).astype(np.float64))
    r, t = rng.integers(0, n_rot, n), rng.integers(0, side * side, n)
    noise = rng.standard_normal((n, n_freq)) + 1j * rng.standard_normal((n, n_freq))
    x = 0.3 * arot[0, r] * phase[t] + noise          # sharp for class 0, flat for the others
    ctf = rng.uniform(-1, 1, (n, n_freq)).astype(np.float32)
    p = ctf * x
    p_stack = np.concatenate([p.real, p.imag], axis=1).astype(np.float32)
    ctf2, alpha = (ctf * ctf).astype(np.float32), np.ones(n, np.float32)
    sig_log = np.float32(np.log(1000.0))
    n_pose = n_rot * side * side
    candidates = np.zeros((n, k_count), bool)
    candidates[np.arange(n), 0] = True
    candidates[np.arange(n), rng.integers(1, max(2, k_count), n) % k_count] = True
    pairs_all, pairs_two = n * k_count, int(candidates.sum())
    flop = lambda pairs: pairs * (n_pose * 4 * n_freq + n_rot * 2 * n_freq)
    recounted = []
    recount_blocks = cuda_score.recount_blocks
    cuda_score.recount_blocks = lambda flags, *a: (recounted.append(flags.mean())
                                                   or recount_blocks(flags, *a))
    score = lambda c: backend.score_classes(p_stack, ctf2, arot, phase, alpha,
                                            1.0, side, sig_log, n_top, c)
    score(None)                                     # compile and size the buffers once
    recounted.clear()
    score(None)
    fraction = float(np.mean(recounted))
    score(candidates)

    k = cuda_score.kernels(*cuda_score.tunables())
    d_arot, d_power = cuda_resident.device_rotations(arot)      # the kept copy: no upload
    pair_class, pair_row = np.divmod(np.arange(pairs_all), n)
    d_row, d_class = (cuda.to_device(a.astype(np.int32)) for a in (pair_row, pair_class))
    blocks = [cuda.to_device(a) for a in cuda_score.pair_blocks(pair_class, cuda_score.TILE_N)]
    d_p, d_c2, d_alpha = (cuda.to_device(a) for a in (p_stack, ctf2, alpha))
    d_phase = cuda.to_device(phase)
    n_tiles = -(-n_pose // cuda_score.TILE_Q)
    norm = cuda.device_array((pairs_all, n_rot), np.float32)
    cuda_score._norm_kernel[dev.blocks(norm.size), dev.THREADS](d_c2, d_power, d_row, d_class,
                                                                norm)
    parts = (cuda.device_array((pairs_all, n_tiles, n_top), np.float32),
             cuda.device_array((pairs_all, n_tiles, n_top), np.int32),
             cuda.device_array((pairs_all, n_tiles), np.float32),
             cuda.device_array((pairs_all, n_tiles), np.int32))

    def partials_only():
        k.partials[(blocks[0].size, n_tiles), k.threads](
            d_p, d_arot, d_phase, norm, d_alpha, np.float32(1.0), side * side, sig_log, d_row,
            *blocks, *parts)

    partials_only()
    print(f"\nscore kernel at the final search: {n} particles, {k_count} classes, {n_rot} "
          f"rotations × {side}² shifts = {n_pose} poses, {n_freq} frequencies; tunables "
          f"{dict(zip(('TILE_N', 'TILE_Q', 'TILE_F', 'MICRO_N', 'MICRO_Q', 'MERGE'), cuda_score.tunables()))}")
    print(f"{'scope':44s} {'pairs':>9s} {'GFLOP':>9s} {'seconds':>8s} {'TFLOP/s':>8s} "
          f"{'of peak':>7s}")
    for scope, func, flops in (
            ("score_classes, every class", lambda: score(None), flop(pairs_all)),
            ("score_classes, 2 candidate classes each", lambda: score(candidates),
             flop(pairs_two)),
            ("partials kernel alone, every class", partials_only,
             pairs_all * n_pose * 4 * n_freq)):
        seconds = min(_wall(func) for _ in range(repeats))
        pairs = pairs_two if "candidate" in scope else pairs_all
        print(f"{scope:44s} {pairs:9d} {flops / 1e9:9.1f} {seconds:8.4f} "
              f"{flops / seconds / 1e12:8.2f} {flops / seconds / peak:7.1%}")
    print(f"(pair, pose tile) scored twice to count significant poses exactly: {fraction:.1%} "
          f"({n_tiles} tiles per pair)")
    cuda_score.recount_blocks = recount_blocks


def synthetic_set(n: int, n_base: int, box: int, seed: int = 7):
    """A simulated Dataset of ``n`` particles: ``min(n, n_base)`` simulated ones, repeated
    with fresh noise (s.d. 1, as the simulator's) up to ``n``."""
    from class2d.simulate import simulate
    from class2d.simulate.dataset import STACK_NAME

    apix = BOX_A / box
    base = simulate(min(n, n_base), box=box, apix=apix, snr=0.05, n_objects=16,
                    junk_fraction=0.1, duplicate_fraction=0.0, seed=seed)
    if n <= base.images.shape[0]:
        return base
    index = np.arange(n) % base.images.shape[0]
    rng = np.random.default_rng(seed)
    images = base.clean[index] + rng.standard_normal((n,) + base.images.shape[1:],
                                                     dtype=np.float32)
    particles = base.table.particles.iloc[index].reset_index(drop=True)
    particles["rlnImageName"] = [f"{i + 1:06d}@{STACK_NAME}" for i in range(n)]
    truth = base.truth.iloc[index].reset_index(drop=True)
    truth["duplicate_of"] = -1
    return base._replace(table=dataclasses.replace(base.table, particles=particles),
                         images=images, clean=base.clean[index], truth=truth)


def classify(star: str, work: str, config: dict, backend: str) -> dict:
    """prepare + classify_all; seconds per stage and the final state's history."""
    from class2d.classify import classify_all
    from class2d.em.state import ClassState
    from class2d.prepare import prepare_stack

    seconds = {}
    tic = time.perf_counter()
    prepare_stack(star, os.path.join(work, "prepare"), max_res_A=CLASSIFY["max_res_A"],
                  diameter_A=CLASSIFY["particle_diameter_A"])
    seconds["prepare"] = time.perf_counter() - tic
    tic = time.perf_counter()
    with TimedSteps() as timed:
        classify_all(os.path.join(work, "prepare"), os.path.join(work, "classify"), config,
                     backend=backend)
    seconds["classify"] = time.perf_counter() - tic
    last = max(d for d in os.listdir(os.path.join(work, "classify")) if d.startswith("iter_"))
    history = ClassState.load(os.path.join(work, "classify", last, "state.npz")).history
    # the state holds no measured times (same seed, same bytes): take them from the log
    for row in history:
        steps = [t for t in timed.rows if t["iteration"] == row["iteration"]]
        row.update({key: sum(t[key] for t in steps) for key in ("estep_seconds", "seconds")})
    return {"seconds": seconds, "history": history,
            "labels": _labels(os.path.join(work, "classify", "particles.star"))}


def _labels(star: str) -> np.ndarray:
    from class2d import io

    return io.read_particles(star).particles["rlnClassNumber"].to_numpy()


def workflow_stage(args, peak: float) -> None:
    from class2d.kernels import cuda_device as dev
    from class2d.metrics import adjusted_rand
    from class2d.simulate import write_dataset

    config = dict(CLASSIFY, n_classes=args.classes, online_iterations=args.online_iterations)
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        tic = time.perf_counter()
        data = synthetic_set(args.particles, args.base, args.box)
        t_sim = time.perf_counter() - tic
        tic = time.perf_counter()
        star = write_dataset(data, os.path.join(work, "data"))
        t_write = time.perf_counter() - tic
        before, named = dict(dev.TRANSFERS), collections.Counter(dev.TRANSFERS_BY_NAME)
        run = classify(star, work, config, "cuda")
        moved = {key: dev.TRANSFERS[key] - before[key] for key in before}
        named = dev.TRANSFERS_BY_NAME - named
        good = (data.truth["junk"] == "").to_numpy()
        ari = adjusted_rand(data.truth["true_class"].to_numpy()[good], run["labels"][good])
    history = run["history"]
    print(f"\nworkflow, backend cuda: {args.particles} particles of {args.box} px "
          f"({BOX_A / args.box:.2f} Å/px), {args.classes} classes, {len(history)} iterations")
    print(f"stages: synthetic set {t_sim:.1f} s, write {t_write:.1f} s, prepare "
          f"{run['seconds']['prepare']:.1f} s, classify {run['seconds']['classify']:.1f} s")
    print(f"{'iter':>4s} {'kind':>6s} {'particles':>9s} {'poses':>6s} {'freqs':>5s} "
          f"{'GFLOP':>9s} {'E-step s':>8s} {'iter s':>7s} {'TFLOP/s':>8s} {'of peak':>7s}")
    for row in history:
        rate = row["gflops"] * 1e9 / max(row["estep_seconds"], 1e-9)
        print(f"{row['iteration']:4d} {row['kind']:>6s} {row['particles']:9d} "
              f"{row['poses']:6d} {row['frequencies']:5d} {row['gflops']:9.1f} "
              f"{row['estep_seconds']:8.2f} {row['seconds']:7.2f} {rate / 1e12:8.2f} "
              f"{rate / peak:7.1%}")
    flops = sum(row["gflops"] for row in history) * 1e9
    e_seconds = sum(row["estep_seconds"] for row in history)
    it_seconds = sum(row["seconds"] for row in history)
    print(f"E-step {flops / 1e12:.2f} TFLOP in {e_seconds:.1f} s = {flops / e_seconds / 1e12:.2f}"
          f" TFLOP/s, {flops / e_seconds / peak:.1%} of the FMA peak; iterations "
          f"{it_seconds:.1f} s in all (E-step {e_seconds / max(it_seconds, 1e-9):.0%})")
    for row in history:
        if row["kind"] == "full":
            print(f"full pass {row['iteration']}: {row['particles']} particles in "
                  f"{row['seconds']:.1f} s ({1e3 * row['seconds'] / row['particles']:.2f} ms "
                  f"per particle; E-step {row['estep_seconds']:.1f} s)")
    print(f"host→device {moved['to_device'] / 1e9:.2f} GB, device→host "
          f"{moved['to_host'] / 1e9:.2f} GB ({sum(moved.values()) / args.particles / 1e3:.0f} kB "
          f"per particle)")
    sums = {way: sum(named[way, name] for name in ("sums", "bp_num", "bp_den"))
            for way in ("to_device", "to_host")}
    print(f"of which class sums: host→device {sums['to_device'] / 1e9:.2f} GB, device→host "
          f"{sums['to_host'] / 1e9:.2f} GB; largest by buffer: " + ", ".join(
              f"{name} {'→device' if way == 'to_device' else '→host'} {n / 1e9:.2f} GB"
              for (way, name), n in named.most_common(6)))
    print(f"adjusted Rand index (good particles vs truth): {ari:.3f}")


def check_stage(args) -> bool:
    """The workflow on a subset with both backends; True when they agree (ARI ≥ min_ari)."""
    from class2d.metrics import adjusted_rand
    from class2d.simulate import write_dataset

    config = dict(CLASSIFY, n_classes=args.classes, online_iterations=args.online_iterations)
    labels, seconds = {}, {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        data = synthetic_set(args.check_particles, args.base, args.box)
        star = write_dataset(data, os.path.join(work, "data"))
        for backend in ("cpu", "cuda"):
            run = classify(star, os.path.join(work, backend), config, backend)
            labels[backend], seconds[backend] = run["labels"], run["seconds"]["classify"]
    good = (data.truth["junk"] == "").to_numpy()
    truth = data.truth["true_class"].to_numpy()[good]
    between = adjusted_rand(labels["cpu"], labels["cuda"])
    print(f"\ncheck on {args.check_particles} particles, {args.classes} classes: classify "
          f"cpu {seconds['cpu']:.1f} s, cuda {seconds['cuda']:.1f} s; ARI cuda vs cpu "
          f"{between:.3f} (required ≥ {args.min_ari}); vs truth: cpu "
          f"{adjusted_rand(truth, labels['cpu'][good]):.3f}, cuda "
          f"{adjusted_rand(truth, labels['cuda'][good]):.3f}")
    return between >= args.min_ari


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=20000, help="N of the workflow run")
    parser.add_argument("--box", type=int, default=64, help=f"box in px ({BOX_A:.0f} Å wide)")
    parser.add_argument("--classes", type=int, default=50, help="K")
    parser.add_argument("--online-iterations", type=int, default=20)
    parser.add_argument("--base", type=int, default=4000,
                        help="particles simulated; the rest repeat them with fresh noise")
    parser.add_argument("--check-particles", type=int, default=1500,
                        help="subset classified with both backends")
    parser.add_argument("--min-ari", type=float, default=0.9)
    parser.add_argument("--kernel-particles", type=int, default=4096)
    parser.add_argument("--n-top", type=int, default=8, help="poses kept per particle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the temporary files go")
    for stage in ("kernel", "workflow", "check"):
        parser.add_argument(f"--skip-{stage}", action="store_true")
    for name in ("tile-n", "tile-q", "tile-f", "micro-n", "micro-q"):
        parser.add_argument(f"--{name}", type=int, help="override the cuda_score tunable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("numba").setLevel(logging.WARNING)   # its driver logs every free at INFO
    _need_gpu()
    from class2d.kernels import cuda_score
    from numba import cuda

    for name in ("tile_n", "tile_q", "tile_f", "micro_n", "micro_q"):
        if getattr(args, name):
            setattr(cuda_score, name.upper(), getattr(args, name))
    cuda_score.check_tunables(*cuda_score.tunables())
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    print(f"device: {name}, {device.MULTIPROCESSOR_COUNT} SMs, compute capability "
          f"{device.compute_capability}; {os.cpu_count()} CPU cores")
    peak = fma_peak()
    print(f"measured float32 FMA peak: {peak / 1e12:.1f} TFLOP/s;  copy bandwidth: "
          f"{bandwidth() / 1e9:.0f} GB/s")
    if not args.skip_kernel:
        kernel_stage(args.kernel_particles, args.classes, args.box, BOX_A / args.box,
                     args.n_top, args.repeats, peak)
    if not args.skip_workflow:
        workflow_stage(args, peak)
    if not args.skip_check and not check_stage(args):
        sys.exit("bench_gpu: the CUDA and CPU backends classify the subset differently")


if __name__ == "__main__":
    main()
