"""The aligned-noise bias: each class's noise scored alone, in one product for all classes,
against a class-by-class reference; the images scored together bounded by the data."""

import dataclasses

import numpy as np
import pytest

from class2d.em import bias
from class2d.em.estep import score_batch, select_entries
from class2d.em.mstep import reference_grids
from class2d.em.online import init_classes, online_iteration
from class2d.em.params import ClassifyParams
from class2d.em.passes import accumulate, make_context
from class2d.kernels import cpu
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset

CONFIG = {"n_classes": 6, "max_res_A": 12.0, "online_iterations": 3}


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """(stack, state, params): 240 particles (32 px, 4 objects), 6 classes after 2 online
    iterations."""
    folder = tmp_path_factory.mktemp("bias")
    data = simulate(240, box=32, apix=6.0, snr=0.5, n_objects=4, seed=2)
    stack = prepare_stack(write_dataset(data, folder / "data"), folder / "prepare",
                          max_res_A=12.0)
    params = ClassifyParams.from_config(CONFIG, seed=1)
    state = init_classes(stack, params, cpu)
    for _ in range(2):
        state = online_iteration(stack, state, params, cpu)
    return stack, state, params


def alone_one_by_one(stack, state, params) -> np.ndarray:
    """The 'alone' part as it was computed before: each class scored by itself, in turn,
    on the same noise images."""
    rng = np.random.default_rng([params.seed, bias.BIAS_STREAM])
    ctx = make_context(stack, params, params.align_res_A, full=True)
    grids = reference_grids(state.references, state.pad)
    recon = bias._noise(stack, state, ctx, rng, bias.BIAS_IMAGES)
    data = recon.subset(ctx.align_index, ctx.align)
    out = np.zeros_like(state.tau2)
    for k in np.flatnonzero(state.stats.counts > 0):
        one = grids[k:k + 1]
        scores = score_batch(cpu, data, one, ctx.local, np.zeros(1), 1.0,
                             1 if params.force_max else params.max_poses, params.force_max)
        stats = accumulate(cpu, recon, select_entries(scores, ctx.local, False), one,
                           state.pad, ctx.n_shells, np.arange(bias.BIAS_IMAGES) % 2)
        out[k] = bias._aligned_power(stats, np.array([0]), state, params, stack)[0]
    return out


@pytest.mark.parametrize("force_max", [True, False])
def test_noise_scored_against_every_class_at_once_is_noise_scored_alone(classified, force_max,
                                                                        monkeypatch):
    stack, state, params = classified
    params = dataclasses.replace(params, force_max=force_max)     # False: several poses each
    # the together part off: no class draws enough noise images to count
    monkeypatch.setattr(bias, "MIN_TOGETHER", np.inf)
    got = bias.alignment_bias(stack, state, params, cpu)
    expected = alone_one_by_one(stack, state, params)
    assert expected[:, 2:].max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_noise_scored_together_is_bounded_by_the_particles(classified, monkeypatch):
    stack, state, params = classified
    drawn = []
    noise = bias._noise

    def counted(stack, state, ctx, rng, m):
        drawn.append(m)
        return noise(stack, state, ctx, rng, m)

    monkeypatch.setattr(bias, "_noise", counted)
    monkeypatch.setattr(bias, "IMAGES_PER_CLASS", 100)      # 6 classes: 600 > 240 particles
    bias.alignment_bias(stack, state, params, cpu)
    assert drawn[0] == bias.BIAS_IMAGES and sum(drawn[1:]) == stack.n
