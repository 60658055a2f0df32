"""The classification stage as file-to-file steps, one per workflow job.

    >>> cfg, meta = {"n_classes": 20}, "results/prepare/prepared.yaml"   # classify section
    >>> init_step(meta, "results/classify/iter_000/state.npz", cfg)
    >>> iteration_step(meta, ".../iter_000/state.npz", ".../iter_001/state.npz", cfg)
    >>> init_step(meta, ".../iter_010/state.npz", cfg, iterations=10)   # 0 to 10, one job
    >>> shard_step(meta, ".../iter_020/state.npz", 0, ".../iter_021/shard_000.npz", cfg)
    >>> gather_step(meta, ".../iter_020/state.npz", [shards], ".../iter_021/state.npz",
    ...             ".../iter_021/assignments.npz", cfg)
    >>> export_step(meta, ".../iter_021/state.npz", ".../iter_021/assignments.npz",
    ...             "results/classify", cfg)
    >>> classify_all("results/prepare", "results/classify", cfg)      # all of it, in-process

Each step opens one ``Classification`` (the prepared stack, the settings derived once from
the config, the kernels), reads only the files it is given and writes its outputs
atomically, so a killed job leaves nothing half-written and its rerun repeats it exactly
(seeds come from the config and the iteration number).  A step of several online
iterations (``iteration_step``'s ``count``, ``init_step``'s ``iterations``) also saves
every iteration's state on the way, and its rerun after a kill goes on from the newest.
``classify_all`` runs the same steps in one process on one ``Classification``, with the
files named by ``class2d.layout``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Iterator

import numpy as np

from class2d import layout
from class2d.em import online
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState
from class2d.io.atomic import atomic_path
from class2d.io.npz import write_npz
from class2d.kernels import get_backend
from class2d.prepare import PreparedStack
from class2d.timing import timer

logger = logging.getLogger(__name__)


class Classification:
    """A prepared stack and the settings built from the classify config, opened once.

    prepared_meta: the prepared stack's ``prepared.yaml`` (``prepare.prepare_stack``);
    config: the config's classify section; seed: of every random choice;
    backend: ``auto``, ``cuda`` or ``cpu`` (its kernels load when a step first needs them).
    """

    def __init__(self, prepared_meta: str | os.PathLike, config: dict, seed: int = 0,
                 backend: str = "auto"):
        self.params = ClassifyParams.from_config(config, seed)     # a bad setting fails first
        self.stack = PreparedStack.read(prepared_meta)
        self.params.check_particles(self.stack.n, self.stack.box, self.stack.apix)
        self.backend = backend

    @functools.cached_property
    def kernels(self):
        with timer("kernels"):
            return get_backend(self.backend)

    def init(self, state_path: str, iterations: int = 0) -> None:
        """The initial classes (iteration 0) and then, in the same job, ``iterations``
        online iterations (``iterate``), the last state saved as ``state_path``.  With
        iterations, a rerun after a kill resumes from the newest state saved since the
        settings and the prepared stack were last written (``_settings_written``)."""
        if not iterations:
            online.init_classes(self.stack, self.params, self.kernels).save(state_path)
            return
        folder = layout.classify_dir_of(state_path)
        first = layout.state_path(folder, 0)
        since = self._settings_written(folder)
        if not (os.path.exists(first) and os.stat(first).st_mtime_ns >= since):
            online.init_classes(self.stack, self.params, self.kernels).save(first)
        self.iterate(first, state_path, iterations)

    def _settings_written(self, folder: str) -> int:
        """Records the settings in ``folder`` (``layout.settings_path``), rewriting the file
        only when they changed; returns when it or the prepared stack was last written (ns).
        A state older than that was made from other settings or other particles."""
        path = layout.settings_path(folder)
        text = json.dumps({"classify": dataclasses.asdict(self.params),
                           "backend": self.backend}, sort_keys=True, indent=1)
        if _read_text(path) != text:
            with atomic_path(path) as tmp, open(tmp, "w") as fh:
                fh.write(text)
        prepared = [layout.prepared_meta(self.stack.folder),
                    layout.prepared_ctf(self.stack.folder)]
        prepared += [layout.stack_path(self.stack.folder, s)
                     for s in range(len(self.stack.shard_rows))]
        return max(os.stat(file).st_mtime_ns for file in [path, *prepared])

    def iterate(self, previous: str, state_path: str, count: int = 1) -> None:
        """``count`` online iterations from the state file ``previous``; the last state is
        saved as ``state_path`` and each one before it beside it (``layout.state_path``), so
        that a rerun after a kill starts from the newest of those (``_interrupted``)."""
        start = ClassState.load(previous)
        last = start.iteration + count
        folder = layout.classify_dir_of(state_path)
        state = _interrupted(previous, start, folder, last) or start
        for n in range(state.iteration + 1, last + 1):
            state = online.online_iteration(self.stack, state, self.params, self.kernels)
            if n < last:
                path = layout.state_path(folder, n)
                state.save(path)
                state = ClassState.load(path)      # go on from what a rerun would read
        state.save(state_path)

    def shard(self, previous: str, shard: int, shard_path: str, last: bool) -> None:
        """One shard's part of the full pass after ``previous``."""
        part = online.full_pass_shard(self.stack, ClassState.load(previous), self.params,
                                      self.kernels, shard, last)
        write_npz(shard_path, part)

    def gather(self, previous: str, shard_paths: list[str], state_path: str,
               assignments_path: str) -> None:
        """Sum the shards' statistics: writes the assignments, then the state."""
        state, out = online.gather_full_pass(self.stack, ClassState.load(previous),
                                             _load_each(shard_paths), self.params,
                                             self.kernels)
        write_npz(assignments_path, out)
        state.save(state_path)

    def export(self, state_path: str, assignments_path: str, out_dir: str) -> None:
        """Classes and particles of the last full pass into ``out_dir`` (``em.export``)."""
        with timer("export"):
            # em.export brings pandas and matplotlib: imported by the export job only
            from class2d.em.export import write_outputs

            with np.load(assignments_path) as data:
                out = {key: data[key] for key in data.files}
            write_outputs(self.stack, ClassState.load(state_path), out, self.params, out_dir)


def _load_each(paths: list[str]) -> Iterator[dict]:
    """Each npz file's arrays in turn: one file in memory at a time."""
    for path in paths:
        with np.load(path) as data:
            yield {key: data[key] for key in data.files}


def _read_text(path: str) -> str | None:
    """The text of the file ``path``, or None if there is none."""
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _interrupted(previous: str, start: ClassState, folder: str, last: int) -> ClassState | None:
    """The newest state between ``start`` (read from ``previous``) and iteration ``last``
    that an interrupted run of the same job left in ``folder``, or None.  Only a file
    written after ``previous`` whose history continues ``start``'s counts: one left by a
    run with other settings predates the ``previous`` that those settings wrote again."""
    since = os.stat(previous).st_mtime_ns
    for n in range(last - 1, start.iteration, -1):
        path = layout.state_path(folder, n)
        if os.path.exists(path) and os.stat(path).st_mtime_ns >= since:
            state = ClassState.load(path)
            if state.iteration == n and state.history[:len(start.history)] == start.history:
                logger.info("resuming after iteration %d from %s", n, path)
                return state
    return None


def init_step(meta: str, state_path: str, config: dict, seed: int = 0,
              backend: str = "auto", iterations: int = 0) -> None:
    Classification(meta, config, seed, backend).init(state_path, iterations)


def iteration_step(meta: str, previous: str, state_path: str, config: dict, seed: int = 0,
                   backend: str = "auto", count: int = 1) -> None:
    Classification(meta, config, seed, backend).iterate(previous, state_path, count)


def shard_step(meta: str, previous: str, shard: int, shard_path: str, config: dict,
               seed: int = 0, backend: str = "auto", last: bool = True) -> None:
    Classification(meta, config, seed, backend).shard(previous, shard, shard_path, last)


def gather_step(meta: str, previous: str, shard_paths: list[str], state_path: str,
                assignments_path: str, config: dict, seed: int = 0) -> None:
    # a light job (one thread, no GPU declared): its only kernel work, refilling a class the
    # full pass left nearly empty, runs on the CPU whatever the configured backend
    Classification(meta, config, seed, "cpu").gather(previous, shard_paths, state_path,
                                                     assignments_path)


def export_step(meta: str, state_path: str, assignments_path: str, out_dir: str,
                config: dict, seed: int = 0) -> None:
    Classification(meta, config, seed).export(state_path, assignments_path, out_dir)


def classify_all(prepared: str, out_dir: str, config: dict, seed: int = 0,
                 backend: str = "auto") -> None:
    """Every step in one process on the prepared folder ``prepared``, writing into
    ``out_dir``; resumes from the last complete state file present."""
    run = Classification(layout.prepared_meta(prepared), config, seed, backend)
    n_online, n_last = run.params.online_iterations, (run.params.online_iterations
                                                     + run.params.final_full_iterations)
    state_of = functools.partial(layout.state_path, out_dir)
    if not os.path.exists(state_of(0)):
        run.init(state_of(0))
    for n in range(1, n_online + 1):
        if not os.path.exists(state_of(n)):
            run.iterate(state_of(n - 1), state_of(n))
    for m in range(n_online + 1, n_last + 1):
        if os.path.exists(state_of(m)):
            continue
        shards = [layout.shard_result_path(out_dir, m, s)
                  for s in range(len(run.stack.shard_rows))]
        for s, path in enumerate(shards):
            run.shard(state_of(m - 1), s, path, last=m == n_last)
        run.gather(state_of(m - 1), shards, state_of(m), layout.assignments_path(out_dir, m))
    run.export(state_of(n_last), layout.assignments_path(out_dir, n_last), out_dir)
