"""Fused scoring of classes on the GPU: tiled cross products, reduced over poses in-kernel.

    >>> top_s, top_i, lse, nsig, refine, ratio = score_classes(p_stack, ctf2, arot, phase,
    ...                                                         alpha, 1.0, side, 6.9, 8,
    ...                                                         candidates)

Work is a list of (class, particle) pairs, sorted by class: every pair when ``candidates``
is None, else each class's candidate particles.  One call runs, per chunk of pairs (sized
from the free device memory; one chunk in practice), four launches for all classes at once:

1. ``_norm_kernel``: norm[m, r] = Σ_f ctf2[i, f]·|A_k,r(f)|² for pair m = (k, i), the
   t-independent product (M, R).
2. ``partials``: a block takes TILE_N pairs of one class × TILE_Q poses q = r·T + t; it
   streams the frequencies in TILE_F slices through shared memory (P, and M = A_r·phase_t
   as complex64, each pose's r and t looked up from a table the block builds once) and each
   thread accumulates MICRO_N × MICRO_Q cross products Σ_f Re(conj(P)·M) in registers.  The
   scores s = (2α·cross − α²·norm)/τ go to a shared tile and are reduced there, per pair:
   the tile's top-n, Σ exp(s − max) and the count of s > max − sig_log (float32).  Only
   these per-tile partials (M × n_tiles × n_top) reach global memory, never M × R·T.
3. ``merge`` (a thread per pair): top-n, log-sum-exp and significant count over tiles,
   written to the (N, K) outputs; then ``refine`` (32 threads per pair, MERGE_THREADS per
   block): the parabola refinement and cross/norm ratio of the best pose, whose
   neighbours' cross products are recomputed as dot products over F.
4. ``recount``, only where needed: a tile whose maximum lies less than sig_log below the best
   but whose kept top-n cannot tell how many of its poses pass that threshold is scored
   again, for just those pairs (TILE_N of one class per block), and counted exactly.

The tiled kernels (2–4) are in ``cuda_tiles``.  Particles, phases and outputs live in pooled
device buffers reused by every call, copied through pinned memory on one stream
(``cuda_device``); the rotated references are the ones ``rotate_references`` left on the
card (``cuda_resident``).  Tunables are the module constants below, checked against the
device's limits (``check_tunables``); the kernels are compiled once per set of values.

Reference × phase products are formed per pose tile and F slice in each block (TILE_Q·TILE_F
complex products against TILE_N·TILE_Q·TILE_F·2 FMAs: 1/(2·TILE_N) of the arithmetic, from
rows of A and of the phases that the pose tile's blocks share in L2); a precomputed pose
matrix would be K·R·T·F·8 bytes per batch (4 GB at 200 classes) read from memory instead.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from class2d.kernels import cuda_device as dev, cuda_resident, unscored
from class2d.kernels.cuda_tiles import kernels

#: particles per block of the tiled kernels
TILE_N = 64
#: poses per block of the tiled kernels
TILE_Q = 64
#: frequencies per shared-memory slice
TILE_F = 16
#: particles × poses in the registers of one thread; threads = TILE_N·TILE_Q/(MICRO_N·MICRO_Q)
MICRO_N = 4
MICRO_Q = 4
#: threads per block of the merge (one per pair) and refine (32 per pair) kernels; a power of 2
MERGE_THREADS = 128


def tunables() -> tuple[int, int, int, int, int, int]:
    """The current (TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS)."""
    return TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS


def shared_bytes(tile_n: int, tile_q: int, tile_f: int) -> int:
    """Static shared memory of a ``partials``/``recount`` block, bytes (see ``cuda_tiles``)."""
    width = tile_q + 1
    return 8 * tile_n + 8 * tile_q + 8 * tile_n * tile_f + 8 * tile_f * width + 4 * tile_n * width


def check_tunables(tile_n: int, tile_q: int, tile_f: int, micro_n: int, micro_q: int,
                   merge_threads: int) -> int:
    """Threads per block of the tiled kernels; ValueError naming the tunable where these
    values (or ``cuda_device.THREADS``, ``MAX_BLOCKS``) cannot launch on the current device
    (threads per block, shared memory)."""
    values = {"TILE_N": tile_n, "TILE_Q": tile_q, "TILE_F": tile_f, "MICRO_N": micro_n,
              "MICRO_Q": micro_q, "MERGE_THREADS": merge_threads}
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"cuda_score.{name} must be a positive integer, not {value!r}")
    if tile_n % micro_n or tile_q % micro_q:
        raise ValueError(f"cuda_score.TILE_N ({tile_n}) and TILE_Q ({tile_q}) must be multiples"
                         f" of MICRO_N ({micro_n}) and MICRO_Q ({micro_q})")
    threads = (tile_n // micro_n) * (tile_q // micro_q)
    limit = dev.device_limit("MAX_THREADS_PER_BLOCK")
    if threads > limit:
        raise ValueError(f"cuda_score: TILE_N·TILE_Q/(MICRO_N·MICRO_Q) = {threads} threads per "
                         f"block, more than this device's {limit}")
    if merge_threads > limit or merge_threads & (merge_threads - 1):
        raise ValueError(f"cuda_score.MERGE_THREADS = {merge_threads} must be a power of two "
                         f"and at most this device's {limit} threads per block")
    if dev.THREADS > limit or dev.THREADS < 1 or dev.MAX_BLOCKS < 1:
        raise ValueError(f"cuda_device.THREADS = {dev.THREADS} must be 1 … {limit} (this "
                         f"device's threads per block) and MAX_BLOCKS ≥ 1, not {dev.MAX_BLOCKS}")
    shared, shared_limit = (shared_bytes(tile_n, tile_q, tile_f),
                            dev.device_limit("MAX_SHARED_MEMORY_PER_BLOCK"))
    if shared > shared_limit:
        raise ValueError(f"cuda_score: TILE_N={tile_n}, TILE_Q={tile_q}, TILE_F={tile_f} need "
                         f"{shared} bytes of shared memory per block, more than this "
                         f"device's {shared_limit}")
    return threads


@cuda.jit
def _norm_kernel(ctf2, power, pair_row, pair_class, norm):
    """norm[m, r] = Σ_f ctf2[i, f]·power[k, f, r] for pair m = (k, i).

    ctf2: (N, F);  power: (K, F, R) = |A_k,r(f)|² transposed;  pair_row, pair_class: (M,)
    """
    n_rot = norm.shape[1]
    for item in range(cuda.grid(1), norm.shape[0] * n_rot, cuda.gridsize(1)):
        m = item // n_rot
        r = item - m * n_rot
        i = pair_row[m]
        k = pair_class[m]
        acc = float32(0.0)
        for f in range(ctf2.shape[1]):
            acc += ctf2[i, f] * power[k, f, r]
        norm[m, r] = acc


@cuda.jit
def _fill_kernel(top_s, top_i, lse, nsig, refine, ratio):
    """What a (particle, class) not scored gets (see ``kernels.unscored``)."""
    n_pairs, n_top = lse.size, top_s.shape[2]
    n_class = lse.shape[1]
    for item in range(cuda.grid(1), n_pairs, cuda.gridsize(1)):
        i = item // n_class
        k = item - i * n_class
        for j in range(n_top):
            top_s[i, k, j] = -math.inf
            top_i[i, k, j] = -1
        lse[i, k] = -math.inf
        nsig[i, k] = 0
        for axis in range(3):
            refine[i, k, axis] = 0
        ratio[i, k] = 1


def recount_blocks(flags: np.ndarray, tile_n: int,
                   classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group flagged (pair, tile) pairs by tile (and class), ``tile_n`` pairs per block.

    flags: (M, n_tiles) 0/1;  classes: (M,) class of each pair, sorted, or None (one class)
    returns block_tile (B,) int32 and block_rows (B, tile_n) int32 (−1 where a block has
    fewer pairs); a block never holds two classes.
    """
    tiles, rows = np.nonzero(flags.T)
    if rows.size == 0:
        return np.zeros(0, np.int32), np.zeros((0, tile_n), np.int32)
    first = np.r_[True, tiles[1:] != tiles[:-1]]
    if classes is not None:
        first |= np.r_[True, classes[rows][1:] != classes[rows][:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(rows.size), 0))
    rank = np.arange(rows.size) - start
    new_block = first | (rank % tile_n == 0)
    block = np.cumsum(new_block) - 1
    block_rows = np.full((block[-1] + 1, tile_n), -1, np.int32)
    block_rows[block, rank % tile_n] = rows
    return tiles[new_block].astype(np.int32), block_rows


def pair_blocks(pair_class: np.ndarray, tile_n: int) -> tuple[np.ndarray, ...]:
    """Blocks of at most ``tile_n`` consecutive pairs of one class: (start, count, class),
    each (B,) int32.  pair_class: (M,) sorted."""
    if pair_class.size == 0:
        return tuple(np.zeros(0, np.int32) for _ in range(3))
    begin = np.flatnonzero(np.r_[True, pair_class[1:] != pair_class[:-1]])
    end = np.r_[begin[1:], pair_class.size]
    per_run = -(-(end - begin) // tile_n)
    first_block = np.cumsum(per_run) - per_run
    within = np.arange(per_run.sum()) - np.repeat(first_block, per_run)
    start = np.repeat(begin, per_run) + within * tile_n
    count = np.minimum(tile_n, np.repeat(end, per_run) - start)
    return (start.astype(np.int32), count.astype(np.int32),
            pair_class[start].astype(np.int32))


def score_classes(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log, n_top,
                  candidates=None):
    """``cpu.score_classes`` on the GPU, every class in one launch per kernel.

    p_stack: (N, 2F) float32 [Re P | Im P];  ctf2: (N, F) float32;  arot: (K, R, F) complex64
    phase: (T, F) complex64, T = side²;  alpha: (N,) float32
    candidates: (N, K) bool or None (all): class k only for the particles where it is true
    returns (top_s (N, K, P), top_i (N, K, P) int64, lse (N, K), nsig (N, K) int32,
    refine (N, K, 3), ratio (N, K)); a class not scored for a particle gets what
    ``kernels.unscored`` says.
    """
    n = p_stack.shape[0]
    k_count, n_rot, n_freq = arot.shape
    n_shift = int(side) * int(side)
    if phase.shape != (n_shift, n_freq) or p_stack.shape[1] != 2 * n_freq:
        raise ValueError(f"score_classes: phase {phase.shape} must be (side², F) = "
                         f"({n_shift}, {n_freq}) and p_stack (N, 2F), not {p_stack.shape}")
    check_tunables(*tunables())
    n_tiles = -(-n_rot * n_shift // TILE_Q)
    if n_tiles == 0 or n_tiles > 65535 or n_top < 1:
        raise ValueError(f"score_classes: {n_rot * n_shift} poses and n_top={n_top} not "
                         f"supported")
    if candidates is None:
        pair_class, pair_row = np.divmod(np.arange(k_count * n, dtype=np.int64), n)
    else:
        pair_class, pair_row = np.nonzero(np.asarray(candidates, bool).T)
    if pair_row.size == 0:
        return unscored(n, k_count, n_top)
    per_pair = 4 * n_rot + n_tiles * (8 * n_top + 9) + 24
    fixed = n * (12 * n_freq + 4) + n * k_count * (8 * n_top + 24) + 8 * n_shift * n_freq
    step = dev.chunk_size(pair_row.size, fixed, per_pair, "class-particle pair")
    stream = dev.stream()
    d_arot, d_power = cuda_resident.device_rotations(arot)
    d_p, d_ctf2, d_alpha = (dev.to_device(name, a, np.float32) for name, a in
                            (("p_stack", p_stack), ("ctf2", ctf2), ("alpha", alpha)))
    d_phase = dev.to_device("phase", phase, np.complex64)
    out = [dev.buffer(name, shape, dtype) for name, shape, dtype in (
        ("top_s", (n, k_count, n_top), np.float32), ("top_i", (n, k_count, n_top), np.int32),
        ("lse", (n, k_count), np.float32), ("nsig", (n, k_count), np.int32),
        ("refine", (n, k_count, 3), np.float32), ("ratio", (n, k_count), np.float32))]
    _fill_kernel[dev.blocks(n * k_count), dev.THREADS, stream](*out)
    common = (d_p, d_arot, d_phase)
    for m0 in range(0, pair_row.size, step):
        m1 = min(pair_row.size, m0 + step)
        _score_pairs(common, d_ctf2, d_power, d_alpha, pair_row[m0:m1], pair_class[m0:m1],
                     np.float32(inv_temp), int(side), np.float32(sig_log), n_top, out)
    host = [dev.to_host(name, value) for name, value in
            zip(("top_s", "top_i", "lse", "nsig", "refine", "ratio"), out)]
    dev.sync()
    return (host[0].copy(), host[1].astype(np.int64), host[2].copy(), host[3].copy(),
            host[4].copy(), host[5].copy())


def _score_pairs(common, ctf2, power, alpha, pair_row, pair_class, inv_temp, side, sig_log,
                 n_top, out):
    """Score one chunk of (class, particle) pairs into the device outputs ``out``."""
    tile_n, tile_q = TILE_N, TILE_Q
    k = kernels(*tunables())
    stream = dev.stream()
    p_stack, arot, phase = common
    n_rot = arot.shape[1]
    n_shift = side * side
    n_tiles = -(-n_rot * n_shift // tile_q)
    n_pair = pair_row.size
    d_row, d_class = (dev.to_device(name, a, np.int32) for name, a in
                      (("pair_row", pair_row), ("pair_class", pair_class)))
    blocks = [dev.to_device(name, a, np.int32) for name, a in
              zip(("block_start", "block_count", "block_class"), pair_blocks(pair_class, tile_n))]
    norm = dev.buffer("norm", (n_pair, n_rot), np.float32)
    _norm_kernel[dev.blocks(norm.size), dev.THREADS, stream](ctf2, power, d_row, d_class, norm)
    parts = [dev.buffer(name, shape, dtype) for name, shape, dtype in (
        ("part_s", (n_pair, n_tiles, n_top), np.float32),
        ("part_i", (n_pair, n_tiles, n_top), np.int32),
        ("part_sum", (n_pair, n_tiles), np.float32), ("part_cnt", (n_pair, n_tiles), np.int32))]
    scored = (p_stack, arot, phase, norm, alpha, inv_temp)
    k.partials[(blocks[0].size, n_tiles), k.threads, stream](*scored, n_shift, sig_log, d_row,
                                                             *blocks, *parts)
    thresholds = dev.buffer("thresholds", n_pair, np.float32)
    flags = dev.buffer("flags", (n_pair, n_tiles), np.uint8)
    k.merge[dev.blocks(n_pair, MERGE_THREADS), MERGE_THREADS, stream](
        sig_log, d_row, d_class, *parts, *out[:4], thresholds, flags)
    groups = MERGE_THREADS // min(32, MERGE_THREADS)
    k.refine[min(dev.MAX_BLOCKS, -(-n_pair // groups)), MERGE_THREADS, stream](
        *scored, side, d_row, d_class, out[0], out[1], *out[4:])
    host_flags = dev.to_host("flags", flags)
    dev.sync()
    block_tile, block_pairs = recount_blocks(host_flags, tile_n, pair_class)
    if block_tile.size:
        k.recount[block_tile.size, k.threads, stream](
            *scored, n_shift, d_row, d_class, dev.to_device("block_tile", block_tile, np.int32),
            dev.to_device("block_pairs", block_pairs, np.int32), thresholds, out[3])
