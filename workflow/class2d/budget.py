"""Batch sizes from one memory budget: the GB a job may use (config ``memory_gb``).

    >>> prepare_batch(4.0, box=256, new_box=96)          # images read and cropped at a time
    >>> estep_batch(4.0, box=96)                         # particles per E-step chunk
    >>> split_sample(4.0, box=96)                        # particles of one class split
    >>> simulate_chunk(4.0, box=256, pad=2)              # images simulated at a time

Each size is (budget − what the job holds whatever the batch) / (bytes one particle of the
batch takes), the bytes per particle measured on the arrays each stage allocates (see the
constants).  A budget too small for one batch is a ``ConfigError`` naming ``memory_gb``.
"""

from __future__ import annotations

import logging

from class2d.errors import ConfigError

logger = logging.getLogger(__name__)

#: GB one job may use unless the config says (``memory_gb``): a 16 GB workstation runs a
#: few jobs at once
DEFAULT_MEMORY_GB = 4.0

#: GB every job holds whatever its batch: the interpreter, NumPy, SciPy, Numba and its
#: compiled kernels, pandas, the particle table (measured: 0.52 GB peak for init_classes
#: of 6,000 particles, 50 classes)
BASE_GB = 0.6

#: bytes per particle and input pixel while preparing: the image read (float32), its
#: float64 copy and spectrum, the shifted spectrum (fourier_crop works in double).
#: Measured 6,000 particles 192 -> 96 px: batches of 678 peaked at 0.95 GB, of 1,646 at
#: 1.97 GB: 1.05 MB per particle, 28.5 bytes per input pixel with the output's share
PREPARE_BYTES_PER_PX = 32
#: bytes per particle and output pixel while preparing: cropped spectrum, image, normalised
PREPARE_BYTES_PER_OUT_PX = 16

#: bytes per particle and prepared pixel in an E-step chunk: images, spectra (also shifted),
#: CTF, weights, the half-plane data of the alignment and of the insertion, per-class
#: scores and poses
ESTEP_BYTES_PER_PX = 80

#: bytes per particle and prepared pixel of a class split (``em.refill``): its spectrum, the
#: image turned into the class frame, the smoothed float64 copy and its centred copy
SPLIT_BYTES_PER_PX = 48

#: bytes per particle and pixel of a simulated chunk: the float64 rendering, the float32
#: clean image, the noise, the noisy image
SIMULATE_BYTES_PER_PX = 24

#: particles per batch are capped here: larger batches gain no speed and make progress
#: lines rarer
MAX_BATCH = 8192


def batch_size(memory_gb: float, bytes_per_particle: float, fixed_bytes: float,
               what: str, cap: int = MAX_BATCH) -> int:
    """Particles that fit: (memory_gb − BASE_GB − fixed_bytes) / bytes_per_particle, ≤ cap.

    ``ConfigError("memory_gb", …)`` when not even one particle fits.
    """
    usable = (memory_gb - BASE_GB) * 1e9 - fixed_bytes
    count = int(usable // bytes_per_particle)
    if count < 1:
        need = (BASE_GB * 1e9 + fixed_bytes + bytes_per_particle) / 1e9
        raise ConfigError("memory_gb", f"{memory_gb:g} GB is too small for one {what} batch "
                                       f"(needs at least {need:.2f} GB)")
    return min(count, cap)


def prepare_batch(memory_gb: float, box: int, new_box: int) -> int:
    """Particles read, cropped and normalised at a time (box: input px, new_box: output px)."""
    per_particle = PREPARE_BYTES_PER_PX * box * box + PREPARE_BYTES_PER_OUT_PX * new_box ** 2
    return batch_size(memory_gb, per_particle, 0.0, f"prepare ({box} -> {new_box} px)")


def estep_batch(memory_gb: float, box: int, fixed_bytes: float = 0.0, cap: int = 2048) -> int:
    """Particles per E-step chunk for a prepared box of ``box`` px.

    fixed_bytes: what the job holds besides (class statistics, references); cap: the
    chunk that keeps the BLAS products efficient (2048, the measured default)."""
    return batch_size(memory_gb, ESTEP_BYTES_PER_PX * box * box, fixed_bytes,
                      f"E-step ({box} px)", cap)


def split_sample(memory_gb: float, box: int, fixed_bytes: float = 0.0) -> int:
    """Particles of a class whose aligned images are split at once (``em.refill``): all of
    them are held together (their Gram matrix)."""
    return batch_size(memory_gb, SPLIT_BYTES_PER_PX * box * box, fixed_bytes,
                      f"class split ({box} px)")


def simulate_chunk(memory_gb: float, box: int, pad: int, cap: int = 1024) -> int:
    """Images simulated at a time; the canvases of the CTF step are fixed (BATCH_BYTES)."""
    from class2d.simulate.imaging import BATCH_BYTES

    return batch_size(memory_gb, SIMULATE_BYTES_PER_PX * box * box, BATCH_BYTES,
                      f"simulation ({box} px)", cap)
