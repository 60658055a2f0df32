"""The classification stage as file-to-file steps, one per workflow job.

    >>> cfg, meta = {"n_classes": 20}, "results/prepare/prepared.yaml"   # classify section
    >>> init_step(meta, "results/classify/iter_000/state.npz", cfg)
    >>> iteration_step(meta, ".../iter_000/state.npz", ".../iter_001/state.npz", cfg)
    >>> shard_step(meta, ".../iter_020/state.npz", 0, ".../iter_021/shard_000.npz", cfg)
    >>> gather_step(meta, ".../iter_020/state.npz", [shards], ".../iter_021/state.npz",
    ...             ".../iter_021/assignments.npz", cfg)
    >>> export_step(meta, ".../iter_021/state.npz", ".../iter_021/assignments.npz",
    ...             "results/classify", cfg)
    >>> classify_all("results/prepare", "results/classify", cfg)      # all of it, in-process

Each step opens one ``Classification`` (the prepared stack, the settings derived once from
the config, the kernels), reads only the files it is given and writes its outputs
atomically, so a killed job leaves nothing half-written and its rerun repeats it exactly
(seeds come from the config and the iteration number).  ``classify_all`` runs the same
steps in one process on one ``Classification``, with the files named by ``class2d.layout``.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from class2d import layout
from class2d.em import online
from class2d.em.export import write_outputs
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState
from class2d.io.npz import write_npz
from class2d.kernels import get_backend
from class2d.prepare import PreparedStack

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
        self.backend = backend

    @functools.cached_property
    def kernels(self):
        return get_backend(self.backend)

    def init(self, state_path: str) -> None:
        online.init_classes(self.stack, self.params, self.kernels).save(state_path)

    def iterate(self, previous: str, state_path: str, count: int = 1) -> None:
        """``count`` online iterations from the state file ``previous``; saves the last."""
        state = ClassState.load(previous)
        for _ in range(count):
            state = online.online_iteration(self.stack, state, self.params, self.kernels)
        state.save(state_path)

    def shard(self, previous: str, shard: int, shard_path: str, last: bool) -> None:
        """One shard's part of the full pass after ``previous``."""
        part = online.full_pass_shard(self.stack, ClassState.load(previous), self.params,
                                      self.kernels, shard, last)
        write_npz(shard_path, part)

    def gather(self, previous: str, shard_paths: list[str], state_path: str,
               assignments_path: str) -> None:
        """Sum the shards' statistics: writes the assignments, then the state."""
        parts = []
        for path in shard_paths:
            with np.load(path) as data:
                parts.append({key: data[key] for key in data.files})
        state, out = online.gather_full_pass(self.stack, ClassState.load(previous), parts,
                                             self.params, self.kernels)
        write_npz(assignments_path, out)
        state.save(state_path)

    def export(self, state_path: str, assignments_path: str, out_dir: str) -> None:
        """Classes and particles of the last full pass into ``out_dir`` (``em.export``)."""
        with np.load(assignments_path) as data:
            out = {key: data[key] for key in data.files}
        write_outputs(self.stack, ClassState.load(state_path), out, self.params, out_dir)


def init_step(meta: str, state_path: str, config: dict, seed: int = 0,
              backend: str = "auto") -> None:
    Classification(meta, config, seed, backend).init(state_path)


def iteration_step(meta: str, previous: str, state_path: str, config: dict, seed: int = 0,
                   backend: str = "auto", count: int = 1) -> None:
    Classification(meta, config, seed, backend).iterate(previous, state_path, count)


def shard_step(meta: str, previous: str, shard: int, shard_path: str, config: dict,
               seed: int = 0, backend: str = "auto", last: bool = True) -> None:
    Classification(meta, config, seed, backend).shard(previous, shard, shard_path, last)


def gather_step(meta: str, previous: str, shard_paths: list[str], state_path: str,
                assignments_path: str, config: dict, seed: int = 0) -> None:
    Classification(meta, config, seed).gather(previous, shard_paths, state_path,
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
