"""Random inputs shared by the CPU and CUDA kernel tests."""

import numpy as np

from class2d.em.grids import FrequencySet


def random_complex(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def random_entries(rng, n_class, n_entry, n_particles):
    """Entries sorted by class (class 1 left empty) with their offsets."""
    classes = np.sort(rng.choice([k for k in range(n_class) if k != 1], n_entry))
    offsets = np.searchsorted(classes, np.arange(n_class + 1)).astype(np.int64)
    rows = rng.integers(0, n_particles, n_entry).astype(np.int64)
    poses = [rng.uniform(0, 2 * np.pi, n_entry), rng.uniform(-2, 2, n_entry),
             rng.uniform(-2, 2, n_entry), rng.uniform(0.1, 1.0, n_entry)]
    return classes, offsets, rows, [a.astype(np.float32) for a in poses]


def random_particles(rng, n, n_freq):
    """(spectra (n, F) complex64, ctf (n, F) float32, alpha (n,) float32)."""
    return (random_complex(rng, (n, n_freq)),
            rng.uniform(-1, 1, (n, n_freq)).astype(np.float32),
            rng.uniform(0.5, 1.5, n).astype(np.float32))


def backproject(backend, num, den, *args):
    """Add one batch's insertion (``args``: of ``InsertionSums.insert``) to ``num`` (K, G, G)
    complex128 and ``den`` (K, G, G) float64, through ``backend.InsertionSums``."""
    sums = backend.InsertionSums(num.shape[0], num.shape[1])
    sums.insert(*args)
    got_num, got_den = sums.collect()
    num += got_num
    den += got_den


def backproject_inputs(rng):
    """(num, den, args, freqs) for ``backproject(backend, num, den, *args)``: 4 classes of
    20² nodes (class 1 empty), 9 entries of 5 particles, frequencies to Nyquist of a 10-px
    box, so that footprints reach the grid's edge."""
    freqs = FrequencySet.within(10, 5.0)
    _, offsets, rows, (psi, tx, ty, weight) = random_entries(rng, 4, 9, 5)
    x, ctf, alpha = random_particles(rng, 5, freqs.size)
    inv_sigma2 = rng.uniform(0.5, 2.0, freqs.size).astype(np.float32)
    num = random_complex(rng, (4, 20, 20)).astype(np.complex128)
    den = rng.uniform(0, 1, (4, 20, 20))
    args = (offsets, rows, psi, tx, ty, weight, x, ctf, alpha, inv_sigma2,
            freqs.fx, freqs.fy, freqs.wf, 2, freqs.box)
    return num, den, args, freqs


def realistic_scoring(rng, n=8, n_class=3, n_rot=4, side=3, r_max=25.0, step=0.05):
    """Inputs of ``score_classes`` at a realistic scale: ~10³ frequencies (a 64-px box to
    radius r_max: 980 at 25), particles = α·CTF·(class at a pose) + unit complex noise,
    σ² = 1 and signal variance 10 per coefficient, so that best scores are ~10³–10⁴ and
    float32 sums round in the 4th–5th digit.  Classes 0 and 1 differ by a little, and
    shifts by ``step`` px, so that class and pose posteriors are soft; class 2 is unrelated.

    Returns (p_stack, ctf2, arot, phase, alpha, truth) with truth (n, 2) = (class, pose).
    """
    freqs = FrequencySet.within(64, r_max)
    n_freq, n_shift = freqs.size, side * side
    base = random_complex(rng, (n_rot, n_freq)) * np.float32(np.sqrt(5.0))
    arot = np.stack([base, base + 0.02 * random_complex(rng, (n_rot, n_freq)),
                     random_complex(rng, (n_rot, n_freq)) * np.float32(np.sqrt(5.0))])
    arot = arot[:n_class].astype(np.complex64)
    shifts = (np.stack(np.divmod(np.arange(n_shift), side), 1)[:, ::-1] - (side - 1) / 2)
    phase = freqs.phases(shifts.astype(np.float32) * step)
    ctf = rng.uniform(-1, 1, (n, n_freq)).astype(np.float32)
    alpha = rng.uniform(0.8, 1.2, n).astype(np.float32)
    truth = np.column_stack([rng.integers(0, n_class, n), rng.integers(0, n_rot * n_shift, n)])
    x = random_complex(rng, (n, n_freq))
    for i, (k, q) in enumerate(truth):
        x[i] += alpha[i] * ctf[i] * arot[k, q // n_shift] * phase[q % n_shift]
    w = freqs.wf                                    # σ² = 1
    g = ctf * w
    p_stack = np.concatenate([g * x.real, g * x.imag], axis=1).astype(np.float32)
    return p_stack, (g * ctf).astype(np.float32), arot, phase, alpha, truth


def oracle_posteriors(p_stack, ctf2, arot, phase, alpha, inv_temp):
    """Float64 posteriors from every pose's score, as the E-step forms them from
    ``score_classes``: classes by their best pose (force max) and marginalised over poses,
    and each class's poses.  Returns (by_max (N, K), marginal (N, K), poses (N, K, R·T))."""
    n_freq = arot.shape[2]
    p = p_stack[:, :n_freq].astype(np.float64) + 1j * p_stack[:, n_freq:]
    a = alpha.astype(np.float64)[:, None]
    scores = []
    for arot_k in arot.astype(np.complex128):
        poses = (arot_k[:, None, :] * phase[None].astype(np.complex128)).reshape(-1, n_freq)
        cross = np.real(np.conj(p) @ poses.T)
        norm = ctf2.astype(np.float64) @ (np.abs(arot_k) ** 2).T
        scores.append((2 * a * cross - a * a * np.repeat(norm, phase.shape[0], axis=1))
                      * inv_temp)
    scores = np.stack(scores, axis=1)                                 # (N, K, R·T)
    best = scores.max(axis=2)
    lse = best + np.log(np.exp(scores - best[..., None]).sum(axis=2))

    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return softmax(best), softmax(lse), np.exp(scores - lse[..., None])


def kernel_posteriors(out):
    """The same three from ``score_classes`` outputs (top poses only: (N, K, P) poses,
    with the pose indices ``out[1]``)."""
    top_s, lse = (np.asarray(out[j], np.float64) for j in (0, 2))

    def softmax(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return softmax(top_s[:, :, 0]), softmax(lse), np.exp(top_s - lse[..., None])
