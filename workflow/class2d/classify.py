"""The classification stage as file-to-file steps, one per workflow job.

    >>> init_step("results/prepare", "results/classify/iter_000/state.npz", {"n_classes": 20})
    >>> iteration_step("results/prepare", ".../iter_000/state.npz", ".../iter_001/state.npz", cfg)
    >>> shard_step("results/prepare", ".../iter_020/state.npz", 0, ".../iter_021/shard_000.npz", cfg)
    >>> gather_step("results/prepare", ".../iter_020/state.npz", [shards], ".../iter_021", cfg)
    >>> export_step("results/prepare", ".../iter_021", "results/classify", cfg)

Each step reads only files and writes its outputs atomically, so a killed job leaves
nothing half-written and its rerun repeats it exactly (seeds come from the config and
the iteration number).  ``classify_all`` runs the same steps in one process.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from class2d.em import online
from class2d.em.export import write_outputs
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState
from class2d.io.npz import write_npz
from class2d.kernels import get_backend
from class2d.prepare import PreparedStack

logger = logging.getLogger(__name__)

STATE = "state.npz"
ASSIGNMENTS = "assignments.npz"


def _setup(prepared: str, config: dict, seed: int, backend: str):
    return (PreparedStack.open(prepared), ClassifyParams.from_config(config, seed),
            get_backend(backend))


def init_step(prepared: str, state_path: str, config: dict, seed: int = 0,
              backend: str = "auto") -> None:
    stack, params, kernels = _setup(prepared, config, seed, backend)
    online.init_classes(stack, params, kernels).save(state_path)


def iteration_step(prepared: str, previous: str, state_path: str, config: dict, seed: int = 0,
                   backend: str = "auto", count: int = 1) -> None:
    """``count`` online iterations from ``previous``; saves the last state."""
    stack, params, kernels = _setup(prepared, config, seed, backend)
    state = ClassState.load(previous)
    for _ in range(count):
        state = online.online_iteration(stack, state, params, kernels)
    state.save(state_path)


def shard_step(prepared: str, previous: str, shard: int, shard_path: str, config: dict,
               seed: int = 0, backend: str = "auto", last: bool = True) -> None:
    stack, params, kernels = _setup(prepared, config, seed, backend)
    state = ClassState.load(previous)
    part = online.full_pass_shard(stack, state, params, kernels, shard, last)
    write_npz(shard_path, part)


def gather_step(prepared: str, previous: str, shard_paths: list[str], iter_dir: str,
                config: dict, seed: int = 0) -> None:
    """Sum shard statistics: writes ``iter_dir/assignments.npz`` then ``iter_dir/state.npz``."""
    stack = PreparedStack.open(prepared)
    params = ClassifyParams.from_config(config, seed)
    parts = []
    for path in shard_paths:
        with np.load(path) as data:
            parts.append({key: data[key] for key in data.files})
    state, out = online.gather_full_pass(stack, ClassState.load(previous), parts, params)
    write_npz(os.path.join(iter_dir, ASSIGNMENTS), out)
    state.save(os.path.join(iter_dir, STATE))


def export_step(prepared: str, iter_dir: str, out_dir: str, config: dict, seed: int = 0) -> None:
    stack = PreparedStack.open(prepared)
    params = ClassifyParams.from_config(config, seed)
    state = ClassState.load(os.path.join(iter_dir, STATE))
    with np.load(os.path.join(iter_dir, ASSIGNMENTS)) as data:
        out = {key: data[key] for key in data.files}
    write_outputs(stack, state, out, params, out_dir)


def iteration_dir(out_dir: str, n: int) -> str:
    return os.path.join(out_dir, f"iter_{n:03d}")


def classify_all(prepared: str, out_dir: str, config: dict, seed: int = 0,
                 backend: str = "auto") -> None:
    """Every step in one process, resuming from the last complete state file present."""
    stack, params, _ = _setup(prepared, config, seed, backend)
    n_online, n_full = params.online_iterations, params.final_full_iterations
    state_of = lambda n: os.path.join(iteration_dir(out_dir, n), STATE)  # noqa: E731
    if not os.path.exists(state_of(0)):
        init_step(prepared, state_of(0), config, seed, backend)
    for n in range(1, n_online + 1):
        if not os.path.exists(state_of(n)):
            iteration_step(prepared, state_of(n - 1), state_of(n), config, seed, backend)
    for m in range(n_online + 1, n_online + n_full + 1):
        if os.path.exists(state_of(m)):
            continue
        shards = [os.path.join(iteration_dir(out_dir, m), f"shard_{s:03d}.npz")
                  for s in range(len(stack.shard_rows))]
        for s, path in enumerate(shards):
            shard_step(prepared, state_of(m - 1), s, path, config, seed, backend,
                       last=m == n_online + n_full)
        gather_step(prepared, state_of(m - 1), shards, iteration_dir(out_dir, m), config, seed)
    export_step(prepared, iteration_dir(out_dir, n_online + n_full), out_dir, config, seed)
