"""Fused scoring of classes on the GPU: tiled cross products, reduced over poses in-kernel.

    >>> top_s, top_i, lse, nsig, refine, ratio = score_classes(p_stack, ctf2, arot, phase,
    ...                                                         alpha, 1.0, side, 6.9, 8)

Per chunk of particles (sized from the free device memory) and class, four launches:

1. ``_norm_kernel``: norm[i, r] = Σ_f ctf2[i, f]·|A_r(f)|², the t-independent product (N, R).
2. ``partials``: a block takes TILE_N particles × TILE_Q poses q = r·T + t; it streams the
   frequencies in TILE_F slices through shared memory (P and M = A_r·phase_t as complex64)
   and each thread accumulates MICRO_N × MICRO_Q cross products Σ_f Re(conj(P)·M) in
   registers.  The scores s = (2α·cross − α²·norm)/τ go to a shared tile and are reduced
   there, per particle: the tile's top-n, Σ exp(s − max) and the count of s > max − sig_log.
   Only these per-tile partials (N × n_tiles × n_top) reach global memory, never N × R·T.
3. ``merge`` (a block per particle): top-n, log-sum-exp and significant count over tiles;
   the parabola refinement and cross/norm ratio of the best pose, whose neighbours' cross
   products are recomputed as dot products over F.
4. ``recount``, only where needed: a tile whose maximum lies less than sig_log below the best
   but whose kept top-n cannot tell how many of its poses pass that threshold is scored
   again, for just those (particle, tile) pairs (TILE_N per block), and counted exactly.

Tunables are the module constants below; the kernels are compiled once per set of values.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import complex64, cuda, float32, float64, int32, uint32

from class2d.kernels import cuda_device as dev
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
#: threads per block of the merge kernel (one block per particle)
MERGE_THREADS = 128
#: neighbourhood of the best pose: itself, rotation −/+, x −/+, y −/+
_NEIGHBOURS = 7


@cuda.jit(device=True)
def _score(cross, norm, a, inv_temp):
    """The score of a pose, (2α·cross − α²·norm)/τ: the same as ``cpu._reduce_row``'s
    (which multiplies by 1/τ before the difference, so the last bits may differ)."""
    return (2.0 * a * cross - a * a * norm) * inv_temp


@cuda.jit
def _norm_kernel(ctf2, a2t, norm):
    """norm[i, r] = Σ_f ctf2[i, f]·a2t[f, r].  ctf2: (N, F);  a2t: (F, R) = |A_r(f)|²ᵀ."""
    n_rot = norm.shape[1]
    for item in range(cuda.grid(1), norm.shape[0] * n_rot, cuda.gridsize(1)):
        i = item // n_rot
        r = item % n_rot
        acc = float32(0.0)
        for f in range(ctf2.shape[1]):
            acc += ctf2[i, f] * a2t[f, r]
        norm[i, r] = acc


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

    @cuda.jit(device=True)
    def tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, q0, srow,
                    sp, sm, ss):
        """ss[n, j] = score of particle srow[n] at pose q0 + j (−inf where none)."""
        tid = cuda.threadIdx.x
        tn = tid // col_threads
        tq = tid % col_threads
        n_freq = arot.shape[1]
        n_pose = arot.shape[0] * n_shift
        acc = cuda.local.array((micro_n, micro_q), float32)
        pv = cuda.local.array(micro_n, complex64)
        mv = cuda.local.array(micro_q, complex64)
        for a in range(micro_n):
            for b in range(micro_q):
                acc[a, b] = 0.0
        for f0 in range(0, n_freq, tile_f):
            for item in range(tid, tile_n * tile_f, threads):
                n = item // tile_f
                f = f0 + item % tile_f
                row = srow[n]
                if row >= 0 and f < n_freq:
                    sp[n, item % tile_f] = complex(p_stack[row, f], p_stack[row, n_freq + f])
                else:
                    sp[n, item % tile_f] = 0
            for item in range(tid, tile_q * tile_f, threads):
                j = item // tile_f
                f = f0 + item % tile_f
                q = q0 + j
                if q < n_pose and f < n_freq:
                    sm[item % tile_f, j] = arot[q // n_shift, f] * phase[q % n_shift, f]
                else:
                    sm[item % tile_f, j] = 0
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
            row = srow[n]
            for b in range(micro_q):
                j = tq + b * col_threads
                q = q0 + j
                if row >= 0 and q < n_pose:
                    ss[n, j] = _score(acc[a, b], norm[row, q // n_shift], alpha[row], inv_temp)
                else:
                    ss[n, j] = -math.inf
        cuda.syncthreads()

    @cuda.jit
    def partials(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, sig_log,
                 part_s, part_i, part_sum, part_cnt):
        """Per (particle, pose tile): top-n (part_s, part_i: (N, n_tiles, n_top)), Σ exp(s −
        max) over s > max − NEGLIGIBLE (part_sum) and #s > max − sig_log (part_cnt)."""
        srow = cuda.shared.array(tile_n, int32)
        sp = cuda.shared.array((tile_n, tile_f), complex64)
        sm = cuda.shared.array((tile_f, width), complex64)
        ss = cuda.shared.array((tile_n, width), float32)
        tid = cuda.threadIdx.x
        tile = cuda.blockIdx.y
        q0 = tile * tile_q
        n_top = part_s.shape[2]
        for n in range(tid, tile_n, threads):
            row = cuda.blockIdx.x * tile_n + n
            srow[n] = row if row < p_stack.shape[0] else -1
        cuda.syncthreads()
        tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, q0, srow, sp, sm, ss)
        for n in range(tid, tile_n, threads):
            row = srow[n]
            if row < 0:
                continue
            for j in range(n_top):
                part_s[row, tile, j] = -math.inf
                part_i[row, tile, j] = -1
            for j in range(tile_q):
                insert_best(part_s[row, tile], part_i[row, tile], ss[n, j], q0 + j)
            best = part_s[row, tile, 0]
            threshold = best - sig_log
            total, count = 0.0, 0
            for j in range(tile_q):
                s = ss[n, j]
                if s > best - NEGLIGIBLE:
                    total += math.exp(float64(s) - float64(best))
                    if s > threshold:
                        count += 1
            part_sum[row, tile] = total
            part_cnt[row, tile] = count

    @cuda.jit
    def merge(p_stack, arot, phase, norm, alpha, inv_temp, side, sig_log,
              part_s, part_i, part_sum, part_cnt,
              top_s, top_i, lse, nsig, thresholds, flags, refine, ratio):
        """Block i: the outputs of particle i from its tiles' partials (see module doc);
        flags[i, t] = 1 where tile t must be recounted against thresholds[i]."""
        poses = cuda.shared.array(_NEIGHBOURS, int32)
        sums = cuda.shared.array((_NEIGHBOURS, merge_threads), float32)
        i, tid = cuda.blockIdx.x, cuda.threadIdx.x
        n_tiles, n_top = part_s.shape[1], part_s.shape[2]
        n_rot, n_freq = arot.shape
        n_shift = side * side
        if tid == 0:
            for j in range(n_top):
                top_s[i, j] = -math.inf
                top_i[i, j] = -1
            for t in range(n_tiles):                 # tile by tile: poses in order
                for jj in range(n_top):
                    if part_i[i, t, jj] >= 0:
                        insert_best(top_s[i], top_i[i], part_s[i, t, jj], part_i[i, t, jj])
            best = top_s[i, 0]
            total = 0.0
            for t in range(n_tiles):
                total += part_sum[i, t] * math.exp(float64(part_s[i, t, 0]) - float64(best))
            lse[i] = best + math.log(total)
            threshold = best - sig_log
            thresholds[i] = threshold
            count = 0
            for t in range(n_tiles):
                flags[i, t] = 0
                tile_max = part_s[i, t, 0]
                if tile_max <= threshold:
                    continue
                if tile_max == best:          # counted against this very threshold
                    count += part_cnt[i, t]
                    continue
                kept = valid = 0
                for jj in range(n_top):
                    if part_i[i, t, jj] >= 0:
                        valid += 1
                        if part_s[i, t, jj] > threshold:
                            kept += 1
                if kept < valid or kept == part_cnt[i, t]:
                    count += kept             # every pose above the threshold is kept
                else:
                    flags[i, t] = 1
            nsig[i] = count
            qb = top_i[i, 0]
            r, t = qb // n_shift, qb % n_shift
            iy, ix = t // side, t % side
            poses[0] = qb
            for j in range(1, _NEIGHBOURS):
                poses[j] = -1
            if n_rot >= 3:
                poses[1] = ((r + n_rot - 1) % n_rot) * n_shift + t
                poses[2] = ((r + 1) % n_rot) * n_shift + t
            if 0 < ix < side - 1:
                poses[3] = qb - 1
                poses[4] = qb + 1
            if 0 < iy < side - 1:
                poses[5] = qb - side
                poses[6] = qb + side
        cuda.syncthreads()
        acc = cuda.local.array(_NEIGHBOURS, float32)
        for j in range(_NEIGHBOURS):
            acc[j] = 0.0
        for f in range(tid, n_freq, merge_threads):
            p_re = p_stack[i, f]
            p_im = p_stack[i, n_freq + f]
            for j in range(_NEIGHBOURS):
                q = poses[j]
                if q >= 0:
                    m = arot[q // n_shift, f] * phase[q % n_shift, f]
                    acc[j] += p_re * m.real + p_im * m.imag
        for j in range(_NEIGHBOURS):
            sums[j, tid] = acc[j]
        cuda.syncthreads()
        if tid == 0:
            for j in range(_NEIGHBOURS):
                for k in range(1, merge_threads):
                    acc[j] += sums[j, k]
            a = alpha[i]
            best = top_s[i, 0]
            r = poses[0] // n_shift
            for axis in range(3):
                left = poses[1 + 2 * axis]
                right = poses[2 + 2 * axis]
                refine[i, axis] = 0.0
                if left >= 0:
                    refine[i, axis] = parabola(
                        _score(acc[1 + 2 * axis], norm[i, left // n_shift], a, inv_temp), best,
                        _score(acc[2 + 2 * axis], norm[i, right // n_shift], a, inv_temp))
            nb = norm[i, r]
            ratio[i] = acc[0] / nb if nb > 0 else 1.0

    @cuda.jit
    def recount(p_stack, arot, phase, norm, alpha, inv_temp, n_shift, block_tile, block_rows,
                thresholds, nsig):
        """Block b: nsig[row] += #poses of tile block_tile[b] scoring above thresholds[row],
        for the rows block_rows[b] (−1: none)."""
        srow = cuda.shared.array(tile_n, int32)
        sp = cuda.shared.array((tile_n, tile_f), complex64)
        sm = cuda.shared.array((tile_f, width), complex64)
        ss = cuda.shared.array((tile_n, width), float32)
        tid = cuda.threadIdx.x
        b = cuda.blockIdx.x
        for n in range(tid, tile_n, threads):
            srow[n] = block_rows[b, n]
        cuda.syncthreads()
        tile_scores(p_stack, arot, phase, norm, alpha, inv_temp, n_shift,
                    block_tile[b] * tile_q, srow, sp, sm, ss)
        for n in range(tid, tile_n, threads):
            row = srow[n]
            if row >= 0:
                count = 0
                for j in range(tile_q):
                    if ss[n, j] > thresholds[row]:
                        count += 1
                cuda.atomic.add(nsig, row, count)

    return types.SimpleNamespace(partials=partials, merge=merge, recount=recount,
                                 threads=threads)


def recount_blocks(flags: np.ndarray, tile_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Group flagged (particle, tile) pairs by tile, ``tile_n`` particles per block.

    flags: (N, n_tiles) 0/1;  returns block_tile (B,) int32 and block_rows (B, tile_n) int32
    (−1 where a block has fewer particles).
    """
    tiles, rows = np.nonzero(flags.T)
    if rows.size == 0:
        return np.zeros(0, np.int32), np.zeros((0, tile_n), np.int32)
    first = np.r_[True, tiles[1:] != tiles[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(rows.size), 0))
    rank = np.arange(rows.size) - start
    new_block = first | (rank % tile_n == 0)
    block = np.cumsum(new_block) - 1
    block_rows = np.full((block[-1] + 1, tile_n), -1, np.int32)
    block_rows[block, rank % tile_n] = rows
    return tiles[new_block].astype(np.int32), block_rows


def score_classes(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log, n_top):
    """``cpu.score_classes`` on the GPU: the classes are uploaded once, then each chunk of
    particles once, and scored against every class in turn, one fused launch per class.

    p_stack: (N, 2F) float32 [Re P | Im P];  ctf2: (N, F) float32;  arot: (K, R, F) complex64
    phase: (T, F) complex64, T = side²;  alpha: (N,) float32
    returns (top_s (N, K, P), top_i (N, K, P) int64, lse (N, K), nsig (N, K) int32,
    refine (N, K, 3), ratio (N, K))
    """
    n = p_stack.shape[0]
    k_count, n_rot, n_freq = arot.shape
    n_shift = int(side) * int(side)
    if phase.shape != (n_shift, n_freq) or p_stack.shape[1] != 2 * n_freq:
        raise ValueError(f"score_classes: phase {phase.shape} must be (side², F) = "
                         f"({n_shift}, {n_freq}) and p_stack (N, 2F), not {p_stack.shape}")
    n_tiles = -(-n_rot * n_shift // TILE_Q)
    if n_tiles == 0 or n_tiles > 65535 or n_top < 1:
        raise ValueError(f"score_classes: {n_rot * n_shift} poses and n_top={n_top} not "
                         f"supported")
    out = (np.empty((n, k_count, n_top), np.float32), np.empty((n, k_count, n_top), np.int64),
           np.empty((n, k_count), np.float32), np.empty((n, k_count), np.int32),
           np.empty((n, k_count, 3), np.float32), np.empty((n, k_count), np.float32))
    if n == 0:
        return out
    d_phase = dev.upload(phase, np.complex64)
    arot = np.ascontiguousarray(arot, np.complex64)
    a2t = (arot.real ** 2 + arot.imag ** 2).astype(np.float32).transpose(0, 2, 1)
    references = [(cuda.to_device(arot[k]), dev.upload(a2t[k], np.float32))
                  for k in range(k_count)]                 # once, for every chunk
    per_particle = 12 * n_freq + 8 + 4 * n_rot + n_tiles * (8 * n_top + 13) + 20 * n_top + 40
    step = dev.chunk_size(n, 0, per_particle, "particle")
    scalars = (np.float32(inv_temp), int(side), np.float32(sig_log), int(n_top))
    for a in range(0, n, step):
        b = min(n, a + step)
        particles = [dev.upload(array[a:b], np.float32) for array in (p_stack, ctf2, alpha)]
        for k, (d_rot, d_a2t) in enumerate(references):
            chunk = _score_chunk(*particles, d_rot, d_phase, d_a2t, *scalars)
            for dest, value in zip(out, chunk):
                dest[a:b, k] = value
    return out


def _score_chunk(p_stack, ctf2, alpha, arot, phase, a2t, inv_temp, side, sig_log, n_top):
    """One class on device arrays of one chunk of particles; host outputs."""
    k = kernels(TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS)
    n, n_rot = p_stack.shape[0], arot.shape[0]
    n_shift = side * side
    n_tiles = -(-n_rot * n_shift // TILE_Q)
    norm = cuda.device_array((n, n_rot), np.float32)
    _norm_kernel[dev.blocks(n * n_rot), dev.THREADS](ctf2, a2t, norm)
    part_s, part_i = (cuda.device_array((n, n_tiles, n_top), t) for t in (np.float32, np.int32))
    part_sum, part_cnt = (cuda.device_array((n, n_tiles), t) for t in (np.float64, np.int32))
    common = (p_stack, arot, phase, norm, alpha, inv_temp)
    k.partials[(-(-n // TILE_N), n_tiles), k.threads](*common, n_shift, sig_log, part_s, part_i,
                                                      part_sum, part_cnt)
    top_s, top_i = (cuda.device_array((n, n_top), t) for t in (np.float32, np.int32))
    lse, thresholds, ratio = (cuda.device_array(n, np.float32) for _ in range(3))
    nsig, flags = cuda.device_array(n, np.int32), cuda.device_array((n, n_tiles), np.uint8)
    refine = cuda.device_array((n, 3), np.float32)
    k.merge[n, MERGE_THREADS](*common, side, sig_log, part_s, part_i, part_sum, part_cnt,
                              top_s, top_i, lse, nsig, thresholds, flags, refine, ratio)
    block_tile, block_rows = recount_blocks(flags.copy_to_host(), TILE_N)
    if block_tile.size:
        k.recount[block_tile.size, k.threads](*common, n_shift, cuda.to_device(block_tile),
                                              cuda.to_device(block_rows), thresholds, nsig)
    return (top_s.copy_to_host(), top_i.copy_to_host().astype(np.int64), lse.copy_to_host(),
            nsig.copy_to_host(), refine.copy_to_host(), ratio.copy_to_host())
