"""The tiled scoring kernels, compiled once per set of tunables (see ``cuda_score``).

    >>> k = kernels(64, 64, 16, 4, 4, 128)     # TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE
    >>> k.partials[(blocks, n_tiles), k.threads, stream](...)

``partials`` scores a tile of pairs × poses with shared-memory tiles and register blocking
and reduces it per pair; ``merge`` combines a pair's tiles; ``refine`` fits parabolas at the
best pose; ``recount`` counts significant poses of flagged tiles exactly.  Their arguments
and the layouts of the partials are those ``cuda_score`` passes.  Everything is float32:
scores, sums of exp, and the exp itself.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
from numba import complex64, cuda, float32, int32, uint32

from class2d.kernels.cpu import NEGLIGIBLE
from class2d.kernels.cuda_device import insert_best, parabola

#: neighbourhood of the best pose: itself, rotation −/+, x −/+, y −/+
_NEIGHBOURS = 7
_NEGLIGIBLE = np.float32(NEGLIGIBLE)


@cuda.jit(device=True)
def _score(cross, norm, a, inv_temp):
    """The score of a pose (float32): (2α·cross − α²·norm)/τ, as ``cpu._reduce_row``'s
    (which multiplies by 1/τ before the difference, so the last bits may differ)."""
    return (float32(2.0) * a * cross - a * a * norm) * inv_temp


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
    split = max(1, min(threads // tile_n, tile_f))   # threads per pair summing a tile's exp
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
        for n in range(tid, tile_n, threads):  # the tile's top-n of each pair, in pose order
            m = spair[n]
            if m < 0:
                continue
            top_s, top_i = part_s[m, tile], part_i[m, tile]
            for j in range(n_top):
                top_s[j] = -math.inf
                top_i[j] = -1
            last = float32(-math.inf)          # in a register: global memory only on insertion
            for j in range(tile_q):
                s = ss[n, j]
                if s > last:
                    insert_best(top_s, top_i, s, q0 + j)
                    last = top_s[n_top - 1]
            ss[n, tile_q] = top_s[0]            # the padding column keeps the pair's best
        cuda.syncthreads()
        for item in range(tid, tile_n * split, threads):   # Σ exp and count, split poses
            n = item // split
            part = item - n * split
            if spair[n] >= 0:
                best = ss[n, tile_q]
                threshold = best - sig_log
                total = float32(0.0)
                count = 0
                for j in range(part, tile_q, split):
                    s = ss[n, j]
                    if s > best - _NEGLIGIBLE:
                        total += math.exp(s - best)
                        if s > threshold:
                            count += 1
                sp[n, part] = complex64(total) + complex64(1j) * complex64(float32(count))
        cuda.syncthreads()
        for n in range(tid, tile_n, threads):  # the parts in a fixed order: deterministic
            m = spair[n]
            if m >= 0:
                total = float32(0.0)
                count = 0
                for part in range(split):
                    total += sp[n, part].real
                    count += int32(sp[n, part].imag)
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
            last = float32(-math.inf)
            for t in range(n_tiles):                 # tile by tile: poses in order
                for jj in range(n_top):
                    s = part_s[m, t, jj]
                    if part_i[m, t, jj] >= 0 and s > last:
                        insert_best(out_s, out_i, s, part_i[m, t, jj])
                        last = out_s[n_top - 1]
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
