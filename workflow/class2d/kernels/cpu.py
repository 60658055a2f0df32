"""CPU kernels (NumPy BLAS + Numba): the reference implementation every backend matches.

    >>> arot = rotate_references(grids, fx, fy, psi, pad)          # (K, R, F) complex64
    >>> top_s, top_i, lse, nsig, refine, ratio = score_class(p_stack, ctf2, arot[k], phase,
    ...                                                       alpha, 1.0, side, 6.9, 8)

The public functions (no leading underscore) are the backend interface: every one has a twin of the same signature in ``class2d.kernels.cuda``; the
shapes and meanings are documented once, here.  Scalar maths lives in ``scalar.py``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from class2d.kernels import scalar

_sample = numba.njit(inline="always", cache=True)(scalar.sample_bilinear)
_coords = numba.njit(inline="always", cache=True)(scalar.reference_coords)
_phase = numba.njit(inline="always", cache=True)(scalar.phase_angle)
_parabola = numba.njit(inline="always", cache=True)(scalar.parabola_offset)
_corner = numba.njit(inline="always", cache=True)(scalar.splat_corner)

#: poses scoring this far below the best add < e⁻⁴⁰ to the sum and are skipped
NEGLIGIBLE = 40.0


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
def _exp_negative(x):
    """e^x for x ≤ 0 (x below −NEGLIGIBLE counts as −NEGLIGIBLE), relative error ~1e-8:
    (Taylor series at x/128, degree 8)^128.  Plain arithmetic, so a loop over it vectorizes,
    which a call to ``math.exp`` does not."""
    z = max(x, -NEGLIGIBLE) * (1.0 / 128.0)
    p = 1.0 + z * (1.0 + z * (1.0 / 2 + z * (1.0 / 6 + z * (1.0 / 24 + z * (
        1.0 / 120 + z * (1.0 / 720 + z * (1.0 / 5040 + z * (1.0 / 40320))))))))
    for _ in range(7):
        p = p * p
    return p


@numba.njit(inline="always", cache=True)
def _score(cross_row, norm_row, q, n_shift, a, inv_temp):
    return (2.0 * a * cross_row[q] - a * a * norm_row[q // n_shift]) * inv_temp


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _reduce_kernel(cross, norm, alpha, inv_temp, side, sig_log,
                  top_s, top_i, lse, nsig, refine, ratio):
    """Reduce one class's scores over poses, per particle, without keeping them.

    Score of pose q = r·T + t (T = side², t = iy·side + ix):
    s = (2α·cross[q] − α²·norm[r]) · inv_temp.
    cross: (N, R·T) float32, Σ_f Re(conj(P) M);  norm: (N, R) float32
    alpha: (N,) float32 per-particle scale;  inv_temp: 1/τ
    side: shifts per axis;  sig_log: a pose is significant within sig_log of the best
    outputs — top_s, top_i: (N, P) best scores and pose indices, best first;
    lse: (N,) log Σ exp(s);  nsig: (N,) significant poses;
    refine: (N, 3) sub-step offsets (rotation, x, y) of the best pose from parabolas;
    ratio: (N,) cross/norm at the best pose (the least-squares scale there)
    """
    n, n_pose = cross.shape
    n_shift = side * side
    n_rot = n_pose // n_shift
    n_top = top_s.shape[1]
    for i in numba.prange(n):
        a = alpha[i]
        for j in range(n_top):
            top_s[i, j] = -np.inf
            top_i[i, j] = -1
        floor = -np.inf          # the n_top-th best so far, kept in a register
        for r in range(n_rot):
            norm_term = a * a * norm[i, r]
            for q in range(r * n_shift, (r + 1) * n_shift):
                s = (2.0 * a * cross[i, q] - norm_term) * inv_temp
                if s > floor:
                    j = n_top - 1
                    while j > 0 and top_s[i, j - 1] < s:
                        top_s[i, j] = top_s[i, j - 1]
                        top_i[i, j] = top_i[i, j - 1]
                        j -= 1
                    top_s[i, j] = s
                    top_i[i, j] = q
                    floor = top_s[i, n_top - 1]
        best = top_s[i, 0]
        c1 = 2.0 * a * inv_temp
        total = 0.0
        count = 0
        for r in range(n_rot):          # branch-free, so the inner loop runs in SIMD lanes
            base = a * a * norm[i, r] * inv_temp + best
            for q in range(r * n_shift, (r + 1) * n_shift):
                x = c1 * cross[i, q] - base
                total += _exp_negative(x)
                count += x > -sig_log
        lse[i] = best + math.log(total)
        nsig[i] = count
        qb = top_i[i, 0]
        r = qb // n_shift
        t = qb % n_shift
        iy = t // side
        ix = t % side
        refine[i, 0] = 0.0
        refine[i, 1] = 0.0
        refine[i, 2] = 0.0
        if n_rot >= 3:
            left = ((r + n_rot - 1) % n_rot) * n_shift + t
            right = ((r + 1) % n_rot) * n_shift + t
            refine[i, 0] = _parabola(_score(cross[i], norm[i], left, n_shift, a, inv_temp), best,
                                     _score(cross[i], norm[i], right, n_shift, a, inv_temp))
        if 0 < ix < side - 1:
            refine[i, 1] = _parabola(_score(cross[i], norm[i], qb - 1, n_shift, a, inv_temp), best,
                                     _score(cross[i], norm[i], qb + 1, n_shift, a, inv_temp))
        if 0 < iy < side - 1:
            refine[i, 2] = _parabola(
                _score(cross[i], norm[i], qb - side, n_shift, a, inv_temp), best,
                _score(cross[i], norm[i], qb + side, n_shift, a, inv_temp))
        nb = norm[i, r]
        ratio[i] = cross[i, qb] / nb if nb > 0 else 1.0


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
    (``backproject`` adds those to the sums afterwards, node by node).

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


@numba.njit(parallel=True, fastmath=True, cache=True)
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


_scratch: dict[str, np.ndarray] = {}


def _buffer(name: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array kept between calls: touching freshly mapped pages costs more than
    the arithmetic that fills them (40 ms for the 20 MB pose matrix, ~1 ms to compute)."""
    size = math.prod(shape)
    held = _scratch.get(name)
    if held is None or held.size < size or held.dtype != dtype:
        held = _scratch[name] = np.empty(size, dtype)
    return held[:size].reshape(shape)


def score_class(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log, n_top):
    """Score one class at every pose and reduce (BLAS products, then a Numba reduction).

    p_stack: (N, 2F) float32, [Re P | Im P] with P = w·CTF·X/σ²
    ctf2: (N, F) float32, w·CTF²/σ²
    arot: (R, F) complex64, the class at every rotation;  phase: (T, F) complex64
    returns (top_s (N, P), top_i (N, P), lse (N,), nsig (N,), refine (N, 3), ratio (N,))
    """
    n = p_stack.shape[0]
    n_rot, n_freq = arot.shape
    n_pose = n_rot * phase.shape[0]
    m_stack = _buffer("poses", (n_pose, 2 * n_freq), np.float32)
    parts = [np.ascontiguousarray(a, np.float32) for a in (arot.real, arot.imag, phase.real,
                                                           phase.imag)]
    _pose_matrix(*parts, m_stack)
    cross = np.matmul(p_stack, m_stack.T, out=_buffer("cross", (n, n_pose), np.float32))
    norm = ctf2 @ (parts[0] ** 2 + parts[1] ** 2).T
    out = (np.empty((n, n_top), np.float32), np.empty((n, n_top), np.int64),
           np.empty(n, np.float32), np.empty(n, np.int32), np.empty((n, 3), np.float32),
           np.empty(n, np.float32))
    _reduce_kernel(cross, np.ascontiguousarray(norm), alpha, np.float32(inv_temp), side,
                  np.float32(sig_log), *out)
    return out


def rotate_references(grids, fx, fy, psi, pad):
    """Every class at every rotation: (K, R, F) complex64, out[k, r, f] = A_k(R(−ψ_r) f)."""
    out = np.empty((grids.shape[0], psi.shape[0], fx.shape[0]), np.complex64)
    _rotate_kernel(grids, fx, fy, psi, pad, out)
    return out


def backproject(num, den, offsets, rows, psi, tx, ty, weight,
                x, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box):
    """Insert entries into ``num`` and ``den`` in place, each node's value also at its
    Hermitian mirror (node j ↔ G − j; row and column 0 have none on the grid).

    The kernel inserts half-plane frequencies only, dealing classes to threads one at a
    time (their entry counts differ widely); the mirrors are added here, in one pass."""
    half_num = _buffer("num", num.shape, np.complex128)
    half_den = _buffer("den", den.shape, np.float64)
    half_num.fill(0)
    half_den.fill(0)
    with numba.parallel_chunksize(1):
        _backproject_kernel(half_num, half_den, offsets, rows, psi, tx, ty, weight,
                            x, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box)
    num += half_num
    den += half_den
    num[:, 1:, 1:] += np.conj(half_num[:, :0:-1, :0:-1])
    den[:, 1:, 1:] += half_den[:, :0:-1, :0:-1]


def noise_residuals(grids, classes, rows, psi, tx, ty, weight,
                    x, ctf, alpha, fx, fy, wf, shell, pad, box, n_shells):
    """(E, S) float64: per entry and shell, Σ w·|X − model|² (see ``_noise_kernel``)."""
    out = np.empty((rows.shape[0], n_shells), np.float64)
    _noise_kernel(grids, classes, rows, psi, tx, ty, weight,
                  x, ctf, alpha, fx, fy, wf, shell, pad, box, out)
    return out
