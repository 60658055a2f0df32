"""Live classification: a particle file that grows while the microscope collects.

    >>> hashes = row_hashes(io.read_particles("run_data.star"))     # (n,) uint64, one a row
    >>> plan = plan_shards(hashes, "results/prepare", shards=0, particles_per_shard=1000)
    >>> plan.rows, plan.case, plan.why   # ((0, 1000), (1000, 1350)), "grown", "1200 -> 1350"
    >>> decide(hashes, "results/classify", settings)       # Decision(round=3, case="grown", …)

The same ``snakemake`` command on a grown file (rows appended) prepares only the shards
whose rows changed and classifies from the last exported state (a *live round*,
:func:`live_round`) instead of from scratch.  Whether rows were appended or rewritten is
told by hashes of the rows' contents (:func:`row_hashes`), compared with what the prepare
folder's record (``layout.prepared_rows``, written by :func:`write_prepared_rows`) and the
classify folder's record (``layout.live_record``, written by :func:`remember`) say was
done.  A changed setting or a rewritten row means a fresh run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from typing import NamedTuple

import numpy as np
import pandas as pd

from class2d import io, layout, prepare
from class2d.classify import Classification, export_step
from class2d.em import online
from class2d.em.state import ClassState
from class2d.io.atomic import atomic_path, read_json, write_json
from class2d.io.npz import write_npz

logger = logging.getLogger(__name__)


def row_hashes(table: io.ParticleTable) -> np.ndarray:
    """(n,) uint64: a hash of each particle row's values, its optics group's folded in (a
    changed pixel size changes every row)."""
    rows = pd.util.hash_pandas_object(table.particles, index=False).to_numpy(np.uint64)
    optics = pd.util.hash_pandas_object(table.optics, index=False).to_numpy(np.uint64)
    return rows ^ np.uint64(int.from_bytes(hashlib.sha1(optics.tobytes()).digest()[:8], "big"))


def input_hashes(path: str, prepare_dir: str) -> np.ndarray:
    """``row_hashes`` of the particle file ``path``, read again only when its size or time
    changed since the copy kept in ``prepare_dir`` (``layout.row_hashes``): the workflow
    asks for them whenever it builds its graph, in every cluster job too, and 10⁶ rows
    take seconds to parse."""
    info = os.stat(path)
    key = np.array([info.st_size, info.st_mtime_ns], np.int64)
    cache = layout.row_hashes(prepare_dir)
    try:
        with np.load(cache) as kept:
            if str(kept["path"]) == os.path.abspath(path) and np.array_equal(kept["key"], key):
                return kept["hashes"]
    except (OSError, KeyError, ValueError):
        pass
    hashes = row_hashes(io.read_particles(path))
    if os.path.isdir(prepare_dir):
        write_npz(cache, {"path": np.array(os.path.abspath(path)), "key": key,
                          "hashes": hashes})
    return hashes


def digest(hashes: np.ndarray) -> str:
    """A short hex digest of some rows' hashes (``row_hashes``)."""
    return hashlib.sha1(np.ascontiguousarray(hashes, np.uint64).tobytes()).hexdigest()[:16]


class ShardPlan(NamedTuple):
    """The shards of a preparation and how the input compares with the last one."""

    rows: tuple[tuple[int, int], ...]
    """input rows (start, stop) of every shard"""
    digests: tuple[str, ...]
    """``digest`` of every shard's rows: a shard is prepared again when its digest changes"""
    case: str
    """``fresh``, ``unchanged``, ``grown`` or ``rewritten`` (against the prepare record)"""
    why: str
    """one line for the log"""


def plan_shards(hashes: np.ndarray, prepare_dir: str, shards: int = 0,
                particles_per_shard: int = 50_000) -> ShardPlan:
    """The shards for the input whose rows hash to ``hashes``.

    A first preparation (or one with other shard settings, or on rewritten rows) splits
    the rows as ``prepare.shard_rows`` does.  When rows were only appended, every recorded
    shard keeps its rows but the last, which grows to ``particles_per_shard`` (or its own
    size, if larger); further rows go into new shards of ``particles_per_shard``.
    """
    n = hashes.size
    record = read_json(layout.prepared_rows(prepare_dir))
    settings = {"shards": int(shards), "particles_per_shard": int(particles_per_shard)}
    case, why = _compare(record, hashes, settings, "prepared")
    if case in ("fresh", "rewritten"):
        count = int(shards) or max(1, -(-n // int(particles_per_shard)))
        rows = prepare.shard_rows(n, count)
    elif case == "unchanged":
        rows = tuple(tuple(r) for r in record["shard_rows"])
    else:
        kept = [tuple(r) for r in record["shard_rows"][:-1]]
        start, stop = record["shard_rows"][-1]
        size = max(stop - start, int(particles_per_shard))
        while start < n:
            kept.append((start, min(n, start + size)))
            start, size = kept[-1][1], int(particles_per_shard)
        rows = tuple(kept)
    return ShardPlan(rows, tuple(digest(hashes[a:b]) for a, b in rows), case, why)


def _compare(record: dict | None, hashes: np.ndarray, settings: dict,
             what: str) -> tuple[str, str]:
    """How the input compares with ``record`` (``rows``: the rows it covered, ``digest``
    theirs, ``settings``): the case and why."""
    n = hashes.size
    if record is None:
        return "fresh", f"nothing {what} before: a fresh run on {n} particles"
    if record["settings"] != settings:
        changed = sorted(k for k in set(record["settings"]) | set(settings)
                         if record["settings"].get(k) != settings.get(k))
        return "fresh", f"settings changed ({', '.join(changed)}): a fresh run on {n} particles"
    old = int(record["rows"])
    if n < old or digest(hashes[:old]) != record["digest"]:
        return "rewritten", (f"the input was rewritten, not appended to ({old} rows {what} "
                             f"before, {n} now, the first {min(n, old)} not the same): a "
                             f"fresh run")
    if n == old:
        return "unchanged", f"the input is unchanged: {n} particles"
    return "grown", f"the input grew from {old} to {n} particles"


def write_prepared_rows(particles: str | os.PathLike, prepare_dir: str,
                        rows: tuple[tuple[int, int], ...], shards: int,
                        particles_per_shard: int) -> None:
    """Record in ``prepare_dir`` which input rows its shards were prepared from."""
    hashes = row_hashes(io.read_particles(particles))[:rows[-1][1]]
    write_json(layout.prepared_rows(prepare_dir), {
        "rows": int(hashes.size), "digest": digest(hashes),
        "settings": {"shards": int(shards), "particles_per_shard": int(particles_per_shard)},
        "shard_rows": [list(r) for r in rows]})


class Decision(NamedTuple):
    """How the classification goes on: ``round`` 0 is the batch chain, a later one a live
    round from the last exported state (``live_round``)."""

    round: int
    case: str
    why: str


def decide(hashes: np.ndarray, classify_dir: str, settings: dict) -> Decision:
    """Batch chain or live round, from the classify record (``remember``) and the input."""
    record = read_json(layout.live_record(classify_dir))
    case, why = _compare(record, hashes, settings, "classified")
    if case == "grown":
        return Decision(record["round"] + 1, case, why + ": classifying from the last state")
    if case == "unchanged":
        return Decision(record["round"], case, why)
    return Decision(0, case, why)


def _grown_state(state: ClassState, n: int) -> ClassState:
    """``state`` for ``n`` particles: the new ones not seen yet (class −1, scale 1)."""
    extra = n - state.classes.size
    return dataclasses.replace(
        state, alpha=np.concatenate([state.alpha, np.ones(extra, state.alpha.dtype)]),
        classes=np.concatenate([state.classes, np.full(extra, -1, state.classes.dtype)]),
        shifts=np.concatenate([state.shifts, np.zeros((extra, 2), state.shifts.dtype)]))


def live_round(meta: str, previous: str, assignments: str, record: str, state_path: str,
               assignments_path: str, info_path: str, config: dict, seed: int = 0,
               backend: str = "auto") -> None:
    """One live round from the last exported state ``previous`` (and its ``assignments``,
    ``record``): a full iteration over every particle once ``2 × batch_per_class ×
    n_classes`` particles arrived since the last full iteration (CryoSPARC Live's rule),
    otherwise only the new particles assigned against the current classes."""
    run = Classification(meta, config, seed, backend)
    last = read_json(record)
    stack, params = run.stack, run.params
    state = _grown_state(ClassState.load(previous), stack.n)
    with np.load(assignments) as data:
        old = {key: data[key] for key in data.files}
    seen = int(old["rows"].size)
    threshold = 2 * params.batch_per_class * params.n_classes
    arrived = stack.n - last["n_at_full"]
    if arrived >= threshold:
        logger.info("live round %d: %d particles since the last full iteration (>= %d): one "
                    "full iteration over all %d", last["round"] + 1, arrived, threshold, stack.n)
        parts = (online.full_pass_shard(stack, state, params, run.kernels, s, True)
                 for s in range(len(stack.shard_rows)))
        state, out = online.gather_full_pass(stack, state, parts, params, run.kernels,
                                             kind="live full")
        n_at_full = stack.n
    else:
        logger.info("live round %d: %d particles since the last full iteration (< %d): "
                    "assigning the %d new ones to the current classes", last["round"] + 1,
                    arrived, threshold, stack.n - seen)
        part = online.full_pass_shard(stack, state, params, run.kernels, 0, True,
                                      rows=np.arange(seen, stack.n))
        out = {key: np.concatenate([old[key], part[key]]) for key in old if key != "flops"}
        out["flops"] = part["flops"]
        state = online.assigned(stack, state, params, part)
        n_at_full = last["n_at_full"]
    write_npz(assignments_path, out)
    state.save(state_path)
    write_json(info_path, {"round": last["round"] + 1, "n_at_full": n_at_full})


def remember(meta: str, state: str, assignments: str, out_dir: str, config: dict,
             seed: int, record: dict, info: str | None = None) -> None:
    """Export the classes (``classify.export_step``), then keep the state and assignments
    they came from, and what they cover, for the next live round (``layout.live_dir``).

    record: ``rows``, ``digest`` and ``settings`` of the input they were made from; info:
    the live round's ``info_path`` (None after the batch chain)."""
    export_step(meta, state, assignments, out_dir, config, seed)
    round_info = read_json(info) if info else {"round": 0, "n_at_full": None}
    with np.load(assignments) as data:
        n = int(data["rows"].size)
    for source, target in ((state, layout.STATE), (assignments, layout.ASSIGNMENTS)):
        with atomic_path(layout.live_file(out_dir, target)) as tmp:
            shutil.copyfile(source, tmp)
    write_json(layout.live_record(out_dir), {
        **record, "round": round_info["round"], "particles": n,
        "n_at_full": n if round_info["n_at_full"] is None else round_info["n_at_full"]})


def finish_prepare(particles: str | os.PathLike, out_dir: str, rows: list[tuple[int, int]],
                   shards: int, particles_per_shard: int, **settings) -> None:
    """``prepare.finish_prepare`` on the shards of ``rows``, then the record of them
    (``write_prepared_rows``); shards, particles_per_shard: the config's, for the record."""
    prepare.finish_prepare(particles, out_dir, len(rows), rows=rows, **settings)
    write_prepared_rows(particles, out_dir, tuple(tuple(r) for r in rows), shards,
                        particles_per_shard)
