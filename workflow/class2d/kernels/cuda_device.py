"""What every CUDA kernel module shares: the scalar maths of ``scalar.py`` compiled for the
device, launch shapes, and the device-memory budget that decides chunk sizes.

    >>> y, x = coords(fx, fy, cos_psi, sin_psi, pad, center)    # inside a kernel
    >>> step = chunk_size(n, fixed_bytes, bytes_per_particle, "particle")
    >>> kernel[blocks(n_items), THREADS](...)                    # grid-stride kernels

The same functions are compiled with ``numba.njit`` in ``cpu.py``, so both backends rotate,
interpolate and shift identically.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numba import cuda

from class2d.kernels import scalar

logger = logging.getLogger(__name__)

sample = cuda.jit(device=True)(scalar.sample_bilinear)
coords = cuda.jit(device=True)(scalar.reference_coords)
phase_angle = cuda.jit(device=True)(scalar.phase_angle)
parabola = cuda.jit(device=True)(scalar.parabola_offset)
corner = cuda.jit(device=True)(scalar.splat_corner)
insert_best = cuda.jit(device=True)(scalar.insert_best)

#: threads per block of the grid-stride kernels (rotation, insertion, residuals, norms)
THREADS = 256
#: at most this many blocks per grid-stride launch; each thread loops over the rest
MAX_BLOCKS = 8192
#: share of the free device memory that one call may fill
MEMORY_FRACTION = 0.8


def free_bytes() -> int:
    """Free device memory in bytes (the simulator reports infinity: a large number then)."""
    free, _total = cuda.current_context().get_memory_info()
    return int(free) if math.isfinite(free) else 1 << 60


def chunk_size(count: int, fixed_bytes: int, item_bytes: int, what: str) -> int:
    """How many items (particles, classes, entries) one pass may hold on the device.

    fixed_bytes: memory needed whatever the chunk;  item_bytes: memory per item.
    Raises MemoryError when not even one item fits.
    """
    budget = int(free_bytes() * MEMORY_FRACTION) - fixed_bytes
    if budget < item_bytes:
        raise MemoryError(f"the GPU has too little free memory for one {what}: "
                          f"{fixed_bytes + item_bytes} bytes needed, "
                          f"{int(free_bytes() * MEMORY_FRACTION)} usable")
    step = int(max(1, min(count, budget // item_bytes)))
    if step < count:
        logger.debug("GPU memory: %d %ss per chunk of %d", step, what, count)
    return step


def blocks(n_items: int, threads: int | None = None) -> int:
    """Blocks for a grid-stride launch over ``n_items`` (at least 1, at most MAX_BLOCKS)."""
    threads = THREADS if threads is None else threads
    return int(max(1, min(MAX_BLOCKS, -(-n_items // threads))))


def upload(array: np.ndarray, dtype) -> object:
    """A C-contiguous device copy of ``array`` as ``dtype``."""
    return cuda.to_device(np.ascontiguousarray(array, dtype))
