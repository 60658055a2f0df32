"""The class refill: the largest class's particles inserted in batches from the memory budget."""

import numpy as np
import pytest

from class2d.budget import BASE_GB, ESTEP_BYTES_PER_PX
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


def run_refill(full_pass, memory_gb, monkeypatch):
    """refill_classes with ``memory_gb``: (stats, out, particles per spectra load)."""
    stack, state, stats, out, ctx, small = full_pass
    loads = []
    load = refill.load_spectra

    def counted(stack, rows, window):
        loads.append(len(rows))
        return load(stack, rows, window)

    monkeypatch.setattr(refill, "load_spectra", counted)
    params = ClassifyParams.from_config({"n_classes": 4, "max_res_A": 12.0,
                                         "memory_gb": memory_gb}, seed=1)
    new_stats, new_out = refill.refill_classes(stack, stats, out, state, params, ctx, cpu,
                                               small, np.random.default_rng(3))
    return new_stats, new_out, loads


def test_refill_inserts_in_batches_from_memory_gb_with_the_unbatched_result(full_pass,
                                                                            monkeypatch):
    stack, state, stats, out, _, small = full_pass
    whole_stats, whole_out, whole_loads = run_refill(full_pass, 4.0, monkeypatch)
    assert len(whole_loads) == 1                       # 4 GB: the class in one batch
    # a budget for about 12 particles of 32 px beside the class statistics
    fixed = 4 * CLASS_COPIES * 2 * (2 * stack.box) ** 2 * 24       # as ClassifyParams counts
    small_gb = BASE_GB + (fixed + 12.5 * ESTEP_BYTES_PER_PX * stack.box ** 2) / 1e9
    params = ClassifyParams.from_config({"n_classes": 4, "memory_gb": small_gb})
    batch = params.estep_batch(stack.box)
    assert batch == 12
    split_stats, split_out, loads = run_refill(full_pass, small_gb, monkeypatch)
    moved = whole_loads[0]
    assert moved >= 60 and len(loads) == -(-moved // batch) and max(loads) <= batch
    assert sum(loads) == moved
    np.testing.assert_array_equal(split_out["best_class"], whole_out["best_class"])
    assert not np.array_equal(whole_out["best_class"], out["best_class"])    # it did refill
    np.testing.assert_allclose(split_stats.counts, whole_stats.counts, rtol=1e-12)
    for name in ("num", "den"):
        got, want = getattr(split_stats, name), getattr(whole_stats, name)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(split_stats.noise_sum, whole_stats.noise_sum, rtol=1e-5)
