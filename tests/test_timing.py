"""Tests of class2d.timing: nested parts apart, and a small classification's budget."""

from __future__ import annotations

import logging
import time

import pytest

from class2d import timing
from class2d.runner import run_step
from class2d.timing import Budget, record, timer


def test_nested_parts_hold_their_own_seconds_and_count_calls():
    with record() as budget:
        for _ in range(2):
            with timer("outer"):
                time.sleep(0.02)
                with timer("inner"):
                    time.sleep(0.03)
    assert set(budget.parts) == {"outer", "outer/inner"}
    assert [budget.parts[p].calls for p in ("outer", "outer/inner")] == [2, 2]
    assert 0.035 <= budget.parts["outer"].seconds < 0.06
    assert 0.055 <= budget.parts["outer/inner"].seconds < 0.09
    assert budget.seconds("inner") == budget.parts["outer/inner"].seconds


def test_a_raising_block_counts_and_records_close_cleanly():
    with record() as outer:
        with pytest.raises(ValueError), timer("fails"):
            raise ValueError
        with record() as inner:
            timer("decorated")(lambda: None)()
    assert set(outer.parts) == {"fails", "decorated"} and set(inner.parts) == {"decorated"}
    with timer("unrecorded"):
        pass
    assert "unrecorded" not in outer.parts


def test_budget_round_trips_through_its_log_line_and_merges():
    budget = Budget()
    budget.add("a/b", 1.5)
    budget.add("a", 0.25, calls=3)
    again = Budget.from_json(budget.to_json())
    again.merge(budget)
    assert {p: (part.seconds, part.calls) for p, part in again.parts.items()} == {
        "a/b": (3.0, 2), "a": (0.5, 6)}
    assert again.total == 3.5


def test_run_step_logs_the_budget_before_its_last_line(tmp_path):
    def step():
        with timer("work"):
            time.sleep(0.01)

    run_step(step, log=str(tmp_path / "step.log"))
    lines = [line.split(" INFO ", 1)[1] for line in
             (tmp_path / "step.log").read_text().splitlines()]
    assert lines[-1].startswith("step: done in")
    assert lines[-2].startswith(timing.LOG_PREFIX)
    assert set(Budget.from_json(lines[-2][len(timing.LOG_PREFIX):]).parts) == {"work"}


@pytest.mark.slow
def test_a_small_classification_accounts_for_its_time(tmp_path):
    """200 particles of 32 px into 4 classes, 4 online iterations and a full pass: every
    stage's parts recorded, and together they hold most of the call's wall time."""
    from class2d.classify import classify_all
    from class2d.prepare import prepare_stack
    from class2d.simulate import simulate, write_dataset

    data = simulate(200, box=32, apix=6.0, snr=1.0, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    star = write_dataset(data, tmp_path / "data")
    tic = time.perf_counter()
    with record() as budget:
        prepare_stack(star, tmp_path / "prep")
        classify_all(str(tmp_path / "prep"), str(tmp_path / "out"),
                     {"n_classes": 4, "max_res_A": 14.0, "online_iterations": 4,
                      "batch_per_class": 30}, seed=1, backend="cpu")
    wall = time.perf_counter() - tic
    for part in ("prepare", "initial classes", "online iteration/E-step/scoring",
                 "online iteration/E-step/insertion", "online iteration/M-step",
                 "online iteration/refill", "online iteration/twins", "full pass/E-step",
                 "full pass/outlier features", "full pass gather/M-step", "export/bias",
                 "export/outlier scores", "export/writing files", "export/pictures",
                 "checkpoints"):
        assert part in budget.parts, part
    assert budget.parts["online iteration"].calls == 4
    assert all(part.seconds >= 0 for part in budget.parts.values())
    assert 0.5 * wall <= budget.total <= wall
