"""CPU kernels (NumPy BLAS + Numba): the reference implementation every backend matches.

    >>> arot = rotate_references(grids, fx, fy, psi, pad)          # (K, R, F) complex64
    >>> top_s, top_i, lse, nsig, refine, ratio = score_classes(p_stack, ctf2, arot, phase,
    ...                                                         alpha, 1.0, side, 6.9, 8)
    >>> sums = InsertionSums(2 * k_count, size)       # a pass's class sums, batch by batch

The public functions and the class ``InsertionSums`` (no leading underscore) are the
backend interface: every one has a twin of the same signature in ``class2d.kernels.cuda``;
the shapes and meanings are documented once, here.  Scalar maths lives in ``scalar.py``.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading

import numba
import numpy as np
import threadpoolctl

from class2d.kernels import scalar, unscored

_sample = numba.njit(inline="always", cache=True)(scalar.sample_bilinear)
_coords = numba.njit(inline="always", cache=True)(scalar.reference_coords)
_phase = numba.njit(inline="always", cache=True)(scalar.phase_angle)
_parabola = numba.njit(inline="always", cache=True)(scalar.parabola_offset)
_corner = numba.njit(inline="always", cache=True)(scalar.splat_corner)
_insert = numba.njit(inline="always", cache=True)(scalar.insert_best)

#: a pose scoring this far below the best adds < e⁻⁴⁰ to the sum: the CUDA reduction
#: skips it, the CPU one (branch-free) counts it as e⁻⁴⁰
NEGLIGIBLE = 40.0
#: the reduction's float32 arithmetic may be reassociated (its sums run in vector lanes)
#: but sees infinities (scores of −inf where a maximum starts)
_FAST = {"nnan", "nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(parallel=True, cache=True)
def _rotate_kernel(grids, fx, fy, psi, pad, out):
    """Sample every class at every rotation: out[k, r, f] = A_k(R(−ψ_r) f).

    grids: (K, G, G) complex64, centred padded Fourier grids
    fx, fy: (F,) float32, particle frequencies in Fourier px of the d-box
    psi: (R,) float32, radians;  pad: G / d;  out: (K, R, F) complex64
    """
    n_class, n_rot, n_freq = out.shape
    center = grids.shape[1] // 2
    for kr in numba.prange(n_class * n_rot):
        k = kr // n_rot
        r = kr % n_rot
        c = math.cos(psi[r])
        s = math.sin(psi[r])
        for f in range(n_freq):
            y, x = _coords(fx[f], fy[f], c, s, pad, center)
            out[k, r, f] = _sample(grids[k], y, x)


@numba.njit(inline="always", cache=True)
def _larger(x, y):
    """max(x, y) as a select, which vectorizes (the builtin's NaN handling does not)."""
    return y if y > x else x


@numba.njit(inline="always", fastmath=True, cache=True)
def _exp_negative(x):
    """e^x for float32 x ≤ 0 (x below −NEGLIGIBLE counts as −NEGLIGIBLE), relative error
    ~1e-5: (Taylor series at x/128, degree 8)^128 in float32.  Plain arithmetic, so a loop
    over it vectorizes, which a call to ``math.exp`` does not."""
    z = _larger(x, np.float32(-NEGLIGIBLE)) * np.float32(1.0 / 128.0)
    p = np.float32(1.0) + z * (np.float32(1.0) + z * (np.float32(1 / 2) + z * (
        np.float32(1 / 6) + z * (np.float32(1 / 24) + z * (np.float32(1 / 120) + z * (
            np.float32(1 / 720) + z * (np.float32(1 / 5040) + z * np.float32(1 / 40320))))))))
    for _ in range(7):
        p = p * p
    return p


#: the reduction deals rows to threads in this many chunks, each with one score buffer
#: (a fixed number: asking Numba for its thread count stops the kernel being cached)
CHUNKS = 256


@numba.njit(parallel=True, nogil=True, cache=True)
def _reduce_kernel(cross, norm, alpha, inv_temp, side, sig_log, rows, k0,
                   top_s, top_i, lse, nsig, refine, ratio):
    """Reduce the scores of G classes over poses, per particle, without keeping them.

    Score of pose q = r·T + t of class g (T = side², t = iy·side + ix):
    s = (2α·cross[g, q] − α²·norm[g, r]) · inv_temp.
    cross: (N, G, R·T) float32, Σ_f Re(conj(P) M);  norm: (N, G, R) float32
    alpha: (N,) float32 per-particle scale;  inv_temp: 1/τ
    side: shifts per axis;  sig_log: a pose is significant within sig_log of the best
    rows: (N,) int, particle i's outputs go to row rows[i] and class g's to class k0 + g
    of the output arrays —
    top_s, top_i: (N, K, P) best scores and pose indices, best first;
    lse: (N, K) log Σ exp(s);  nsig: (N, K) significant poses;
    refine: (N, K, 3) sub-step offsets (rotation, x, y) of the best pose from parabolas;
    ratio: (N, K) cross/norm at the best pose (the least-squares scale there)
    """
    n, n_group = cross.shape[:2]
    n_rows = n * n_group
    n_chunk = min(n_rows, CHUNKS)
    for c in numba.prange(n_chunk):
        s = np.empty(cross.shape[2], np.float32)     # one score buffer per chunk of rows
        for ig in range(c * n_rows // n_chunk, (c + 1) * n_rows // n_chunk):
            i = ig // n_group
            g = ig % n_group
            k = k0 + g
            j = rows[i]
            _reduce_row(cross[i, g], norm[i, g], alpha[i], inv_temp, side, sig_log, s,
                        top_s[j, k], top_i[j, k], lse[j], nsig[j], refine[j, k], ratio[j], k)


@numba.njit(fastmath=_FAST, cache=True)
def _reduce_row(cross, norm, a, inv_temp, side, sig_log, s, top_s, top_i, lse, nsig, refine,
                ratio, k):
    """One particle and class of ``_reduce_kernel``: cross (R·T,), norm (R,); writes
    top_s, top_i (P,), refine (3,) and lse[k], nsig[k], ratio[k].

    The scores go to a buffer; computing them, then Σ exp and the significant count, are
    flat loops that vectorize.  The maximum is kept as eight independent running maxima,
    which pipeline.  The last pass keeps the best P in order and is scalar; the P-th
    largest of the eight maxima (P ≤ 8) is a floor that almost every pose is below, so
    it rarely branches."""
    n_shift = side * side
    n_rot = norm.shape[0]
    n_pose = cross.shape[0]
    n_top = top_s.shape[0]
    for r in range(n_rot):
        norm_term = a * a * norm[r] * inv_temp
        for q in range(r * n_shift, (r + 1) * n_shift):
            s[q] = norm_term
    two_a = np.float32(2.0) * a * inv_temp
    for q in range(n_pose):
        s[q] = two_a * cross[q] - s[q]
    for j in range(n_top):
        top_s[j] = -np.inf
        top_i[j] = -1
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
    whole = n_pose - n_pose % 8
    for q in range(0, whole, 8):        # independent of each other: they pipeline
        m0 = _larger(m0, s[q])
        m1 = _larger(m1, s[q + 1])
        m2 = _larger(m2, s[q + 2])
        m3 = _larger(m3, s[q + 3])
        m4 = _larger(m4, s[q + 4])
        m5 = _larger(m5, s[q + 5])
        m6 = _larger(m6, s[q + 6])
        m7 = _larger(m7, s[q + 7])
    for q in range(whole, n_pose):
        m0 = _larger(m0, s[q])
    for j, m in enumerate((m0, m1, m2, m3, m4, m5, m6, m7)):
        _insert(top_s, top_i, m, j)
    best = top_s[0]
    floor = top_s[n_top - 1] if whole > 0 and n_top <= 8 else np.float32(-np.inf)
    total = np.float32(0.0)
    count = 0
    for q in range(n_pose):
        x = s[q] - best
        total += _exp_negative(x)
        count += x > -sig_log
    lse[k] = best + math.log(total)
    nsig[k] = count
    for j in range(n_top):
        top_s[j] = -np.inf
        top_i[j] = -1
    last = top_s[n_top - 1]
    for q in range(n_pose):
        if s[q] >= floor and s[q] > last:
            _insert(top_s, top_i, s[q], q)
            last = top_s[n_top - 1]
    qb = top_i[0]
    r = qb // n_shift
    t = qb % n_shift
    iy = t // side
    ix = t % side
    refine[0] = 0.0
    refine[1] = 0.0
    refine[2] = 0.0
    if n_rot >= 3:
        refine[0] = _parabola(s[((r + n_rot - 1) % n_rot) * n_shift + t], best,
                              s[((r + 1) % n_rot) * n_shift + t])
    if 0 < ix < side - 1:
        refine[1] = _parabola(s[qb - 1], best, s[qb + 1])
    if 0 < iy < side - 1:
        refine[2] = _parabola(s[qb - side], best, s[qb + side])
    nb = norm[r]
    ratio[k] = cross[qb] / nb if nb > 0 else 1.0


@numba.njit(inline="always", cache=True)
def _shift_table(t, box, table, middle):
    """table[middle + m] = exp(+2πi·m·t/d) for every integer m the table holds."""
    for j in range(table.shape[0]):
        angle = 2.0 * math.pi * (j - middle) * t / box
        table[j] = complex(math.cos(angle), math.sin(angle))


@numba.njit(parallel=True, cache=True)
def _backproject_kernel(num, den, offsets, rows, psi, tx, ty, weight,
                X, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box):
    """Insert weighted particles into class sums (bilinear), without the Hermitian mirrors
    (``InsertionSums.collect`` adds those to the sums of the pass, node by node).

    num: (K, G, G) complex128 += w·α·CTF·X·exp(+2πi f·t/d)/σ² at R(−ψ) f;
    den: (K, G, G) float64 += w·α²·CTF²/σ² likewise.
    offsets: (K+1,) entries of class k are offsets[k]:offsets[k+1] (sorted by class)
    rows: (E,) int, particle row in X/ctf/alpha;  psi, tx, ty, weight: (E,) pose and weight
    X: (N, F) complex64;  ctf: (N, F) float32;  alpha: (N,) float32
    inv_sigma2, fx, fy, wf: (F,) float32 (wf: half-plane weight, ½ on the kx = 0 column)
    Frequencies are whole Fourier px, so each entry's shift phase is the product of two
    per-axis tables (a few dozen sines instead of one per frequency).
    """
    n_class = num.shape[0]
    size = num.shape[1]
    center = size // 2
    n_freq = fx.shape[0]
    reach = 0
    for f in range(n_freq):
        reach = max(reach, int(abs(fx[f])), int(abs(fy[f])))
    for k in numba.prange(n_class):
        ex = np.empty(2 * reach + 1, np.complex128)
        ey = np.empty(2 * reach + 1, np.complex128)
        for e in range(offsets[k], offsets[k + 1]):
            i = rows[e]
            c = math.cos(psi[e])
            s = math.sin(psi[e])
            a = alpha[i]
            _shift_table(tx[e], box, ex, reach)
            _shift_table(ty[e], box, ey, reach)
            for f in range(n_freq):
                g = weight[e] * wf[f] * ctf[i, f] * inv_sigma2[f]
                val = g * a * X[i, f] * ex[reach + int(fx[f])] * ey[reach + int(fy[f])]
                wden = g * a * a * ctf[i, f]
                y, x = _coords(fx[f], fy[f], c, s, pad, center)
                y0, x0, dy, dx = _corner(y, x, size)
                if y0 < 0:
                    continue
                for oy in range(2):
                    wy = dy if oy else 1.0 - dy
                    for ox in range(2):
                        wxy = wy * (dx if ox else 1.0 - dx)
                        num[k, y0 + oy, x0 + ox] += wxy * val
                        den[k, y0 + oy, x0 + ox] += wxy * wden


@numba.njit(parallel=True, cache=True)
def _noise_kernel(grids, classes, rows, psi, tx, ty, weight,
                    X, ctf, alpha, fx, fy, wf, shell, pad, box, out):
    """Per entry, Σ over each shell of w·|X − α·CTF·A(R(−ψ)f)·exp(−2πi f·t/d)|².

    grids: (K, G, G) complex64 references;  classes, rows: (E,) int
    psi, tx, ty, weight: (E,) float32;  shell: (F,) int, shell of each frequency
    out: (E, S) float64, zeroed here, then filled
    """
    n_entry = rows.shape[0]
    center = grids.shape[1] // 2
    n_freq = fx.shape[0]
    for e in numba.prange(n_entry):
        out[e, :] = 0.0
        i = rows[e]
        c = math.cos(psi[e])
        s = math.sin(psi[e])
        for f in range(n_freq):
            y, x = _coords(fx[f], fy[f], c, s, pad, center)
            ang = _phase(fx[f], fy[f], tx[e], ty[e], box)
            model = alpha[i] * ctf[i, f] * _sample(grids[classes[e]], y, x) * complex(
                math.cos(ang), math.sin(ang))
            diff = X[i, f] - model
            out[e, shell[f]] += weight[e] * wf[f] * (diff.real * diff.real + diff.imag * diff.imag)


@numba.njit(parallel=True, nogil=True, fastmath=True, cache=True)
def _pose_matrix(a_re, a_im, p_re, p_im, out):
    """out[r·T + t] = [Re | Im] of arot[r]·phase[t]: (R·T, 2F) float32, one pass.

    a_re, a_im: (R, F) float32 parts of arot;  p_re, p_im: (T, F) float32 parts of phase
    """
    n_shift, n_freq = p_re.shape
    for q in numba.prange(out.shape[0]):
        r = q // n_shift
        t = q % n_shift
        for f in range(n_freq):
            out[q, f] = a_re[r, f] * p_re[t, f] - a_im[r, f] * p_im[t, f]
            out[q, n_freq + f] = a_re[r, f] * p_im[t, f] + a_im[r, f] * p_re[t, f]


_scratch = threading.local()


def _buffer(name: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array of the calling thread, kept between calls: first-touching freshly
    mapped pages costs about as much as the arithmetic that fills them (1.8 ms for a 20 MB
    pose matrix, once per class and batch)."""
    size = math.prod(shape)
    held = getattr(_scratch, name, None)
    if held is None or held.size < size or held.dtype != dtype:
        held = np.empty(size, dtype)
        setattr(_scratch, name, held)
    return held[:size].reshape(shape)


#: classes share one matrix product while their cross products and their pose matrices
#: each fit in this many bytes (about the last-level cache)
GROUP_BYTES = 32 * 2 ** 20

_blas = threadpoolctl.ThreadpoolController()
_workers: dict[int, concurrent.futures.ThreadPoolExecutor] = {}


def score_classes(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log, n_top,
                  candidates=None):
    """Score every class at every pose and reduce (BLAS products, then a Numba reduction).

    p_stack: (N, 2F) float32, [Re P | Im P] with P = w·CTF·X/σ²
    ctf2: (N, F) float32, w·CTF²/σ²
    arot: (K, R, F) complex64, the classes at every rotation;  phase: (T, F) complex64
    candidates: (N, K) bool or None (all): class k is scored only for the particles where
    candidates[:, k]; the others get top_s and lse −inf, top_i −1, nsig 0, refine 0, ratio 1
    returns (top_s (N, K, P), top_i (N, K, P), lse (N, K), nsig (N, K), refine (N, K, 3),
    ratio (N, K)); pose q = r·T + t.

    Where every particle meets every class, classes go through one product in groups of up
    to GROUP_BYTES of cross products and of pose matrices, each product and reduction on
    every core.  Otherwise each class's products cover its own particles only, a few
    hundred, too few for two cores to share well: classes go to one worker thread per
    core instead, each with single-threaded BLAS and Numba.
    """
    n = p_stack.shape[0]
    k_count = arot.shape[0]
    out = unscored(n, k_count, n_top)
    phase_parts = tuple(np.ascontiguousarray(part, np.float32) for part in (phase.real, phase.imag))
    scalars = (np.float32(inv_temp), side, np.float32(sig_log))
    if candidates is None or candidates.all():
        rows = np.arange(n)
        group = max(1, GROUP_BYTES // (4 * arot.shape[1] * phase.shape[0]
                                       * max(n, 2 * arot.shape[2])))
        for k0 in range(0, k_count, group):
            _score_group(p_stack, ctf2, arot[k0:k0 + group], phase_parts, alpha, rows, k0,
                         scalars, out)
        return out
    rows_of = [np.flatnonzero(candidates[:, k]) for k in range(k_count)]
    order = sorted((k for k in range(k_count) if rows_of[k].size),
                   key=lambda k: -rows_of[k].size)            # the largest first

    def one_class(k):
        numba.set_num_threads(1)            # for this worker thread only
        rows = rows_of[k]
        _score_group(p_stack[rows], ctf2[rows], arot[k:k + 1], phase_parts, alpha[rows], rows,
                     k, scalars, out)

    n_workers = numba.get_num_threads()
    pool = _workers.get(n_workers)
    if pool is None:
        pool = _workers[n_workers] = concurrent.futures.ThreadPoolExecutor(n_workers)
    with _blas.limit(limits=1, user_api="blas"):
        list(pool.map(one_class, order))          # list(): raises what a worker raised
    return out


def _score_group(p_stack, ctf2, arot, phase_parts, alpha, rows, k0, scalars, out):
    """Score classes k0… (``arot``, (G, R, F)) for particles ``rows`` of ``out``, whose
    data ``p_stack``, ``ctf2``, ``alpha`` hold, in one matrix product.  phase_parts: the
    real and imaginary parts of phase, (T, F) float32 each."""
    n = p_stack.shape[0]
    n_group, n_rot, n_freq = arot.shape
    p_re, p_im = phase_parts
    n_pose = n_rot * p_re.shape[0]
    a = arot.reshape(-1, n_freq)
    a_re, a_im = (np.ascontiguousarray(part, np.float32) for part in (a.real, a.imag))
    m_stack = _buffer("poses", (n_group * n_pose, 2 * n_freq), np.float32)
    _pose_matrix(a_re, a_im, p_re, p_im, m_stack)
    cross = np.matmul(p_stack, m_stack.T, out=_buffer("cross", (n, n_group * n_pose), np.float32))
    norm = np.ascontiguousarray(ctf2 @ (a_re ** 2 + a_im ** 2).T)
    _reduce_kernel(cross.reshape(n, n_group, n_pose), norm.reshape(n, n_group, n_rot), alpha,
                   *scalars, rows, k0, *out)


def rotate_references(grids, fx, fy, psi, pad):
    """Every class at every rotation: (K, R, F) complex64, out[k, r, f] = A_k(R(−ψ_r) f)."""
    out = np.empty((grids.shape[0], psi.shape[0], fx.shape[0]), np.complex64)
    _rotate_kernel(grids, fx, fy, psi, pad, out)
    return out


class InsertionSums:
    """Class sums of one pass, filled batch by batch and read once.

        >>> sums = InsertionSums(n_sums, size)            # K sums of G × G nodes, zero
        >>> sums.insert(offsets, rows, psi, tx, ty, weight, x, ctf, alpha,
        ...             inv_sigma2, fx, fy, wf, pad, box)  # once per batch
        >>> num, den = sums.collect()                      # once, at the end of the pass

    ``insert`` adds each entry at R(−ψ) f (bilinear) and at its Hermitian mirror:
    num: (K, G, G) complex128 += w·α·CTF·X·exp(+2πi f·t/d)/σ²;  den: (K, G, G) float64
    += w·α²·CTF²/σ².  Its arguments are those of ``_backproject_kernel`` without num/den:
    offsets (K+1,) entry ranges per sum (entries sorted by sum);  rows, psi, tx, ty,
    weight (E,);  x (N, F) complex64;  ctf (N, F) float32;  alpha (N,);  inv_sigma2, fx,
    fy, wf (F,) float32;  pad: G/d;  box: d px.  ``collect`` returns (num, den) and ends
    the accumulator.

    Here the sums are host arrays, zeroed once, into which the kernel inserts the
    half-plane frequencies, dealing sums to threads one at a time (their entry counts
    differ widely); the mirrors are added once, by ``collect`` (insertion is linear: the
    mirror of the sum is the sum of the mirrors).
    """

    def __init__(self, n_sums: int, size: int):
        self._num = np.zeros((n_sums, size, size), np.complex128)
        self._den = np.zeros((n_sums, size, size), np.float64)

    def insert(self, offsets, rows, psi, tx, ty, weight,
               x, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box):
        """Insert one batch's entries (see the class doc)."""
        with numba.parallel_chunksize(1):
            _backproject_kernel(self._num, self._den, offsets, rows, psi, tx, ty, weight,
                                x, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box)

    def collect(self) -> tuple[np.ndarray, np.ndarray]:
        """(num (K, G, G) complex128, den (K, G, G) float64): every node's value also at
        its mirror, node j ↔ G − j (row and column 0 have none on the grid)."""
        num, den = self._num, self._den
        self._num = self._den = None
        num[:, 1:, 1:] += np.conj(num[:, :0:-1, :0:-1])
        den[:, 1:, 1:] += den[:, :0:-1, :0:-1].copy()
        return num, den


def noise_residuals(grids, classes, rows, psi, tx, ty, weight,
                    x, ctf, alpha, fx, fy, wf, shell, pad, box, n_shells):
    """(E, S) float64: per entry and shell, Σ w·|X − model|² (see ``_noise_kernel``)."""
    out = np.empty((rows.shape[0], n_shells), np.float64)
    _noise_kernel(grids, classes, rows, psi, tx, ty, weight,
                  x, ctf, alpha, fx, fy, wf, shell, pad, box, out)
    return out
