"""Run one library call the way a workflow step should: logged, and one clear line on bad input.

    >>> run_step(prepare_stack, "particles.star", "out", log="logs/prepare.log")

The last line of every step's log gives its time and peak memory, e.g.
``prepare_stack: done in 81.2 s, peak memory 1.21 GB`` (or ``failed after …``); the line
before it, where the step times its parts (``class2d.timing``), their seconds and calls:
``time budget: {"online iteration/E-step": [2.31, 1], …}``.

Used by the thin scripts in ``scripts/``; knows nothing of Snakemake.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from class2d import timing
from class2d.errors import ConfigError, InputError
from class2d.progress import peak_memory_gb


def setup_logging(log: str | None = None) -> None:
    """Log INFO to stderr and, when given, to the file ``log``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log:
        handlers.append(logging.FileHandler(log, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def limit_threads(threads: int) -> contextlib.AbstractContextManager:
    """Hold Numba, SciPy's FFTs and (inside the returned context) BLAS to ``threads``.

    Numba is held by its environment variable where it is not loaded yet: a job that never
    compiles a kernel (prepare, select, templates, …) does not load it for this (0.3 s)."""
    import threadpoolctl

    from class2d import fourier

    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    else:
        ceiling = int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)
        os.environ["NUMBA_NUM_THREADS"] = str(max(1, min(threads, ceiling)))
    fourier.FFT_WORKERS = threads
    return threadpoolctl.threadpool_limits(limits=threads)


def run_step(func: Callable[..., Any], *args: Any, log: str | None = None,
             threads: int | None = None, **kwargs: Any) -> Any:
    """Call ``func``; bad input, a bad setting or a file that cannot be read or written
    ends the process with one line ``error: <file>: <problem>`` or
    ``error: config <key>: <problem>``.

    threads: the CPU threads the job was given (Snakemake's ``threads``): Numba, BLAS and
    the FFTs use no more.

    Meant as a process's last call: the objects alive when it returns are never collected.
    """
    setup_logging(log)
    logger = logging.getLogger(func.__module__)
    started = time.perf_counter()
    outcome = "failed after"
    budget = timing.Budget()
    try:
        with limit_threads(threads) if threads else contextlib.nullcontext(), \
                timing.record() as budget:
            result = func(*args, **kwargs)
        outcome = "done in"
        return result
    except (InputError, ConfigError, OSError) as err:
        # OSError: a missing, unreadable or unwritable file, a full disk
        message = (f"{err.filename}: {err.strerror}"
                   if isinstance(err, OSError) and err.filename and err.strerror else str(err))
        logger.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        if budget.parts:
            logger.info("%s%s", timing.LOG_PREFIX, budget.to_json())
        logger.info("%s: %s %.1f s, peak memory %.2f GB", func.__name__, outcome,
                    time.perf_counter() - started, peak_memory_gb())
        # The step is the whole job: spare the interpreter's garbage collection at exit,
        # which walks every object of NumPy, SciPy, Numba and pandas (measured: 0.07 s a job
        # on an idle 2-core machine, 0.6 s under load, against 0.01-0.05 s frozen).
        gc.freeze()
