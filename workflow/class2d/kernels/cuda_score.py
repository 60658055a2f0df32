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

Particles, phases and outputs live in pooled device buffers reused by every call, copied
through pinned memory on one stream (``cuda_device``); the rotated references are the ones
``rotate_references`` left on the card (``cuda_resident``).  Tunables are the module
constants below, checked against the device's limits (``check_tunables``); the kernels are
compiled once per set of values.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import complex64, cuda, float32, int32, uint32

from class2d.kernels import cuda_device as dev, cuda_resident, unscored
from class2d.kernels.cpu import NEGLIGIBLE
from class2d.kernels.cuda_device import insert_best, parabola

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
#: neighbourhood of the best pose: itself, rotation −/+, x −/+, y −/+
_NEIGHBOURS = 7
_NEGLIGIBLE = np.float32(NEGLIGIBLE)


def tunables() -> tuple[int, int, int, int, int, int]:
    """The current (TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS)."""
    return TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS


def shared_bytes(tile_n: int, tile_q: int, tile_f: int) -> int:
    """Static shared memory of a ``partials``/``recount`` block, bytes (see ``kernels``)."""
    width = tile_q + 1
    return 8 * tile_n + 8 * tile_q + 8 * tile_n * tile_f + 8 * tile_f * width + 4 * tile_n * width


def check_tunables(tile_n: int, tile_q: int, tile_f: int, micro_n: int, micro_q: int,
                   merge_threads: int) -> int:
    """Threads per block of the tiled kernels; ValueError naming the tunable where these
    values cannot launch on the current device (threads per block, shared memory)."""
    values = dict(TILE_N=tile_n, TILE_Q=tile_q, TILE_F=tile_f, MICRO_N=micro_n,
                  MICRO_Q=micro_q, MERGE_THREADS=merge_threads)
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
    shared, shared_limit = (shared_bytes(tile_n, tile_q, tile_f),
                            dev.device_limit("MAX_SHARED_MEMORY_PER_BLOCK"))
    if shared > shared_limit:
        raise ValueError(f"cuda_score: TILE_N={tile_n}, TILE_Q={tile_q}, TILE_F={tile_f} need "
                         f"{shared} bytes of shared memory per block, more than this "
                         f"device's {shared_limit}")
    return threads


@cuda.jit(device=True)
def _score(cross, norm, a, inv_temp):
    """The score of a pose (float32): (2α·cross − α²·norm)/τ."""
    return (float32(2.0) * a * cross - a * a * norm) * inv_temp


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


@functools.lru_cache(maxsize=None)
def kernels(tile_n: int, tile_q: int, tile_f: int, micro_n: int, micro_q: int,
            merge_threads: int) -> types.SimpleNamespace:
    """The tiled kernels compiled for one set of tunables: partials, merge, recount."""
    if tile_n % micro_n or tile_q % micro_q:
        raise ValueError("TILE_N and TILE_Q must be multiples of MICRO_N and MICRO_Q")
    row_threads = tile_n // micro_n
    col_threads = tile_q // micro_q
    threads = row_threads * col_threads
    width = tile_q + 1                # padded rows: no shared-memory bank conflicts
    lanes = min(32, merge_threads)    # threads of ``refine`` per pair
    groups = merge_threads // lanes

    @cuda.jit(device=True)
    def pose_table(q0, n_shift, n_pose, s_rot, s_shift):
        """s_rot[j], s_shift[j] = r, t of pose q0 + j (−1 past the last pose): one division
        per pose and block, none per loaded element."""
        for j in range(cuda.threadIdx.x, tile_q, threads):
            q = int32(q0 + j)
            if q < n_pose:
                r = q // int32(n_shift)
                s_rot[j] = r
                s_shift[j] = q - r * int32(n_shift)
            else:
                s_rot[j] = -1
                s_shift[j] = 0

    @cuda.jit(device=True)
    def tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, k, q0, spair, srow,
                    s_rot, s_shift, sp, sm, ss):
        """ss[n, j] = score of pair spair[n] (particle srow[n], class k) at pose q0 + j
        (−inf where none)."""
        tid = cuda.threadIdx.x
        tn = tid // col_threads
        tq = tid % col_threads
        n_freq = arot.shape[2]
        acc = cuda.local.array((micro_n, micro_q), float32)
        pv = cuda.local.array(micro_n, complex64)
        mv = cuda.local.array(micro_q, complex64)
        for a in range(micro_n):
            for b in range(micro_q):
                acc[a, b] = 0.0
        for f0 in range(0, n_freq, tile_f):
            for item in range(tid, tile_n * tile_f, threads):
                n = item // tile_f
                ff = item % tile_f
                f = f0 + ff
                row = srow[n]
                if row >= 0 and f < n_freq:
                    sp[n, ff] = complex64(p_stack[row, f]) + complex64(1j) * complex64(
                        p_stack[row, n_freq + f])
                else:
                    sp[n, ff] = 0
            for item in range(tid, tile_q * tile_f, threads):
                j = item // tile_f
                ff = item % tile_f
                f = f0 + ff
                r = s_rot[j]
                if r >= 0 and f < n_freq:
                    sm[ff, j] = arot[k, r, f] * phase[s_shift[j], f]
                else:
                    sm[ff, j] = 0
            cuda.syncthreads()
            for f in range(tile_f):
                fu = uint32(f)                    # unsigned: no negative-index wrapping
                for a in range(micro_n):
                    pv[a] = sp[tn + a * row_threads, fu]
                for b in range(micro_q):
                    mv[b] = sm[fu, tq + b * col_threads]
                for a in range(micro_n):          # two separate sums: two FMAs, no add
                    for b in range(micro_q):
                        acc[a, b] += pv[a].real * mv[b].real
                        acc[a, b] += pv[a].imag * mv[b].imag
            cuda.syncthreads()
        for a in range(micro_n):
            n = tn + a * row_threads
            m = spair[n]
            for b in range(micro_q):
                j = tq + b * col_threads
                r = s_rot[j]
                if m >= 0 and r >= 0:
                    ss[n, j] = _score(acc[a, b], norm[m, r], alpha[srow[n]], inv_temp)
                else:
                    ss[n, j] = -math.inf
        cuda.syncthreads()

    @cuda.jit
    def partials(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, sig_log, pair_row,
                 block_start, block_count, block_class, part_s, part_i, part_sum, part_cnt):
        """Per (pair, pose tile): top-n (part_s, part_i: (M, n_tiles, n_top)), Σ exp(s − max)
        over s > max − NEGLIGIBLE (part_sum) and #s > max − sig_log (part_cnt).  Block b
        holds pairs block_start[b] … + block_count[b], all of class block_class[b]."""
        spair = cuda.shared.array(tile_n, int32)
        srow = cuda.shared.array(tile_n, int32)
        s_rot = cuda.shared.array(tile_q, int32)
        s_shift = cuda.shared.array(tile_q, int32)
        sp = cuda.shared.array((tile_n, tile_f), complex64)
        sm = cuda.shared.array((tile_f, width), complex64)
        ss = cuda.shared.array((tile_n, width), float32)
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.x
        tile = cuda.blockIdx.y
        q0 = tile * tile_q
        n_top = part_s.shape[2]
        for n in range(tid, tile_n, threads):
            m = block_start[b] + n
            inside = n < block_count[b]
            spair[n] = m if inside else -1
            srow[n] = pair_row[m] if inside else -1
        pose_table(q0, n_shift, arot.shape[1] * n_shift, s_rot, s_shift)
        cuda.syncthreads()
        tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, block_class[b], q0, spair,
                    srow, s_rot, s_shift, sp, sm, ss)
        for n in range(tid, tile_n, threads):
            m = spair[n]
            if m < 0:
                continue
            for j in range(n_top):
                part_s[m, tile, j] = -math.inf
                part_i[m, tile, j] = -1
            for j in range(tile_q):
                insert_best(part_s[m, tile], part_i[m, tile], ss[n, j], q0 + j)
            best = part_s[m, tile, 0]
            threshold = best - sig_log
            total = float32(0.0)
            count = 0
            for j in range(tile_q):
                s = ss[n, j]
                if s > best - _NEGLIGIBLE:
                    total += math.exp(s - best)
                    if s > threshold:
                        count += 1
            part_sum[m, tile] = total
            part_cnt[m, tile] = count

    @cuda.jit
    def merge(sig_log, pair_row, pair_class, part_s, part_i, part_sum, part_cnt,
              top_s, top_i, lse, nsig, thresholds, flags):
        """Thread per pair m = (k, i): outputs [i, k] top-n, lse, nsig from its tiles' partials
        (see the module doc); flags[m, t] = 1 where tile t must be recounted against
        thresholds[m]."""
        n_tiles, n_top = part_s.shape[1], part_s.shape[2]
        for m in range(cuda.grid(1), pair_row.shape[0], cuda.gridsize(1)):
            i, k = pair_row[m], pair_class[m]
            out_s, out_i = top_s[i, k], top_i[i, k]
            for j in range(n_top):
                out_s[j] = -math.inf
                out_i[j] = -1
            for t in range(n_tiles):                 # tile by tile: poses in order
                for jj in range(n_top):
                    if part_i[m, t, jj] >= 0:
                        insert_best(out_s, out_i, part_s[m, t, jj], part_i[m, t, jj])
            best = out_s[0]
            total = float32(0.0)
            for t in range(n_tiles):
                total += part_sum[m, t] * math.exp(part_s[m, t, 0] - best)
            lse[i, k] = best + math.log(total)
            threshold = best - sig_log
            thresholds[m] = threshold
            count = 0
            for t in range(n_tiles):
                flags[m, t] = 0
                tile_max = part_s[m, t, 0]
                if tile_max <= threshold:
                    continue
                if tile_max == best:          # counted against this very threshold
                    count += part_cnt[m, t]
                    continue
                kept = valid = 0
                for jj in range(n_top):
                    if part_i[m, t, jj] >= 0:
                        valid += 1
                        if part_s[m, t, jj] > threshold:
                            kept += 1
                if kept < valid or kept == part_cnt[m, t]:
                    count += kept             # every pose above the threshold is kept
                else:
                    flags[m, t] = 1
            nsig[i, k] = count

    @cuda.jit
    def refine(p_stack, arot, phase, norm, alpha, inv_temp, side, pair_row, pair_class,
               top_s, top_i, refine_out, ratio):
        """A group of ``lanes`` threads per pair m = (k, i): the cross products of the best
        pose and its neighbours (rotation −/+, x −/+, y −/+) as dot products over F, then
        the parabola offsets refine_out[i, k] and the cross/norm ratio[i, k] there."""
        sums = cuda.shared.array((groups, _NEIGHBOURS, lanes), float32)
        pose_r = cuda.local.array(_NEIGHBOURS, int32)
        pose_t = cuda.local.array(_NEIGHBOURS, int32)
        acc = cuda.local.array(_NEIGHBOURS, float32)
        tid = cuda.threadIdx.x
        group, lane = tid // lanes, tid % lanes
        n_pair = pair_row.shape[0]
        n_rot, n_freq = arot.shape[1], arot.shape[2]
        n_shift = side * side
        for base in range(cuda.blockIdx.x * groups, n_pair, cuda.gridDim.x * groups):
            m = base + group                  # the loop runs alike in every thread: syncs
            inside = m < n_pair
            i = pair_row[m] if inside else 0
            k = pair_class[m] if inside else 0
            for j in range(_NEIGHBOURS):
                pose_r[j] = -1
                pose_t[j] = 0
                acc[j] = 0.0
            if inside:
                qb = top_i[i, k, 0]
                r = qb // n_shift
                t = qb - r * n_shift
                iy, ix = t // side, t % side
                pose_r[0], pose_t[0] = r, t
                if n_rot >= 3:
                    pose_r[1], pose_t[1] = (r + n_rot - 1) % n_rot, t
                    pose_r[2], pose_t[2] = (r + 1) % n_rot, t
                if 0 < ix < side - 1:
                    pose_r[3], pose_t[3] = r, t - 1
                    pose_r[4], pose_t[4] = r, t + 1
                if 0 < iy < side - 1:
                    pose_r[5], pose_t[5] = r, t - side
                    pose_r[6], pose_t[6] = r, t + side
            for f in range(lane, n_freq if inside else 0, lanes):
                p_re = p_stack[i, f]
                p_im = p_stack[i, n_freq + f]
                for j in range(_NEIGHBOURS):
                    if pose_r[j] >= 0:
                        value = arot[k, pose_r[j], f] * phase[pose_t[j], f]
                        acc[j] += p_re * value.real + p_im * value.imag
            for j in range(_NEIGHBOURS):
                sums[group, j, lane] = acc[j]
            cuda.syncthreads()
            step = lanes // 2
            while step > 0:                   # tree sum over the group's lanes
                if lane < step:
                    for j in range(_NEIGHBOURS):
                        sums[group, j, lane] += sums[group, j, lane + step]
                cuda.syncthreads()
                step //= 2
            if inside and lane == 0:
                a = alpha[i]
                best = top_s[i, k, 0]
                for axis in range(3):
                    left = 1 + 2 * axis
                    refine_out[i, k, axis] = 0
                    if pose_r[left] >= 0:
                        refine_out[i, k, axis] = parabola(
                            _score(sums[group, left, 0], norm[m, pose_r[left]], a, inv_temp),
                            best, _score(sums[group, left + 1, 0], norm[m, pose_r[left + 1]],
                                         a, inv_temp))
                nb = norm[m, pose_r[0]]
                ratio[i, k] = sums[group, 0, 0] / nb if nb > 0 else float32(1.0)
            cuda.syncthreads()                # sums are refilled by the next pairs

    @cuda.jit
    def recount(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, pair_row, pair_class,
                block_tile, block_pairs, thresholds, nsig):
        """Block b: nsig[i, k] += #poses of tile block_tile[b] scoring above thresholds[m],
        for the pairs m = (k, i) block_pairs[b] (−1: none), all of one class."""
        spair = cuda.shared.array(tile_n, int32)
        srow = cuda.shared.array(tile_n, int32)
        s_rot = cuda.shared.array(tile_q, int32)
        s_shift = cuda.shared.array(tile_q, int32)
        sp = cuda.shared.array((tile_n, tile_f), complex64)
        sm = cuda.shared.array((tile_f, width), complex64)
        ss = cuda.shared.array((tile_n, width), float32)
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.x
        q0 = block_tile[b] * tile_q
        for n in range(tid, tile_n, threads):
            m = block_pairs[b, n]
            spair[n] = m
            srow[n] = pair_row[m] if m >= 0 else -1
        pose_table(q0, n_shift, arot.shape[1] * n_shift, s_rot, s_shift)
        cuda.syncthreads()
        k = pair_class[block_pairs[b, 0]]
        tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, k, q0, spair, srow, s_rot,
                    s_shift, sp, sm, ss)
        for n in range(tid, tile_n, threads):
            m = spair[n]
            if m >= 0:
                count = 0
                for j in range(tile_q):
                    if ss[n, j] > thresholds[m]:
                        count += 1
                cuda.atomic.add(nsig, (srow[n], k), count)

    return types.SimpleNamespace(partials=partials, merge=merge, refine=refine,
                                 recount=recount, threads=threads)


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
    tile_n, tile_q = TILE_N, TILE_Q
    check_tunables(*tunables())
    n_tiles = -(-n_rot * n_shift // tile_q)
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
    stream.synchronize()
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
    stream.synchronize()
    block_tile, block_pairs = recount_blocks(host_flags, tile_n, pair_class)
    if block_tile.size:
        k.recount[block_tile.size, k.threads, stream](
            *scored, n_shift, d_row, d_class, dev.to_device("block_tile", block_tile, np.int32),
            dev.to_device("block_pairs", block_pairs, np.int32), thresholds, out[3])
