"""Classification jobs: an iteration job killed part-way resumes to the same states; a
job loads only what it needs (no pandas, no matplotlib: their import was part of every
job's start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from class2d import layout
from class2d.classify import init_step, iteration_step
from class2d.em import online
from class2d.em.params import ClassifyParams
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset

#: a batch of all 240 particles, taken in two updates (``ClassifyParams.online_steps``)
CONFIG = {"n_classes": 4, "max_res_A": 12.0, "online_iterations": 5, "batch_per_class": 60}
#: history entries that hold wall-clock times, which no two runs share
CLOCK_KEYS = ("seconds", "estep_seconds")

#: a job of five online iterations (``later``: from state 0; ``first``: making it too) that
#: SIGKILLs itself when the third iteration starts
KILLED_JOB = """
import os, signal, sys, json
from class2d import classify, layout
from class2d.em import online
from class2d.em.params import ClassifyParams
kind, meta, folder, config = sys.argv[1:4] + [json.loads(sys.argv[4])]
calls = []
real = online.online_iteration
def iteration(*args):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args)
online.online_iteration = iteration
if kind == "first":
    classify.init_step(meta, layout.state_path(folder, 5), config, 0, "cpu", 5)
else:
    classify.iteration_step(meta, layout.state_path(folder, 0), layout.state_path(folder, 5),
                            config, 0, "cpu", 5)
"""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    data = simulate(240, box=32, apix=6.0, snr=0.5, n_objects=4, seed=2)
    prepare_stack(write_dataset(data, folder / "data"), folder / "prepare", max_res_A=12.0)
    return layout.prepared_meta(str(folder / "prepare"))


def saved_arrays(path) -> dict:
    """Every array of a state file as bytes, and its history without wall-clock times."""
    with np.load(path) as data:
        arrays = {key: data[key].tobytes() for key in data.files if key != "history"}
        history = json.loads(str(data["history"]))
    arrays["history"] = [{k: v for k, v in row.items() if k not in CLOCK_KEYS} for row in history]
    return arrays


def run_job(kind: str, meta: str, folder: str, config: dict) -> None:
    """Five online iterations to state 5 as a ``kind`` job (see KILLED_JOB)."""
    if kind == "first":
        init_step(meta, layout.state_path(folder, 5), config, 0, "cpu", iterations=5)
    else:
        iteration_step(meta, layout.state_path(folder, 0), layout.state_path(folder, 5), config,
                       0, "cpu", count=5)


def count_calls(monkeypatch) -> dict[str, list]:
    """Record the iterations run and the initial classes made from now on."""
    calls = {"iterations": [], "init": []}
    iterate, init = online.online_iteration, online.init_classes
    monkeypatch.setattr(online, "online_iteration",
                        lambda stack, state, *rest: calls["iterations"].append(state.iteration + 1)
                        or iterate(stack, state, *rest))
    monkeypatch.setattr(online, "init_classes",
                        lambda *args: calls["init"].append(1) or init(*args))
    return calls


@pytest.mark.parametrize("kind", ["first", "later"])
def test_job_killed_after_two_of_five_iterations_resumes_to_the_same_state(prepared, tmp_path,
                                                                          monkeypatch, kind):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    if kind == "later":
        for folder in (whole, killed):
            init_step(prepared, layout.state_path(folder, 0), CONFIG, 0, "cpu")
    run_job(kind, prepared, whole, CONFIG)
    job = subprocess.run([sys.executable, "-c", KILLED_JOB, kind, prepared, killed,
                          json.dumps(CONFIG)], capture_output=True, text=True, check=False)
    assert job.returncode == -signal.SIGKILL, job.stderr[-2000:]
    kept = [n for n in range(6) if os.path.exists(layout.state_path(killed, n))]
    assert kept == [0, 1, 2]                        # what the killed job had finished
    calls = count_calls(monkeypatch)
    run_job(kind, prepared, killed, CONFIG)
    assert calls == {"iterations": [3, 4, 5], "init": []}   # went on after iteration 2
    for n in range(6):
        assert saved_arrays(layout.state_path(killed, n)) == saved_arrays(
            layout.state_path(whole, n)), n


@pytest.mark.parametrize("kind", ["first", "later"])
def test_states_left_by_other_settings_are_not_resumed_from(prepared, tmp_path, monkeypatch,
                                                           kind):
    folder = str(tmp_path / "run")
    for config in ({**CONFIG, "batch_per_class": 20}, CONFIG):      # then settings changed
        if kind == "later":
            init_step(prepared, layout.state_path(folder, 0), config, 0, "cpu")
        calls = count_calls(monkeypatch)
        run_job(kind, prepared, folder, config)
    # all over again, although the first run left states 0 to 4 (and 0 is the same)
    assert calls == {"iterations": [1, 2, 3, 4, 5], "init": [1] if kind == "first" else []}


def test_a_classification_job_imports_neither_pandas_nor_matplotlib(prepared, tmp_path):
    folder = str(tmp_path / "run")
    code = f"""
import sys
from class2d import layout
from class2d.classify import gather_step, init_step, iteration_step, shard_step
meta, folder, config = {prepared!r}, {folder!r}, {{**{CONFIG!r}, "online_iterations": 2}}
init_step(meta, layout.state_path(folder, 0), config, 0, "cpu")
iteration_step(meta, layout.state_path(folder, 0), layout.state_path(folder, 2), config, 0,
               "cpu", 2)
part = layout.shard_result_path(folder, 3, 0)
shard_step(meta, layout.state_path(folder, 2), 0, part, config, 0, "cpu", True)
gather_step(meta, layout.state_path(folder, 2), [part], layout.state_path(folder, 3),
            layout.assignments_path(folder, 3), config, 0)
print(sorted(name for name in ("pandas", "pyarrow", "matplotlib", "starfile")
             if name in sys.modules))
"""
    job = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False)
    assert job.returncode == 0, job.stderr[-2000:]
    assert os.path.exists(layout.assignments_path(folder, 3))
    assert job.stdout.split("\n")[-2] == "[]"


def test_an_iteration_on_a_small_set_updates_the_classes_in_steps(prepared, tmp_path):
    """240 particles, a batch of 4 × 60 = all 240: more than a quarter of the set, so each
    iteration updates the classes in steps (``online_steps``): two of 120, as four of 60
    would hold fewer than 30 particles per class; its state keeps one history row for the
    240."""
    from class2d.em.state import ClassState
    from class2d.timing import record

    folder = str(tmp_path / "run")
    config = {**CONFIG, "online_iterations": 2}
    with record() as budget:
        init_step(prepared, layout.state_path(folder, 2), config, 0, "cpu", iterations=2)
    assert budget.parts["online iteration"].calls == 2
    assert budget.parts["online iteration/M-step"].calls == 4
    assert budget.parts["online iteration/E-step"].calls == 4
    history = ClassState.load(layout.state_path(folder, 2)).history
    assert [row["iteration"] for row in history] == [1, 2]
    assert [row["particles"] for row in history] == [240, 240]
    assert [sum(row["pass_sizes"]) for row in history] == [240, 240]
    # a batch of 4 × 30 = 120 is half the set, but two steps of it would hold 15 per
    # class: one update, as before this rule
    assert ClassifyParams.from_config({**CONFIG, "batch_per_class": 30}).online_steps(240) == 1
