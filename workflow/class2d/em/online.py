"""Online EM as CryoSPARC runs it: initial classes, mini-batch iterations, sharded full passes.

    >>> state = init_classes(stack, params, backend)                     # iteration 0
    >>> state = online_iteration(stack, state, params, backend)          # 1 … n
    >>> part = full_pass_shard(stack, state, params, backend, shard=0, last=True)  # per shard
    >>> state, assignments = gather_full_pass(stack, state, [part], params, backend)

An iteration's batch that is more than a quarter of a small set is taken in several updates
(``ClassifyParams.online_steps``), each one as an online iteration of a longer run.

Every random choice is drawn from ``numpy.random.default_rng([seed, iteration])`` so a
resumed run repeats exactly what an uninterrupted one would have done.  A pass over rows
is in ``passes.py``, the class refill in ``refill.py``, the M-step in ``mstep.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import numpy as np

from class2d import timing
from class2d.em import mstep
from class2d.em.estep import BatchData, Entries
from class2d.em.grids import FrequencySet
from class2d.em.outliers import FEATURES, outlier_features
from class2d.em.params import ClassifyParams
from class2d.em.passes import RESULT_KEYS, accumulate, load_spectra, make_context, score_rows
from class2d.em.refill import MIN_SPLIT, online_refills, refill_classes, splittable
from class2d.em.state import ClassState, Statistics
from class2d.em.twins import merge_twins
from class2d.prepare import PreparedStack
from class2d.timing import timer

logger = logging.getLogger(__name__)


def initial_sigma2(stack: PreparedStack, rng: np.random.Generator, n_shells: int,
                   window: np.ndarray) -> np.ndarray:
    """Noise power per shell, first guess: the windowed particles' own mean power per shell."""
    rows = np.sort(rng.choice(stack.n, min(stack.n, 500), replace=False))
    spectra = load_spectra(stack, rows, window)
    freqs = FrequencySet.within(stack.box, stack.box / 2, 0.0)
    power = np.abs(freqs.take(spectra)) ** 2
    sums = np.bincount(freqs.shell, power.sum(axis=0), n_shells)
    counts = np.bincount(freqs.shell, minlength=n_shells) * rows.size
    return np.maximum(sums / np.maximum(counts, 1), 1e-12)


@timer("initial classes")
def init_classes(stack: PreparedStack, params: ClassifyParams, backend) -> ClassState:
    """Iteration 0: each class the average of a random subset at random rotations."""
    rng = np.random.default_rng([params.seed, 0])
    ctx = make_context(stack, params, params.first_res_A)
    k_count, pad, box = params.n_classes, params.zeropad, stack.box
    per_class = max(3, min(stack.n // k_count, 20))
    rows = rng.choice(stack.n, size=per_class * k_count, replace=per_class * k_count > stack.n)
    sigma2 = initial_sigma2(stack, rng, ctx.n_shells, ctx.window)
    alpha = np.ones(stack.n, np.float32)
    unique_rows, local = np.unique(rows, return_inverse=True)
    data = BatchData.build(load_spectra(stack, unique_rows, ctx.window),
                           ctx.ctf_params.take(unique_rows),
                           alpha[unique_rows], ctx.recon, sigma2, stack.apix)
    classes = np.repeat(np.arange(k_count), per_class)
    zeros = np.zeros(rows.size)
    entries = Entries.build(local, classes, rng.uniform(0, 2 * np.pi, rows.size), zeros, zeros,
                            np.ones(rows.size), k_count)
    empty_grids = np.zeros((k_count, pad * box, pad * box), np.complex64)
    stats = accumulate(backend, data, entries, empty_grids, pad, ctx.n_shells,
                       (unique_rows % 2).astype(np.int64))
    refs, stats, _, tau2 = mstep.finish(stats, np.tile(sigma2, (k_count, 1)), sigma2, params,
                                        box, stack.apix, pad, recenter=False)
    return ClassState(iteration=0, references=refs, stats=stats.as_stored(), sigma2=sigma2,
                      tau2=tau2, alpha=alpha, classes=np.full(stack.n, -1, np.int32),
                      shifts=np.zeros((stack.n, 2), np.float32), apix=stack.apix, pad=pad,
                      history=[])


def changed_share(state: ClassState, out: dict) -> float:
    """Share of the pass's particles seen before whose best class is not their last one
    (1.0 when none was seen before)."""
    previous = state.classes[out["rows"]]
    seen = previous >= 0
    return float(np.mean(previous[seen] != out["best_class"][seen])) if seen.any() else 1.0


def _updated(state: ClassState, out: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle class and shift memory after a pass."""
    rows = out["rows"]
    classes, shifts = state.classes.copy(), state.shifts.copy()
    classes[rows] = out["best_class"]
    shifts[rows] = np.stack([out["tx"], out["ty"]], axis=1)
    return classes, shifts


def assigned(stack: PreparedStack, state: ClassState, params: ClassifyParams,
             part: Mapping) -> ClassState:
    """``state`` with the particles of a pass over some rows (``full_pass_shard``'s result
    ``part``) assigned: their class and shift remembered, the classes unchanged, and a
    history row of kind ``"live assigned"`` (``class2d.live``'s round that only assigns
    new particles: one point of the convergence plot)."""
    classes, shifts = _updated(state, part)
    ctx = make_context(stack, params, params.align_res_A, full=True)
    row = _history_row(state.iteration + 1, "live assigned", params.align_res_A, ctx, part,
                       state.stats, 0.0)
    return dataclasses.replace(state, iteration=state.iteration + 1, classes=classes,
                               shifts=shifts, history=state.history + [row])


def online_iteration(stack: PreparedStack, state: ClassState, params: ClassifyParams,
                     backend) -> ClassState:
    """One online-EM iteration on a random mini-batch; returns the next state."""
    with timing.record() as spent, timer("online iteration"):
        new = _online_iteration(stack, state, params, backend)
    logger.info("iteration %(iteration)d: res %(res_A).1f Å, %(poses)d poses, logL %(loglik).4g, "
                "changed %(changed).3f, %(gflops).1f GFLOP, E-step %(estep_seconds).2f s, "
                "iteration %(seconds).2f s", _timed(new.history[-1], spent))
    return new


def _online_iteration(stack: PreparedStack, state: ClassState, params: ClassifyParams,
                      backend) -> ClassState:
    n = state.iteration + 1
    rng = np.random.default_rng([params.seed, n])
    size = min(stack.n, params.batch_per_class * params.n_classes)
    rows = np.sort(rng.choice(stack.n, size=size, replace=False))
    steps = params.online_steps(stack.n)
    if steps == 1:
        return _online_step(stack, state, params, backend, rows, rng)
    # the iteration's batch in ``steps`` updates, each as an online iteration of a run of
    # ``steps`` × as many (its annealing, resolution and blend schedules, its refills);
    # the state keeps one history row for the iteration
    stepped = dataclasses.replace(params, online_iterations=params.online_iterations * steps)
    current = dataclasses.replace(state, iteration=(n - 1) * steps)
    for j, part in enumerate(np.array_split(rng.permutation(rows), steps)):
        current = _online_step(stack, current, stepped, backend, np.sort(part), rng,
                               look_for_twins=j == steps - 1)
    row = _joined_row(n, current.history[-steps:])
    return dataclasses.replace(current, iteration=n, history=state.history + [row])


def _joined_row(n: int, rows: list[dict]) -> dict:
    """The history row of online iteration ``n`` taken in several updates (``rows``: theirs):
    the last update's classes, every update's particles."""
    counts = [row["particles"] for row in rows]
    return {**rows[-1], "iteration": n, "particles": sum(counts),
            "loglik": float(np.average([row["loglik"] for row in rows], weights=counts)),
            "changed": float(np.average([row["changed"] for row in rows], weights=counts)),
            "pass_sizes": np.sum([row["pass_sizes"] for row in rows], axis=0).tolist(),
            "gflops": sum(row["gflops"] for row in rows)}


def _online_step(stack: PreparedStack, state: ClassState, params: ClassifyParams, backend,
                 rows: np.ndarray, rng: np.random.Generator,
                 look_for_twins: bool = True) -> ClassState:
    """One update of online EM from the particles ``rows``: the next state.  Without
    ``look_for_twins`` it refills no class for showing another's object
    (``refill.online_refills``)."""
    n = state.iteration + 1
    res = params.resolution_at(n)
    ctx = make_context(stack, params, res)
    batch, out = score_rows(stack, state, params, backend, ctx, rows,
                            1.0 / params.temperature_at(n), hard=False)
    stats = state.stats.blend(batch, params.step_size_at(n))
    changed = changed_share(state, out)
    merged = np.zeros(0, np.int64)
    tau2 = state.tau2
    if n < params.online_iterations:
        stats, out, tau2 = refill_classes(
            stack, stats, out, state, params, ctx, backend,
            online_refills(stats, state, params, out, look_for_twins), rng)
    elif params.merge_twin_classes and splittable(out, state.n_classes).any():
        # twins merged; a class they empty takes half of the largest only where that holds
        # more than one object, else it stays empty and is not scored again. No merge where
        # no class can be split: after a short run two classes mixing the same objects read
        # as twins, and only a split of their merged class would part them again
        stats, merged = merge_twins(stats, batch, state, params)
        stats, out, tau2 = refill_classes(stack, stats, out, state, params, ctx, backend,
                                          merged, rng, distinct_only=True)
    refs, stats, sigma2, tau2 = mstep.finish(stats, tau2, state.sigma2, params,
                                             stack.box, stack.apix, state.pad, recenter=True)
    alpha = state.alpha.copy()
    if params.per_particle_scale and n > 1:
        alpha[rows] = np.clip(out["ratio"], 0.2, 5.0)
    classes, shifts = _updated(state, out)
    classes[np.isin(classes, merged)] = -1        # located anew by the full pass
    row = _history_row(n, "online", res, ctx, out, stats, changed)
    return ClassState(iteration=n, references=refs, stats=stats.as_stored(), sigma2=sigma2,
                      tau2=tau2, alpha=alpha, classes=classes, shifts=shifts, apix=state.apix,
                      pad=state.pad, history=state.history + [row])


def _history_row(n, kind, res, ctx, out, stats, changed) -> dict:
    """What the state file keeps of an iteration: nothing measured, so the same seed gives
    the same bytes (times go to the log, ``_timed``)."""
    return {"iteration": n, "kind": kind, "res_A": float(res), "poses": int(ctx.poses.size),
            "local_poses": int(ctx.local.size), "frequencies": int(ctx.align.size),
            "particles": int(out["best_class"].size),
            "loglik": float(np.mean(out["loglik"])), "changed": changed,
            "class_sizes": [round(float(c), 2) for c in stats.counts],
            "pass_sizes": np.bincount(out["best_class"], minlength=stats.counts.size).tolist(),
            "gflops": out["flops"] / 1e9}


def _timed(row: dict, spent: timing.Budget) -> dict:
    """``row`` with the seconds of scoring and of all parts in ``spent``, for a log line
    (``bench/bench_classify.py`` reads them from the log record's arguments)."""
    return {**row, "estep_seconds": spent.seconds("scoring"), "seconds": spent.total}


def full_pass_shard(stack: PreparedStack, state: ClassState, params: ClassifyParams, backend,
                    shard: int, last: bool, rows: np.ndarray | None = None) -> dict:
    """E-step over every particle of one shard (or over ``rows``, given): statistics and
    per-particle results, and with ``last`` each particle's outlier features
    (``outliers.outlier_features``)."""
    if rows is None:
        rows = np.arange(*stack.shard_rows[shard])
    with timing.record() as spent, timer("full pass"):
        ctx = make_context(stack, params, params.align_res_A, full=True)
        stats, out = score_rows(stack, state, params, backend, ctx, rows, 1.0,
                                hard=last and params.hard_last_iteration)
        out.update(stats.to_file())
        if last:
            # against the classes the shard aligned to: the work scatters with the shards
            out.update(outlier_features(stack, rows, state.references,
                                        out["best_class"], out["psi"], out["tx"], out["ty"],
                                        params.mask_diameter_px(stack.box, stack.apix)))
    logger.info("full pass %(iteration)d, shard %(shard)d: %(particles)d particles, "
                "%(gflops).1f GFLOP, E-step %(estep_seconds).2f s, shard %(seconds).2f s",
                _timed({"iteration": state.iteration + 1, "shard": shard, "particles": rows.size,
                        "gflops": out["flops"] / 1e9}, spent))
    return out


@timer("full pass gather")
def gather_full_pass(stack: PreparedStack, state: ClassState, parts: Iterable[Mapping],
                     params: ClassifyParams, backend,
                     kind: str = "full") -> tuple[ClassState, dict]:
    """Sum the shards' statistics into the next state; concatenate per-particle results;
    ``kind``: what its history row says (``class2d.live``: ``"live full"``).
    A class left with fewer than ``refill.MIN_SPLIT`` particles is refilled from the
    largest (``refill.refill_classes``; its moved particles keep the posterior values of
    their old class), so that no class is written empty while others hold hundreds.

    parts: each shard's results, read once in order (an iterator that loads one shard file
    at a time holds one shard's statistics, not all of them)."""
    stats = None
    columns: dict[str, list] = {}
    flops = 0.0
    for part in parts:
        shard = Statistics.from_file(part)
        stats = shard if stats is None else stats + shard
        # the per-particle outlier features come with the last full pass's shards
        for key in RESULT_KEYS + tuple(name for name in FEATURES if name in part):
            columns.setdefault(key, []).append(np.asarray(part[key]))
        flops += float(part["flops"])
    out = {key: np.concatenate(value) for key, value in columns.items()}
    out["flops"] = flops
    n = state.iteration + 1
    ctx = make_context(stack, params, params.align_res_A, full=True)
    changed = changed_share(state, out)
    rng = np.random.default_rng([params.seed, n])
    # one class at a time, each split taking the particles as the last left them (the
    # labels are what is written)
    tau2 = state.tau2.copy()
    for k in np.flatnonzero((np.bincount(out["best_class"], minlength=state.n_classes)
                             < MIN_SPLIT) & (state.stats.counts > 0)):
        stats, out, prior = refill_classes(stack, stats, out, state, params, ctx, backend,
                                           np.array([k]), rng)
        tau2[k] = prior[k]
    refs, stats, sigma2, tau2 = mstep.finish(stats, tau2, state.sigma2, params,
                                             stack.box, stack.apix, state.pad, recenter=False)
    classes, shifts = _updated(state, out)
    row = _history_row(n, kind, params.align_res_A, ctx, out, stats, changed)
    logger.info("full pass %(iteration)d: logL %(loglik).4g, changed %(changed).3f, "
                "%(gflops).1f GFLOP", row)
    new = ClassState(iteration=n, references=refs, stats=stats.as_stored(), sigma2=sigma2,
                     tau2=tau2, alpha=state.alpha, classes=classes, shifts=shifts, apix=state.apix,
                     pad=state.pad, history=state.history + [row])
    return new, out
