"""class2d: cryo-EM 2D classification.

    >>> from class2d import io
    >>> table = io.read_particles("particles.star")
    >>> table.n

Importing the package sets how idle worker threads wait, unless the user has set it:
Numba's OpenMP workers and OpenBLAS's workers both spin after each parallel call, and on a
machine with few cores each steals the other's CPU (measured on 2 cores: an E-step batch
of a late iteration took 1.3 s, 0.7 s with both told to sleep at once).  OpenBLAS reads its
variable when NumPy loads it, so entry points import class2d before NumPy: every script
of the workflow starts with an import from class2d.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # spin 2⁴ cycles, then sleep

__version__ = "0.1.0"
