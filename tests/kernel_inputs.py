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


def backproject_inputs(rng):
    """(num, den, args, freqs) for ``backproject(num, den, *args)``: 4 classes of 20² nodes
    (class 1 empty), 9 entries of 5 particles, frequencies to Nyquist of a 10-px box, so
    that footprints reach the grid's edge."""
    freqs = FrequencySet.within(10, 5.0)
    _, offsets, rows, (psi, tx, ty, weight) = random_entries(rng, 4, 9, 5)
    x, ctf, alpha = random_particles(rng, 5, freqs.size)
    inv_sigma2 = rng.uniform(0.5, 2.0, freqs.size).astype(np.float32)
    num = random_complex(rng, (4, 20, 20)).astype(np.complex128)
    den = rng.uniform(0, 1, (4, 20, 20))
    args = (offsets, rows, psi, tx, ty, weight, x, ctf, alpha, inv_sigma2,
            freqs.fx, freqs.fy, freqs.wf, 2, freqs.box)
    return num, den, args, freqs
