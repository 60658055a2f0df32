"""Progress lines for long jobs, and the peak memory that ends every job's log.

    >>> with Progress("prepare shard 3", total=250_000) as progress:
    ...     for batch in batches:
    ...         work(batch)
    ...         progress.advance(len(batch))
    # 'prepare shard 3: 250000 particles in 1 min 21 s (3086/s)' when the block ends
    >>> peak_memory_gb()                   # 1.2: the process's peak resident memory, GB

A line says the particles done out of the total, the rate since the start and the time
left at that rate::

    prepare shard 3: 61440/250000 particles (24.6 %), 3071/s, 1 min 1 s left

Inside the ``with`` block a line comes every INTERVAL seconds even while one batch runs
for longer (a background thread writes it, with the count reported so far); outside one,
lines come when work is reported.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: seconds between two progress lines
INTERVAL = 20.0


class Progress:
    """Count particles done and log a progress line every ``INTERVAL`` seconds.

    what: names the work in every line; total: particles to do; log: the logger to write
    to (default this module's); clock: seconds, monotonic (tests pass a fake one).
    As a context manager it also logs while no work is reported, and closes with
    :meth:`finish` when the block succeeds.
    """

    def __init__(self, what: str, total: int, log: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total = what, int(total)
        self.done = 0
        self._log = log or logger
        self._clock = clock
        self._start = self._last = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        self._beat = threading.Thread(target=self._beat_until_stopped, daemon=True)
        self._beat.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if kind is None:
            self.finish()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(INTERVAL / 4):
            self._line_if_due()

    def advance(self, count: int) -> None:
        """Record ``count`` more particles done; log a line if INTERVAL s passed since the last."""
        with self._lock:
            self.done += int(count)
        self._line_if_due()

    def _line_if_due(self) -> None:
        with self._lock:
            now = self._clock()
            if now - self._last < INTERVAL:
                return
            self._last, done = now, self.done
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        self._log.info("%s: %d/%d particles (%.1f %%), %.0f/s, %s left", self.what, done,
                       self.total, 100.0 * done / max(self.total, 1), rate,
                       format_seconds(left))

    def finish(self) -> None:
        """Log the closing line: particles done, seconds, rate."""
        elapsed = self._clock() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self._log.info("%s: %d particles in %s (%.0f/s)", self.what, self.done,
                       format_seconds(elapsed), rate)


def format_seconds(seconds: float) -> str:
    """'42 s', '12 min 5 s', '3 h 20 min' (or 'unknown' for an infinite or NaN time)."""
    if not seconds < float("inf"):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far, GB (10⁹ bytes).

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh with the program.
    ``ru_maxrss`` does not: it keeps the parent's high-water mark across fork and exec
    (a job started by a 0.86 GB process reported 0.86 GB there, 0.34 GB in VmHWM).
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9
