"""Tests of class2d.progress: progress lines (a fake clock) and the peak memory."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from class2d import progress
from class2d.progress import Progress, format_seconds


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_every_interval_with_rate_and_time_left(caplog):
    clock = FakeClock()
    meter = Progress("prepare shard 3", total=10_000, clock=clock)
    with caplog.at_level(logging.INFO, logger="class2d.progress"):
        for _ in range(10):                       # 1,000 particles every 5 s
            clock.now += 5.0
            meter.advance(1000)
        meter.finish()
    lines = [r.getMessage() for r in caplog.records]
    # 50 s of work, INTERVAL 20 s: lines at 20 s and 40 s, then the closing line
    assert lines == [
        "prepare shard 3: 4000/10000 particles (40.0 %), 200/s, 30 s left",
        "prepare shard 3: 8000/10000 particles (80.0 %), 200/s, 10 s left",
        "prepare shard 3: 10000 particles in 50 s (200/s)",
    ]


def test_progress_line_after_one_long_batch(caplog, monkeypatch):
    monkeypatch.setattr(progress, "INTERVAL", 30.0)
    clock = FakeClock()
    meter = Progress("E-step", total=300, clock=clock)
    with caplog.at_level(logging.INFO, logger="class2d.progress"):
        clock.now += 29.0
        meter.advance(100)                        # not yet 30 s: no line
        clock.now += 31.0
        meter.advance(100)
    assert [r.getMessage() for r in caplog.records] == [
        "E-step: 200/300 particles (66.7 %), 3/s, 30 s left"]


def test_a_line_every_interval_while_one_batch_runs_long(caplog, monkeypatch):
    """Inside ``with``, a background thread logs while no work is reported; the closing
    line comes when the block ends, none when it fails."""
    monkeypatch.setattr(progress, "INTERVAL", 0.05)            # the thread checks every 12.5 ms
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="class2d.progress"):
        with Progress("full pass shard 2", total=1000, clock=clock) as meter:
            meter.advance(250)
            clock.now += 30.0                  # a long batch: no advance() for 30 s
            deadline = time.monotonic() + 5.0
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records]
        # the clock stood still after the line: no second one, then the closing line
        assert lines == ["full pass shard 2: 250/1000 particles (25.0 %), 8/s, 1 min 30 s left",
                         "full pass shard 2: 250 particles in 30 s (8/s)"]
        caplog.clear()
        with pytest.raises(RuntimeError):
            with Progress("failing", total=10, clock=clock) as meter:
                raise RuntimeError("stopped")
        assert caplog.records == []
        assert not meter._beat.is_alive()


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 59.4, 60, 725, 3600, 12_000, float("inf"))] == [
        "0 s", "59 s", "1 min 0 s", "12 min 5 s", "1 h 0 min", "3 h 20 min", "unknown"]


def test_peak_memory_is_this_programs_not_its_parents():
    """A process touches 500 MB, then starts a fresh Python that touches 100 MB: the child's
    peak is its own (ru_maxrss would say ≥ 0.5 GB, the parent's, kept across exec)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM is Linux's")
    child = ("import numpy as np; a = np.ones(100 * 2**20 // 8); del a; "
             "from class2d.progress import peak_memory_gb; print(peak_memory_gb())")
    parent = ("import subprocess, sys; import numpy as np; big = np.ones(500 * 2**20 // 8); "
              f"print(subprocess.run([sys.executable, '-c', {child!r}], check=True, "
              "capture_output=True, text=True).stdout)")
    peak = float(subprocess.run([sys.executable, "-c", parent], check=True, capture_output=True,
                                text=True).stdout)
    assert 0.1 < peak < 0.4
