"""GPU benchmark of the fused scoring kernel, against this card's peaks measured in the same run.

    python bench/bench_gpu.py [--particles 4096] [--freqs 800] [--rotations 60] [--side 5]
                              [--classes 8] [--tile-n 64 --tile-q 64 --micro-n 4 --micro-q 4]

Measures the float32 FMA peak (an FMA-chain kernel in registers) and the memory bandwidth
(a copy kernel), then times ``score_classes`` over every class on particles that are noisy
copies of one class at a random pose: sharp scores for that class, flat ones for the
others.  For three scopes — the backend call with host inputs (what the E-step does:
particles uploaded once, references per class), the same with everything kept on the
device, and
the tiled ``partials`` kernel alone — it prints particles, classes, poses, FLOPs
(N·K·R·T·4F + N·K·R·2F, DESIGN §3), seconds, TFLOP/s and the fraction of the FMA peak.
Exits with a message, not a traceback, where there is no GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import class2d  # noqa: F401  before NumPy: sets the thread-wait policy OpenBLAS reads on load
import numpy as np

#: FMAs per thread and loop trip of the peak kernel: 8 independent chains × 8 unrolled steps
_CHAINS = 8


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
    """Best wall time of ``launch()`` measured with CUDA events."""
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


def make_inputs(n, n_freq, n_rot, side, n_class, seed=0):
    """Particles that are noisy copies of class 0 at random poses, and K random classes."""
    rng = np.random.default_rng(seed)
    arot = (rng.standard_normal((n_class, n_rot, n_freq))
            + 1j * rng.standard_normal((n_class, n_rot, n_freq))).astype(np.complex64)
    fx, fy = rng.uniform(-20, 20, (2, n_freq))
    iy, ix = np.divmod(np.arange(side * side), side)
    angle = -2 * np.pi * (np.outer(ix - side // 2, fx) + np.outer(iy - side // 2, fy)) / 64
    phase = np.exp(1j * angle).astype(np.complex64)
    r, t = rng.integers(0, n_rot, n), rng.integers(0, side * side, n)
    noise = rng.standard_normal((n, n_freq)) + 1j * rng.standard_normal((n, n_freq))
    x = 0.3 * arot[0, r] * phase[t] + noise
    ctf = rng.uniform(-1, 1, (n, n_freq)).astype(np.float32)
    p = ctf * x
    p_stack = np.concatenate([p.real, p.imag], axis=1).astype(np.float32)
    return p_stack, (ctf * ctf).astype(np.float32), arot, phase, np.ones(n, np.float32)


def run(args) -> None:
    from numba import cuda

    from class2d.kernels import cuda_device as dev, cuda_score

    for name in ("tile_n", "tile_q", "tile_f", "micro_n", "micro_q"):
        if getattr(args, name):
            setattr(cuda_score, name.upper(), getattr(args, name))
    device = cuda.get_current_device()
    print(f"device: {device.name.decode() if isinstance(device.name, bytes) else device.name}, "
          f"{device.MULTIPROCESSOR_COUNT} SMs, compute capability {device.compute_capability}")
    peak = fma_peak()
    print(f"measured float32 FMA peak: {peak / 1e12:.1f} TFLOP/s;  "
          f"copy bandwidth: {bandwidth() / 1e9:.0f} GB/s")
    print(f"tunables: TILE_N={cuda_score.TILE_N} TILE_Q={cuda_score.TILE_Q} "
          f"TILE_F={cuda_score.TILE_F} MICRO_N={cuda_score.MICRO_N} MICRO_Q={cuda_score.MICRO_Q}")

    n, n_freq, n_rot, side, k = (args.particles, args.freqs, args.rotations, args.side,
                                 args.classes)
    p_stack, ctf2, arot, phase, alpha = make_inputs(n, n_freq, n_rot, side, k)
    n_pose = n_rot * side * side
    flops = n * k * n_pose * 4 * n_freq + n * k * n_rot * 2 * n_freq
    sig_log, n_top = np.float32(np.log(1000.0)), args.n_top
    recounted = []
    recount_blocks = cuda_score.recount_blocks
    cuda_score.recount_blocks = lambda flags, tile_n: (recounted.append(flags.mean())
                                                       or recount_blocks(flags, tile_n))

    def host_inputs():
        cuda_score.score_classes(p_stack, ctf2, arot, phase, alpha, 1.0, side, sig_log, n_top)

    d_p, d_c2, d_alpha = (dev.upload(a, np.float32) for a in (p_stack, ctf2, alpha))
    d_phase = dev.upload(phase, np.complex64)
    refs = [(cuda.to_device(arot[c]), dev.upload(
        (arot[c].real ** 2 + arot[c].imag ** 2).astype(np.float32).T, np.float32))
        for c in range(k)]
    scalars = (np.float32(1.0), side, sig_log, n_top)

    def device_inputs():
        for d_arot, d_a2t in refs:
            cuda_score._score_chunk(d_p, d_c2, d_alpha, d_arot, d_phase, d_a2t, *scalars)

    kern = cuda_score.kernels(cuda_score.TILE_N, cuda_score.TILE_Q, cuda_score.TILE_F,
                              cuda_score.MICRO_N, cuda_score.MICRO_Q, cuda_score.MERGE_THREADS)
    n_tiles = -(-n_pose // cuda_score.TILE_Q)
    norm = cuda.device_array((n, n_rot), np.float32)
    parts = (cuda.device_array((n, n_tiles, n_top), np.float32),
             cuda.device_array((n, n_tiles, n_top), np.int32),
             cuda.device_array((n, n_tiles), np.float64), cuda.device_array((n, n_tiles), np.int32))
    grid = (-(-n // cuda_score.TILE_N), n_tiles)

    def partials_only():
        for d_arot, _ in refs:
            kern.partials[grid, kern.threads](d_p, d_arot, d_phase, norm, d_alpha, scalars[0],
                                              side * side, sig_log, *parts)

    host_inputs()                                   # compile everything once
    recounted.clear()
    device_inputs()
    fraction = float(np.mean(recounted))
    print(f"\n{'scope':28s} {'particles':>9s} {'classes':>7s} {'poses':>6s} {'freqs':>5s} "
          f"{'GFLOP':>9s} {'seconds':>8s} {'TFLOP/s':>8s} {'of peak':>7s}")
    for scope, func in (("score_classes, host inputs", host_inputs),
                        ("score_classes, device inputs", device_inputs),
                        ("partials kernel alone", partials_only)):
        seconds = min(_wall(func) for _ in range(args.repeats))
        print(f"{scope:28s} {n:9d} {k:7d} {n_pose:6d} {n_freq:5d} {flops / 1e9:9.1f} "
              f"{seconds:8.4f} {flops / seconds / 1e12:8.2f} {flops / seconds / peak:7.1%}")
    print(f"\n(particle, pose tile) pairs scored twice to count significant poses exactly: "
          f"{fraction:.1%} ({n_tiles} tiles per particle and class)")


def _wall(func) -> float:
    from numba import cuda

    cuda.synchronize()
    tic = time.perf_counter()
    func()
    cuda.synchronize()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--particles", type=int, default=4096)
    parser.add_argument("--freqs", type=int, default=800, help="frequencies F in the alignment")
    parser.add_argument("--rotations", type=int, default=60)
    parser.add_argument("--side", type=int, default=5, help="shifts per axis: T = side²")
    parser.add_argument("--classes", type=int, default=8, help="classes K, scored one by one")
    parser.add_argument("--n-top", type=int, default=8, help="poses kept per particle")
    parser.add_argument("--repeats", type=int, default=3)
    for name in ("tile-n", "tile-q", "tile-f", "micro-n", "micro-q"):
        parser.add_argument(f"--{name}", type=int, help="override the cuda_score tunable")
    args = parser.parse_args()
    _need_gpu()
    run(args)


if __name__ == "__main__":
    main()
