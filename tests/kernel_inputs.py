"""Random inputs shared by the CPU and CUDA kernel tests."""

import numpy as np


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
