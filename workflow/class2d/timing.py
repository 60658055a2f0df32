"""Where a run's time goes: wall seconds and calls per named part of the work.

    >>> with record() as budget:                   # collects every part timed inside
    ...     with timer("online"):
    ...         with timer("E-step"):
    ...             score()
    >>> budget.parts      # {"online/E-step": Part(2.31, 1), "online": Part(0.02, 1)}
    >>> budget.seconds("E-step"), budget.total     # 2.31 (every path ending so), 2.33

A part's seconds are its own: the time of the parts timed inside it goes to them (the
path of names, joined by SEPARATOR, says where), so the parts of a run add up to no more
than its wall time.  A timer costs two ``perf_counter`` calls and a few dictionary
updates: it goes around blocks of milliseconds or more, never inside a loop over particles.
Times are measured, so they are never written into a result file (the same seed gives the
same bytes): ``runner.run_step`` logs each job's budget as one line (``LOG_PREFIX``,
``Budget.to_json``), and an in-process caller holds its own ``record``.  Timers belong to
the thread that opens them (a timer opened in another thread is not recorded here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator

#: joins the names of nested parts into a path
SEPARATOR = "/"
#: opens the log line that carries a job's budget (``runner.run_step``)
LOG_PREFIX = "time budget: "


@dataclasses.dataclass
class Part:
    """seconds: wall time spent in the part and not in a part timed inside it;
    calls: how many times the part was entered."""

    seconds: float = 0.0
    calls: int = 0


class Budget:
    """Seconds and calls per part path, summed over every time the part ran."""

    def __init__(self) -> None:
        self.parts: dict[str, Part] = {}

    def add(self, path: str, seconds: float, calls: int = 1) -> None:
        part = self.parts.setdefault(path, Part())
        part.seconds += seconds
        part.calls += calls

    def merge(self, other: "Budget") -> None:
        """Add every part of ``other`` (e.g. another job's budget) to this one."""
        for path, part in other.parts.items():
            self.add(path, part.seconds, part.calls)

    @property
    def total(self) -> float:
        """Seconds of all parts together."""
        return sum(part.seconds for part in self.parts.values())

    def seconds(self, name: str) -> float:
        """Seconds of every part named ``name``, wherever it was nested."""
        return sum(part.seconds for path, part in self.parts.items()
                   if path.rsplit(SEPARATOR, 1)[-1] == name)

    def to_json(self) -> str:
        """One line: ``{path: [seconds, calls]}``."""
        return json.dumps({path: [round(part.seconds, 4), part.calls]
                           for path, part in self.parts.items()})

    @classmethod
    def from_json(cls, text: str) -> "Budget":
        budget = cls()
        for path, (seconds, calls) in json.loads(text).items():
            budget.add(path, seconds, calls)
        return budget


@dataclasses.dataclass
class _Open:
    """A timer that has not ended: its path, and the seconds of the timers ended inside it."""

    path: str
    inner: float = 0.0


class _Thread(threading.local):
    def __init__(self) -> None:
        self.open: list[_Open] = []
        self.budgets: list[Budget] = []


_thread = _Thread()


@contextlib.contextmanager
def timer(name: str) -> Iterator[None]:
    """Time the block as part ``name`` of the part whose block it runs in (if any), for
    every ``record`` open in this thread.  The block's time counts also when it raises."""
    parent = _thread.open[-1] if _thread.open else None
    this = _Open(name if parent is None else parent.path + SEPARATOR + name)
    _thread.open.append(this)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _thread.open.pop()
        if parent is not None:
            parent.inner += elapsed
        for budget in _thread.budgets:
            budget.add(this.path, elapsed - this.inner)


@contextlib.contextmanager
def record() -> Iterator[Budget]:
    """A Budget of every part timed in this thread while the block runs."""
    budget = Budget()
    _thread.budgets.append(budget)
    try:
        yield budget
    finally:
        _thread.budgets.remove(budget)
