"""Tests of class2d.runner.run_step: the closing line of every job, its threads."""

from __future__ import annotations

import re

import numba
import pytest
import threadpoolctl

from class2d import fourier
from class2d.errors import InputError
from class2d.runner import run_step


def _allocate(megabytes: int) -> int:
    import numpy as np

    return int(np.ones(megabytes * 2**20 // 8).sum())


def _bad_input() -> None:
    raise InputError("particles.star", "truncated")


def test_run_step_ends_every_log_with_time_and_peak_memory(tmp_path):
    log = tmp_path / "step.log"
    assert run_step(_allocate, 50, log=str(log)) == 50 * 2**20 // 8
    last = log.read_text().splitlines()[-1]
    match = re.search(r"_allocate: done in ([\d.]+) s, peak memory ([\d.]+) GB$", last)
    assert match and float(match.group(2)) >= 0.05


def test_run_step_failure_ends_with_one_error_line_and_the_closing_line(tmp_path):
    log = tmp_path / "step.log"
    with pytest.raises(SystemExit) as exit_info:
        run_step(_bad_input, log=str(log))
    assert exit_info.value.code == 1
    lines = log.read_text().splitlines()
    assert lines[-2].endswith("particles.star: truncated")
    assert re.search(r"_bad_input: failed after [\d.]+ s, peak memory [\d.]+ GB$", lines[-1])


def _threads_seen() -> tuple[int, int, int]:
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    return numba.get_num_threads(), max(blas), fourier.FFT_WORKERS


def test_run_step_holds_numba_blas_and_ffts_to_the_jobs_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(fourier, "FFT_WORKERS", -1)
    before = _threads_seen()
    try:
        assert run_step(_threads_seen, log=str(tmp_path / "a.log"), threads=1) == (1, 1, 1)
    finally:
        numba.set_num_threads(before[0])
    assert _threads_seen()[1] == before[1]              # BLAS is released after the step


def _unwritable(path: str) -> None:
    raise PermissionError(13, "Permission denied", path)


def test_run_step_gives_a_file_it_cannot_write_as_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_step(_unwritable, "out/classes.mrcs", log=str(tmp_path / "step.log"))
    assert exit_info.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == ["error: out/classes.mrcs: Permission denied"]


def test_a_job_that_compiles_no_kernel_does_not_load_numba_for_its_threads(tmp_path):
    # nor with any of the steps' modules: its thread count waits in NUMBA_NUM_THREADS for
    # whatever loads Numba later (the E-step's kernels, the bilinear and shift kernels)
    import subprocess
    import sys

    code = f"""
import os, sys
os.environ.pop("NUMBA_NUM_THREADS", None)
import class2d.classify, class2d.dedup, class2d.prepare, class2d.rebalance, class2d.select
import class2d.templates
from class2d.runner import run_step
def step():
    loaded = "numba" in sys.modules
    import numba
    return loaded, numba.get_num_threads()
print(run_step(step, log={str(tmp_path / "a.log")!r}, threads=1))
"""
    job = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout.strip() == "(False, 1)"
