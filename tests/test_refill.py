"""The class refill: the largest class's particles split and inserted within the memory budget."""

import numpy as np
import pytest

from class2d.budget import BASE_GB, ESTEP_BYTES_PER_PX, SPLIT_BYTES_PER_PX
from class2d.em import refill
from class2d.em.online import init_classes
from class2d.em.params import CLASS_COPIES, ClassifyParams
from class2d.em.passes import make_context, score_rows
from class2d.kernels import cpu
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset


@pytest.fixture(scope="module")
def full_pass(tmp_path_factory):
    """A full pass of 240 particles (32 px, 4 objects) against initial classes, one of them
    to refill: (stack, state, stats, out, ctx, the class to refill)."""
    folder = tmp_path_factory.mktemp("refill")
    data = simulate(240, box=32, apix=6.0, snr=0.5, n_objects=4, seed=2)
    stack = prepare_stack(write_dataset(data, folder / "data"), folder / "prepare",
                          max_res_A=12.0)
    params = ClassifyParams.from_config({"n_classes": 4, "max_res_A": 12.0}, seed=1)
    state = init_classes(stack, params, cpu)
    ctx = make_context(stack, params, params.align_res_A, full=True)
    stats, out = score_rows(stack, state, params, cpu, ctx, np.arange(stack.n), 1.0, hard=True)
    sizes = np.bincount(out["best_class"], minlength=4)
    assert sizes.max() >= 60          # a class large enough to take several batches
    return stack, state, stats, out, ctx, np.array([int(np.argmin(sizes))])


def run_refill(full_pass, memory_gb, monkeypatch, split=None):
    """refill_classes with ``memory_gb``: (stats, out, particles per spectra load of the
    insertion, particles per split); ``split``: MAX_SPLIT for this run."""
    stack, state, stats, out, ctx, small = full_pass
    loads, splits = [], []
    load, align = refill.load_spectra, refill.aligned_images

    def counted(stack, rows, window):
        loads.append(len(rows))
        return load(stack, rows, window)

    def counted_split(stack, rows, *poses):
        splits.append(len(rows))
        return align(stack, rows, *poses)

    monkeypatch.setattr(refill, "load_spectra", counted)
    monkeypatch.setattr(refill, "aligned_images", counted_split)
    monkeypatch.setattr(refill, "MAX_SPLIT", split or refill.MAX_SPLIT)
    params = ClassifyParams.from_config({"n_classes": 4, "max_res_A": 12.0,
                                         "memory_gb": memory_gb}, seed=1)
    new_stats, new_out, _ = refill.refill_classes(stack, stats, out, state, params, ctx, cpu,
                                                  small, np.random.default_rng(3))
    return new_stats, new_out, loads, splits


def test_refill_inserts_in_batches_from_memory_gb_with_the_unbatched_result(full_pass,
                                                                            monkeypatch):
    """At 4 GB the largest class is split and inserted whole; in a budget of about 12
    E-step particles of 32 px, it is inserted 12 at a time and split on the particles that
    budget holds (SPLIT_BYTES_PER_PX each), with the result of inserting the same split at
    once."""
    stack, state, stats, out, _, small = full_pass
    _, _, whole_loads, whole_splits = run_refill(full_pass, 4.0, monkeypatch)
    assert len(whole_loads) == 1                       # 4 GB: the class in one batch
    moved = whole_loads[0]
    assert whole_splits == [moved]                     # and all of it split
    # a budget for about 12 particles of 32 px beside the class statistics
    fixed = 4 * CLASS_COPIES * 2 * (2 * stack.box) ** 2 * 24       # as ClassifyParams counts
    small_gb = BASE_GB + (fixed + 12.5 * ESTEP_BYTES_PER_PX * stack.box ** 2) / 1e9
    params = ClassifyParams.from_config({"n_classes": 4, "memory_gb": small_gb})
    batch, most = params.estep_batch(stack.box), params.split_sample(stack.box)
    assert batch == 12 and most == int(12.5 * ESTEP_BYTES_PER_PX // SPLIT_BYTES_PER_PX)
    split_stats, split_out, loads, splits = run_refill(full_pass, small_gb, monkeypatch)
    assert moved >= 60 and len(loads) == -(-moved // batch) and max(loads) <= batch
    assert sum(loads) == moved and splits == [most] and most < moved
    # the same split of `most` particles, inserted at once
    whole_stats, whole_out, whole_loads, _ = run_refill(full_pass, 4.0, monkeypatch, most)
    assert whole_loads == [moved]
    np.testing.assert_array_equal(split_out["best_class"], whole_out["best_class"])
    assert not np.array_equal(whole_out["best_class"], out["best_class"])    # it did refill
    np.testing.assert_allclose(split_stats.counts, whole_stats.counts, rtol=1e-12)
    for name in ("num", "den"):
        got, want = getattr(split_stats, name), getattr(whole_stats, name)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(split_stats.noise_sum, whole_stats.noise_sum, rtol=1e-5)


def test_a_refilled_class_whose_prior_faded_takes_its_sources(full_pass):
    """A class whose average had faded to nothing (its Wiener prior τ² at 10⁻¹² in every
    shell, as a class of noise picks reaches) and is refilled with half of the largest
    class is reconstructed with the largest class's prior: an average as strong as the
    other half's, where its own prior left it blank (its 135 particles of one object were
    written out as a blank class, and select threw them away)."""
    import dataclasses

    from class2d.em import mstep

    stack, state, stats, out, ctx, small = full_pass
    faded = state.tau2.copy()
    faded[small] = 1e-12
    state = dataclasses.replace(state, tau2=faded)
    params = ClassifyParams.from_config({"n_classes": 4, "max_res_A": 12.0}, seed=1)
    new_stats, new_out, prior = refill.refill_classes(stack, stats, out, state, params, ctx,
                                                      cpu, small, np.random.default_rng(3))
    source = int(np.argmax(stats.counts))
    np.testing.assert_array_equal(prior[small[0]], faded[source])
    np.testing.assert_array_equal(np.delete(prior, small, 0), np.delete(faded, small, 0))
    power = {}
    for label, tau2 in (("own", faded), ("refilled", prior)):
        refs = mstep.finish(new_stats, tau2, state.sigma2, params, stack.box, stack.apix,
                            state.pad, recenter=False)[0]
        power[label] = float(np.square(refs[small[0]]).sum() / np.square(refs[source]).sum())
    assert power["own"] < 1e-6 < 0.2 < power["refilled"] < 5.0, power
    # a prior that has not faded is the class's own, as before
    healthy = refill.refill_classes(stack, stats, out, dataclasses.replace(
        state, tau2=full_pass[1].tau2), params, ctx, cpu, small, np.random.default_rng(3))[2]
    np.testing.assert_array_equal(healthy, full_pass[1].tau2)


@pytest.mark.parametrize("before, kind, expected", [
    ([180, 150, 50, 20], "online", [3]),       # below SPLIT_SHARE of an even share twice
    ([200, 120, 40, 40], "online", []),        # the pass before drew 40: not yet
    ([180, 150, 50, 20], "full", []),          # no online pass before this one
    ([360, 300, 100, 40], "online", [3]),      # shares, not counts: a pass of 800 before
])
def test_a_class_drawing_few_particles_two_passes_running_is_refilled(full_pass, before, kind,
                                                                        expected):
    """``refill.faded``: a class is refilled once it drew less than SPLIT_SHARE (0.35)
    of an even share of this pass and of the online pass before, whatever its blended count
    (a class of 0.9 % edge picks kept 35–41 of an even 100 at the end of a 3·10⁴-particle
    run while two objects shared a class).  This pass of 400 draws 190, 150, 40, 20: only
    the last class is below 35."""
    import dataclasses

    state = dataclasses.replace(full_pass[1], history=[{"kind": kind, "pass_sizes": before}])
    out = {"best_class": np.repeat(np.arange(4), [190, 150, 40, 20])}
    np.testing.assert_array_equal(refill.faded(state, out), expected)


def test_a_split_class_of_two_objects_is_sorted_into_one_object_each(tmp_path):
    """``refill.resorted``: the two halves of a class that holds two objects, split 60/40 the
    wrong way (as the first principal component leaves them at low SNR), are sorted by
    aligning every particle to both halves: each half then holds (nearly) one object."""
    import dataclasses

    data = simulate(200, box=32, apix=6.0, snr=0.2, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    stack = prepare_stack(write_dataset(data, tmp_path / "data"), tmp_path / "prepare",
                          max_res_A=12.0)
    params = ClassifyParams.from_config({"n_classes": 2, "max_res_A": 12.0}, seed=1)
    state = init_classes(stack, params, cpu)
    truth = dataclasses.replace(state, references=data.references.astype(np.float32)
                                * params.class_mask(stack.box, stack.apix))
    ctx = make_context(stack, params, params.align_res_A, full=True)
    rows = np.arange(stack.n)
    _, out = score_rows(stack, truth, params, cpu, ctx, rows, 1.0, hard=True)
    objects = data.truth["true_class"].to_numpy()
    assert np.mean(out["best_class"] == objects) >= 0.95      # the poses are the objects'
    # one class of both objects, at each particle's pose in its own object's frame: split
    # with 60 % of each object on its wrong side
    wrong = np.random.default_rng(0).random(rows.size) < 0.6
    group = (objects == 1) ^ wrong
    grids = np.zeros((2,) + state.stats.num.shape[-2:], np.complex64)
    part = refill.insert_split(stack, state, ctx, cpu, grids, rows, group,
                               (out["psi"], out["tx"], out["ty"]), params.estep_batch(stack.box))
    _, again, _, flops = refill.resorted(stack, state, params, ctx, cpu, part, rows,
                                         state.tau2[[0, 0]])
    # each object now mostly on one side, the two on different sides
    side = [np.mean(again[objects == o]) for o in (0, 1)]
    assert max(min(side), 1 - max(side)) <= 0.1 and (side[0] > 0.5) != (side[1] > 0.5), side
    # its products are counted (4 FLOPs a coefficient and pose): each round scores every
    # particle against one class at least, over the local poses around its located shift,
    # and against both over every pose at most
    per_class = 4.0 * ctx.align.size * rows.size * refill.SPLIT_ROUNDS
    assert per_class * ctx.local.size <= flops <= 2 * per_class * ctx.poses.size
