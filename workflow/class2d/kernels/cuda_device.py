"""What every CUDA kernel module shares: the scalar maths of ``scalar.py`` compiled for the
device, launch shapes, the device-memory budget that decides chunk sizes, and the buffers
and stream that every call reuses.

    >>> y, x = coords(fx, fy, cos_psi, sin_psi, pad, center)    # inside a kernel
    >>> step = chunk_size(n, fixed_bytes, bytes_per_particle, "particle")
    >>> d_p = to_device("p_stack", p_stack, np.float32)         # pooled buffer, async copy
    >>> kernel[blocks(n_items), THREADS, stream()](...)          # grid-stride kernels
    >>> host = to_host("top_s", d_top_s); sync()

The same functions are compiled with ``numba.njit`` in ``cpu.py``, so both backends rotate,
interpolate and shift identically.

Buffers: a call asks for a device buffer by name (``buffer``) and gets a view of one held
between calls, grown (by half again) only when too small; host↔device copies go through
pinned staging buffers held the same way, asynchronously on one stream.  A staging buffer
with a copy in flight is refilled only after ``sync()`` (which ``to_device``/``to_host``
call themselves then), so no copy sees its buffer change; every public backend call
synchronizes before it returns.  ``TRANSFERS`` counts the bytes each way and
``TRANSFERS_BY_NAME`` the same by buffer (the benchmark prints both).
"""

from __future__ import annotations

import collections
import logging
import math
import os

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
#: bytes copied host → device and device → host since the process started (or was reset)
TRANSFERS = {"to_device": 0, "to_host": 0}
#: the same bytes by direction and buffer name: {("to_host", "sums"): bytes, …}
TRANSFERS_BY_NAME: collections.Counter = collections.Counter()
#: what a device that does not say (the simulator) is taken to allow per block
DEFAULT_LIMITS = {"MAX_THREADS_PER_BLOCK": 1024, "MAX_SHARED_MEMORY_PER_BLOCK": 48 * 1024}

_device_buffers: dict[str, object] = {}
_pinned_buffers: dict[str, np.ndarray] = {}
_streams: dict[int, object] = {}
#: staging buffers with a copy queued since the last ``sync()``
_in_flight: set[str] = set()


def simulated() -> bool:
    """True on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def device_limit(name: str) -> int:
    """A per-block limit of the current device (``MAX_THREADS_PER_BLOCK``,
    ``MAX_SHARED_MEMORY_PER_BLOCK``: static shared memory, bytes)."""
    device = cuda.current_context().device
    return int(getattr(device, name, DEFAULT_LIMITS[name]))


def stream() -> object:
    """The stream every launch and copy of this process goes on (one per context)."""
    key = id(cuda.current_context())
    if key not in _streams:
        _streams[key] = cuda.stream()
    return _streams[key]


def held_bytes() -> int:
    """Bytes of device memory the buffer pool holds (reusable by the next call)."""
    return sum(int(b.nbytes) for b in _device_buffers.values())


def release_buffers() -> None:
    """Drop every pooled device and pinned buffer (the next call allocates afresh)."""
    sync()
    _device_buffers.clear()
    _pinned_buffers.clear()


def _grown(held, size: int, dtype) -> bool:
    return held is None or held.size < size or held.dtype != np.dtype(dtype)


def buffer(name: str, shape: tuple, dtype) -> object:
    """A C-contiguous device array of ``shape`` from the pool (contents undefined)."""
    shape = tuple(int(extent) for extent in np.atleast_1d(shape))
    size = math.prod(shape)
    held = _device_buffers.get(name)
    if _grown(held, size, dtype):
        capacity = max(size, 1, 0 if held is None else held.size * 3 // 2)
        _device_buffers.pop(name, None)
        held = _device_buffers[name] = cuda.device_array(capacity, dtype)
    return held[:size].reshape(shape)


def _pinned(name: str, shape: tuple, dtype) -> np.ndarray:
    shape = tuple(int(extent) for extent in shape)
    size = math.prod(shape)
    held = _pinned_buffers.get(name)
    if _grown(held, size, dtype):
        capacity = max(size, 1, 0 if held is None else held.size * 3 // 2)
        held = _pinned_buffers[name] = cuda.pinned_array(capacity, dtype)
    return held[:size].reshape(shape)


def count(direction: str, name: str, n_bytes: int) -> None:
    """Count a copy of ``n_bytes`` ``direction`` ("to_device", "to_host") of buffer ``name``."""
    TRANSFERS[direction] += int(n_bytes)
    TRANSFERS_BY_NAME[direction, name] += int(n_bytes)


def sync() -> None:
    """Wait for everything on ``stream()``: every staging buffer is free again."""
    stream().synchronize()
    _in_flight.clear()


def _staging(name: str, shape: tuple, dtype) -> np.ndarray:
    """The pinned buffer ``name``, once no copy through it is in flight."""
    if name in _in_flight:
        sync()
    _in_flight.add(name)
    return _pinned(name, shape, dtype)


def to_device(name: str, array: np.ndarray, dtype) -> object:
    """``array`` as ``dtype`` in the pooled device buffer ``name``, through a pinned staging
    buffer, asynchronously on ``stream()``."""
    array = np.asarray(array)
    staging = _staging(name, array.shape, dtype)
    np.copyto(staging, array, casting="unsafe")
    out = buffer(name, array.shape, dtype)
    if out.size:
        out.copy_to_device(staging, stream=stream())
        count("to_device", name, staging.nbytes)
    return out


def to_host(name: str, device_array) -> np.ndarray:
    """Start copying ``device_array`` into the pinned buffer ``name``, returned: valid after
    ``sync()``, until the next use of ``name``."""
    staging = _staging(name, device_array.shape, device_array.dtype)
    if staging.size:
        device_array.copy_to_host(staging, stream=stream())
        count("to_host", name, staging.nbytes)
    return staging


def free_bytes() -> int:
    """Device memory a call may use, in bytes: what is free plus what the buffer pool holds
    (the simulator reports infinity: a large number then)."""
    free, _total = cuda.current_context().get_memory_info()
    return (int(free) if math.isfinite(free) else 1 << 60) + held_bytes()


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


def upload(array: np.ndarray, dtype, name: str) -> object:
    """A new C-contiguous device copy of ``array`` as ``dtype`` (synchronous, counted as
    ``name``)."""
    host = np.ascontiguousarray(array, dtype)
    count("to_device", name, host.nbytes)
    return cuda.to_device(host)


def allocate(shape: tuple, dtype) -> object:
    """A new device array (not pooled: it lives as long as its holder; contents undefined).
    Where the free memory alone would not hold it, the pool is dropped first (``free_bytes``
    counts the pool as usable)."""
    n_bytes = math.prod(int(extent) for extent in shape) * np.dtype(dtype).itemsize
    free, _total = cuda.current_context().get_memory_info()
    if math.isfinite(free) and n_bytes > free:
        release_buffers()
    return cuda.device_array(shape, dtype)
