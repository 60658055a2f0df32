"""Progress lines for long jobs, and the peak memory that ends every job's log.

    >>> progress = Progress("prepare shard 3", total=250_000)
    >>> for batch in batches:
    ...     work(batch)
    ...     progress.advance(len(batch))   # a line when INTERVAL s have passed since the last
    >>> progress.finish()                  # 'prepare shard 3: 250000 particles in 81 s (3086/s)'
    >>> peak_memory_gb()                   # 1.2: the process's peak resident memory, GB

A line says the particles done out of the total, the rate since the start and the time
left at that rate::

    prepare shard 3: 61440/250000 particles (24.6 %), 3071/s, 61 s left

Lines come when work is reported, so a job logs at least every INTERVAL seconds plus the
time of one batch: callers size batches to take seconds, not minutes.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: seconds between two progress lines (at most this plus one batch)
INTERVAL = 20.0


class Progress:
    """Count particles done and log a progress line every ``INTERVAL`` seconds.

    what: names the work in every line; total: particles to do; log: the logger to write
    to (default this module's); clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, what: str, total: int, log: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.what, self.total = what, int(total)
        self.done = 0
        self._log = log or logger
        self._clock = clock
        self._start = self._last = clock()

    def advance(self, count: int) -> None:
        """Record ``count`` more particles done; log a line if INTERVAL s passed since the last."""
        self.done += int(count)
        now = self._clock()
        if now - self._last < INTERVAL:
            return
        self._last = now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        self._log.info("%s: %d/%d particles (%.1f %%), %.0f/s, %s left", self.what, self.done,
                       self.total, 100.0 * self.done / max(self.total, 1), rate,
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
    """Peak resident memory of this process so far, GB (10⁹ bytes), from ``ru_maxrss``."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9
