"""Element-wise CUDA kernels: rotated references, back-insertion, noise residuals.

    >>> arot = rotate_references(grids, fx, fy, psi, pad)                 # (K, R, F) complex64
    >>> sums = InsertionSums(n_sums, size)               # a pass's class sums, on the card
    >>> sums.insert(offsets, rows, psi, tx, ty, weight, x, ctf, alpha,
    ...             inv_sigma2, fx, fy, wf, pad, box)                     # once per batch
    >>> num, den = sums.collect()                                         # once per pass
    >>> resid = noise_residuals(grids, classes, rows, psi, tx, ty, weight, x, ctf, alpha,
    ...                         fx, fy, wf, shell, pad, box, n_shells)    # (E, S) float64

One thread per (class, rotation, frequency) or (entry, frequency), grid-stride; the sums of
the CPU twins become float64 atomic adds (their only float64 arithmetic: the per-item
values are float32).  Shapes and meanings are those of
``class2d.kernels.cpu``; the launch shape is ``cuda_device.THREADS`` / ``MAX_BLOCKS``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import complex64, cuda, float32, float64

from class2d.kernels import cuda_device as dev, cuda_resident
from class2d.kernels.cuda_device import coords, corner, phase_angle, sample


@cuda.jit(device=True)
def _unit(angle):
    """exp(i·angle) as complex64 (``complex()`` of two float32 would be complex128)."""
    return complex64(math.cos(angle)) + complex64(1j) * complex64(math.sin(angle))


@cuda.jit
def _rotate_kernel(grids, fx, fy, psi, pad, out):
    """out[k, r, f] = A_k(R(−ψ_r) f).  grids: (K, G, G) complex64;  out: (K, R, F) complex64."""
    n_class, n_rot, n_freq = out.shape
    center = grids.shape[1] // 2
    for item in range(cuda.grid(1), n_class * n_rot * n_freq, cuda.gridsize(1)):
        f = item % n_freq
        r = (item // n_freq) % n_rot
        k = item // (n_freq * n_rot)
        y, x = coords(fx[f], fy[f], math.cos(psi[r]), math.sin(psi[r]), pad, center)
        out[k, r, f] = sample(grids[k], y, x)


@cuda.jit
def _backproject_kernel(num, den, entry_class, rows, psi, tx, ty, weight,
                        spectra, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box):
    """Atomic bilinear insertion of (entry, frequency) pairs; every node's value also at its
    Hermitian mirror, node j ↔ G − j (as ``cpu.InsertionSums``).

    num: (K, G, 2G) float64, the complex128 sums viewed as [re, im] pairs;  den: (K, G, G)
    entry_class: (E,) class of each entry in num/den;  rows: (E,) row in spectra/ctf/alpha
    """
    size = den.shape[1]
    center = size // 2
    n_freq = fx.shape[0]
    for item in range(cuda.grid(1), rows.shape[0] * n_freq, cuda.gridsize(1)):
        e = item // n_freq
        f = item % n_freq
        k = entry_class[e]
        i = rows[e]
        a = alpha[i]
        g = weight[e] * wf[f] * ctf[i, f] * inv_sigma2[f]
        ang = -phase_angle(fx[f], fy[f], tx[e], ty[e], box)
        val = g * a * spectra[i, f] * _unit(ang)
        wden = g * a * a * ctf[i, f]
        y, x = coords(fx[f], fy[f], math.cos(psi[e]), math.sin(psi[e]), pad, center)
        y0, x0, dy, dx = corner(y, x, size)
        if y0 < 0:
            continue
        one = float32(1.0)
        for oy in range(2):
            wy = dy if oy else one - dy
            for ox in range(2):
                wxy = wy * (dx if ox else one - dx)
                ny = y0 + oy
                nx = x0 + ox
                for mirror in range(2):
                    if mirror == 1:          # node j's Hermitian mirror is G − j (none for 0)
                        if ny == 0 or nx == 0:
                            break
                        ny = size - ny
                        nx = size - nx
                    im = wxy * val.imag if mirror == 0 else -wxy * val.imag
                    cuda.atomic.add(num, (k, ny, 2 * nx), float64(wxy * val.real))
                    cuda.atomic.add(num, (k, ny, 2 * nx + 1), float64(im))
                    cuda.atomic.add(den, (k, ny, nx), float64(wxy * wden))


@cuda.jit
def _noise_kernel(grids, classes, rows, psi, tx, ty, weight,
                  spectra, ctf, alpha, fx, fy, wf, shell, pad, box, out):
    """out[e, shell[f]] += w·wf·|X − α·CTF·A(R(−ψ)f)·exp(−2πi f·t/d)|² (atomic, float64)."""
    center = grids.shape[1] // 2
    n_freq = fx.shape[0]
    for item in range(cuda.grid(1), rows.shape[0] * n_freq, cuda.gridsize(1)):
        e = item // n_freq
        f = item % n_freq
        i = rows[e]
        y, x = coords(fx[f], fy[f], math.cos(psi[e]), math.sin(psi[e]), pad, center)
        ang = phase_angle(fx[f], fy[f], tx[e], ty[e], box)
        model = alpha[i] * ctf[i, f] * sample(grids[classes[e]], y, x) * _unit(ang)
        diff = spectra[i, f] - model
        cuda.atomic.add(out, (e, shell[f]), float64(
            weight[e] * wf[f] * (diff.real * diff.real + diff.imag * diff.imag)))


def rotate_references(grids, fx, fy, psi, pad):
    """Every class at every rotation: (K, R, F) complex64 (see ``cpu.rotate_references``).

    Where the classes fit on the card at once, the grids and their rotations stay there
    (``cuda_resident``): the same grids object at the same frequencies and angles returns
    the same read-only array, without work.  Otherwise classes are rotated in chunks.
    """
    n_class, size = grids.shape[0], grids.shape[1]
    n_rot, n_freq = psi.shape[0], fx.shape[0]
    hit = cuda_resident.find_rotations(grids, fx, fy, psi, pad)
    if hit is not None:
        return hit.host
    if n_class * n_rot * n_freq == 0:
        return np.empty((n_class, n_rot, n_freq), np.complex64)
    freq = tuple(dev.to_device(name, a, np.float32) for name, a in
                 (("rot_fx", fx), ("rot_fy", fy), ("rot_psi", psi)))
    step = dev.chunk_size(n_class, 8 * n_freq + 4 * n_rot,
                          8 * (size * size + n_rot * n_freq) + 4 * n_rot * n_freq, "class")
    stream = dev.stream()
    if step == n_class and cuda_resident.keeps(grids):
        d_out = cuda.device_array((n_class, n_rot, n_freq), np.complex64)
        _rotate_kernel[dev.blocks(d_out.size), dev.THREADS, stream](
            cuda_resident.device_grids(grids), *freq, int(pad), d_out)
        return cuda_resident.add_rotations(grids, fx, fy, psi, pad, d_out)
    out = np.empty((n_class, n_rot, n_freq), np.complex64)
    for k0 in range(0, n_class, step):
        k1 = min(n_class, k0 + step)
        d_out = dev.buffer("rotations", (k1 - k0, n_rot, n_freq), np.complex64)
        _rotate_kernel[dev.blocks(d_out.size), dev.THREADS, stream](
            dev.to_device("grids", grids[k0:k1], np.complex64), *freq, int(pad), d_out)
        host = dev.to_host("rotations", d_out)
        dev.sync()
        out[k0:k1] = host
    return out


def _entry_arrays(rows, psi, tx, ty, weight):
    return (np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(psi, np.float32),
            np.ascontiguousarray(tx, np.float32), np.ascontiguousarray(ty, np.float32),
            np.ascontiguousarray(weight, np.float32))


def _particle_data(prefix, rows, spectra, ctf, alpha):
    """Device copies (pooled buffers ``prefix``…) of the particle rows that ``rows`` use, and
    ``rows`` renumbered to them."""
    used, local = np.unique(rows, return_inverse=True)
    return (dev.to_device(prefix + "local", local, np.int64),
            dev.to_device(prefix + "x", spectra[used], np.complex64),
            dev.to_device(prefix + "ctf", ctf[used], np.float32),
            dev.to_device(prefix + "alpha", alpha[used], np.float32))


def _entries(prefix, *arrays):
    """Pooled device copies of entry arrays (classes/rows int64, then float32 poses)."""
    return tuple(dev.to_device(f"{prefix}entry{j}", a, a.dtype) for j, a in enumerate(arrays))


#: the class sums stay on the card through a pass where they need at most this share of the
#: memory a call may use (cuda_device.MEMORY_FRACTION of the free memory): the rest is
#: left to the pass's scoring and insertion chunks
RESIDENT_SHARE = 0.5


@cuda.jit
def _zero_kernel(words):
    """words[:] = 0.  words: (n,) uint64, a float64 array's bits (0.0 is all zero bits)."""
    for i in range(cuda.grid(1), words.shape[0], cuda.gridsize(1)):
        words[i] = 0


class InsertionSums:
    """A pass's class sums, batch by batch (the interface and shapes: ``cpu.InsertionSums``).

    Where the sums (24 bytes a node: complex128 num, float64 den) need at most
    RESIDENT_SHARE of the memory a call may use, they are float64 arrays on the card,
    zeroed there once; every ``insert`` adds into them (float64 atomics, Hermitian mirrors
    included) in pieces of entries whose particle rows fit beside them, and ``collect``
    downloads them once: 24 bytes a node per pass to the host, none to the card.
    Otherwise (a card too small for them) they are host arrays, and each ``insert`` runs in
    chunks of classes that fit, each chunk's sums going to the card and back: 24 bytes a
    node each way per batch.
    """

    def __init__(self, n_sums: int, size: int):
        self.shape = (int(n_sums), int(size), int(size))
        n_bytes = 24 * math.prod(self.shape)
        self.resident = n_bytes <= RESIDENT_SHARE * dev.MEMORY_FRACTION * dev.free_bytes()
        if not self.resident:
            self._num = np.zeros(self.shape, np.complex128)
            self._den = np.zeros(self.shape, np.float64)
            return
        self._num = dev.allocate((n_sums, size, 2 * size), np.float64)  # [re, im] pairs
        self._den = dev.allocate(self.shape, np.float64)
        for part in (self._num, self._den):
            words = part.reshape(part.size).view(np.uint64)
            _zero_kernel[dev.blocks(words.size), dev.THREADS, dev.stream()](words)

    def insert(self, offsets, rows, psi, tx, ty, weight,
               x, ctf, alpha, inv_sigma2, fx, fy, wf, pad, box):
        """Insert one batch's entries (see ``cpu.InsertionSums``)."""
        n_class, size = self.shape[:2]
        n_freq = fx.shape[0]
        entries = _entry_arrays(rows, psi, tx, ty, weight)
        offsets = np.asarray(offsets, np.int64)
        freq = tuple(dev.to_device(f"bp_freq{j}", a, np.float32)
                     for j, a in enumerate((inv_sigma2, fx, fy, wf)))
        particles = (x, ctf, alpha, freq, int(pad), int(box))
        if self.resident:
            entry_class = np.repeat(np.arange(n_class), np.diff(offsets))
            _insert_pieces(self._num, self._den, entry_class, int(offsets[0]), entries,
                           particles)
            dev.sync()
            return
        classes = dev.chunk_size(n_class, 16 * n_freq + _entry_bytes(n_freq), 24 * size * size,
                                 "class")
        for k0 in range(0, n_class, classes):
            k1 = min(n_class, k0 + classes)
            if offsets[k1] <= offsets[k0]:
                continue
            part_num = self._num[k0:k1]
            d_num = dev.to_device("bp_num", part_num.view(np.float64), np.float64)
            d_den = dev.to_device("bp_den", self._den[k0:k1], np.float64)
            entry_class = np.repeat(np.arange(k1 - k0), np.diff(offsets[k0:k1 + 1]))
            _insert_pieces(d_num, d_den, entry_class, int(offsets[k0]), entries, particles)
            host_num, host_den = dev.to_host("bp_num", d_num), dev.to_host("bp_den", d_den)
            dev.sync()
            part_num[...] = host_num.view(np.complex128)
            self._den[k0:k1] = host_den

    def collect(self) -> tuple[np.ndarray, np.ndarray]:
        """(num (K, G, G) complex128, den (K, G, G) float64), downloaded once where they
        are on the card; ends the accumulator."""
        num, den = self._num, self._den
        self._num = self._den = None
        if not self.resident:
            return num, den
        host_num = np.empty(self.shape, np.complex128)
        host_den = np.empty(self.shape, np.float64)
        num.copy_to_host(host_num.view(np.float64), stream=dev.stream())
        den.copy_to_host(host_den, stream=dev.stream())
        dev.sync()
        dev.count("to_host", "sums", host_num.nbytes + host_den.nbytes)
        return host_num, host_den


def _entry_bytes(n_freq: int) -> int:
    """Device bytes of one inserted entry: its arrays and its particle's row, at most."""
    return 60 + 12 * n_freq


def _insert_pieces(d_num, d_den, entry_class, e0, entries, particles):
    """Launch ``_backproject_kernel`` over entries e0 … e0 + len(entry_class) of
    ``entries`` (rows, psi, tx, ty, weight) into device sums d_num (K, G, 2G) and d_den
    (K, G, G), whose class indices ``entry_class`` gives, in pieces whose particle rows
    fit the device.  particles: (x, ctf, alpha, device (inv_sigma2, fx, fy, wf), pad, box)."""
    x, ctf, alpha, freq, pad, box = particles
    rows, psi, tx, ty, weight = entries
    n_freq = freq[1].shape[0]
    n_entry = entry_class.shape[0]
    step = dev.chunk_size(n_entry, 0, _entry_bytes(n_freq), "entry")    # the sums are there
    for a in range(e0, e0 + n_entry, step):
        b = min(e0 + n_entry, a + step)
        local, d_x, d_ctf, d_alpha = _particle_data("bp_", rows[a:b], x, ctf, alpha)
        d_class, d_psi, d_tx, d_ty, d_weight = _entries(
            "bp_", entry_class[a - e0:b - e0], psi[a:b], tx[a:b], ty[a:b], weight[a:b])
        _backproject_kernel[dev.blocks((b - a) * n_freq), dev.THREADS, dev.stream()](
            d_num, d_den, d_class, local, d_psi, d_tx, d_ty, d_weight, d_x, d_ctf, d_alpha,
            *freq, pad, box)


def noise_residuals(grids, classes, rows, psi, tx, ty, weight,
                    x, ctf, alpha, fx, fy, wf, shell, pad, box, n_shells):
    """(E, S) float64: per entry and shell, Σ w·|X − model|² (see ``cpu.noise_residuals``).

    The class grids stay on the device; entries go in chunks that fit beside them.
    """
    n_entry, n_freq = rows.shape[0], fx.shape[0]
    out = np.zeros((n_entry, n_shells), np.float64)
    if n_entry == 0 or n_freq == 0:
        return out
    rows, psi, tx, ty, weight = _entry_arrays(rows, psi, tx, ty, weight)
    classes = np.ascontiguousarray(classes, np.int64)
    d_grids = cuda_resident.device_grids(grids)
    freq = tuple(dev.to_device(f"nr_freq{j}", a, np.float32) for j, a in enumerate((fx, fy, wf)))
    freq += (dev.to_device("nr_shell", shell, np.int64),)
    step = dev.chunk_size(n_entry, 0, 8 * n_shells + 36 + 12 * n_freq, "entry")  # grids are there
    stream = dev.stream()
    for a in range(0, n_entry, step):
        b = min(n_entry, a + step)
        local, d_x, d_ctf, d_alpha = _particle_data("nr_", rows[a:b], x, ctf, alpha)
        entries = _entries("nr_", classes[a:b], psi[a:b], tx[a:b], ty[a:b], weight[a:b])
        d_out = dev.to_device("nr_out", out[a:b], np.float64)
        _noise_kernel[dev.blocks((b - a) * n_freq), dev.THREADS, stream](
            d_grids, entries[0], local, *entries[1:], d_x, d_ctf, d_alpha, *freq, int(pad),
            int(box), d_out)
        host = dev.to_host("nr_out", d_out)
        dev.sync()
        out[a:b] = host
    return out
