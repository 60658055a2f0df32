"""Backends: the same kernels on the CPU (NumPy/Numba) and on NVIDIA GPUs (Numba CUDA).

    >>> backend = get_backend("auto")       # the cuda module when a GPU is found, else cpu
    >>> backend.rotate_references(grids, fx, fy, psi, pad)

A backend module provides ``rotate_references``, ``score_classes``, ``noise_residuals`` and
the class ``InsertionSums`` (a pass's class sums, batch by batch) with the signatures
documented in ``class2d.kernels.cpu``.
"""

from __future__ import annotations

import logging
import os
import types

import numpy as np

from class2d.errors import ConfigError

logger = logging.getLogger(__name__)


def unscored(n: int, k_count: int, n_top: int) -> tuple[np.ndarray, ...]:
    """The six outputs of ``score_classes`` for N particles, K classes and P poses, each
    filled with what a class not scored for a particle gets: top_s −inf, top_i −1, lse
    −inf, nsig 0, refine 0, ratio 1."""
    return (np.full((n, k_count, n_top), -np.inf, np.float32),
            np.full((n, k_count, n_top), -1, np.int64),
            np.full((n, k_count), -np.inf, np.float32), np.zeros((n, k_count), np.int32),
            np.zeros((n, k_count, 3), np.float32), np.ones((n, k_count), np.float32))


def cuda_available() -> tuple[bool, str]:
    """(usable, why not) for the CUDA backend."""
    try:
        from numba import cuda
    except ImportError as err:  # numba built without CUDA support
        return False, f"numba.cuda cannot be imported ({err})"
    try:
        if cuda.is_available():
            return True, ""
        return False, "numba.cuda.is_available() is False (no GPU or no driver)"
    except Exception as err:  # a broken driver raises instead of answering
        return False, f"the CUDA driver failed: {err}"


def get_backend(name: str = "auto") -> types.ModuleType:
    """The kernel module for ``name`` (auto, cuda, cpu); ConfigError (one line naming the
    ``backend`` key) for an unknown name, or for cuda where it cannot run."""
    if name not in ("auto", "cuda", "cpu"):
        raise ConfigError("backend", f"must be auto, cuda or cpu, not {name!r}")
    if name == "auto" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        logger.info("backend auto: using the CPU because the CUDA simulator is on "
                    "(NUMBA_ENABLE_CUDASIM=1); ask for backend cuda to run on it")
        name = "cpu"
    if name != "cpu":
        usable, why = cuda_available()
        if usable:
            from class2d.kernels import cuda as backend
            return backend
        if name == "cuda":
            raise ConfigError("backend", f"cuda was asked for, but {why}")
        logger.info("backend auto: using the CPU because %s", why)
    from class2d.kernels import cpu
    return cpu
