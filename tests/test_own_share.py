"""A particle's own share in its class (``em.own_share``) against leaving it out for real."""

import dataclasses

import numpy as np
import pytest

from class2d.em import mstep
from class2d.em.estep import BatchData, Entries, score_batch
from class2d.em.online import init_classes, online_iteration
from class2d.em.own_share import OwnShare
from class2d.em.params import ClassifyParams
from class2d.em.passes import accumulate, load_spectra, make_context, score_rows
from class2d.kernels import cpu
from class2d.prepare import prepare_stack
from class2d.simulate import simulate, write_dataset


@pytest.fixture(scope="module")
def hard_pass(tmp_path_factory):
    """240 particles (32 px, 4 objects, CTF) after three online iterations, then one hard
    pass whose statistics make the classes: every particle in its class once, weight 1.
    (stack, params, state, ctx, the pass's results)."""
    folder = tmp_path_factory.mktemp("own")
    data = simulate(240, box=32, apix=6.0, snr=0.3, n_objects=4, seed=5)
    stack = prepare_stack(write_dataset(data, folder / "data"), folder / "prepare",
                          max_res_A=12.0)
    params = ClassifyParams.from_config({"n_classes": 4, "max_res_A": 12.0}, seed=1)
    state = init_classes(stack, params, cpu)
    for _ in range(3):
        state = online_iteration(stack, state, params, cpu)
    ctx = make_context(stack, params, params.align_res_A, full=True)
    stats, out = score_rows(stack, state, params, cpu, ctx, np.arange(stack.n), 1.0, hard=True)
    refs, stats, _, _ = mstep.finish(stats, state.tau2, state.sigma2, params, stack.box,
                                     stack.apix, state.pad, recenter=False)
    state = dataclasses.replace(state, references=refs, stats=stats,
                                classes=out["best_class"].astype(np.int32))
    return stack, params, state, ctx, out


def masked_grid(params, state, num, den, k):
    """Class k's reference grid made from (num, den) as the M-step makes it (no re-centring)."""
    ref = mstep.reconstruct(num[None], den[None], state.tau2[[k]], state.pad, state.box,
                            params.tau2_fudge)
    radius, edge = params.mask_radius_px(state.box, state.apix)
    ref, _ = mstep.postprocess(ref, mask_radius=radius, mask_edge=edge, recenter=False,
                               recenter_threshold=0.2, clamp_solvent=False, non_negative=False)
    return mstep.reference_grids(ref, state.pad)


def pose_score(data, grid, psi, pad):
    """The E-step's score of the one particle of ``data`` (moved to its pose's shift) against
    the reference ``grid`` (1, G, G) turned by ``psi``, float64 from its definition
    (``estep``): Σ w·(2α·CTF·Re(X*·A) − α²·CTF²·|A|²)/σ²."""
    a = np.asarray(cpu.rotate_references(grid, data.freqs.fx, data.freqs.fy,
                                         np.array([psi], np.float32), pad))[0, 0]
    x, c, alpha = data.x[0].astype(np.complex128), data.ctf[0].astype(np.float64), data.alpha[0]
    w = data.freqs.wf * data.inv_sigma2
    return float(np.sum(w * (2 * alpha * c * (np.conj(x) * a).real - alpha ** 2 * c ** 2
                             * np.abs(a) ** 2)))


def test_own_share_is_what_leaving_the_particle_out_takes_from_its_score(hard_pass):
    """For 40 particles: each one's insertion taken out of its class's sums, its score at
    its own pose in that class drops by what ``OwnShare.terms`` says: within 10 % in the
    median of the ratios (the term is an expectation over the particle's noise; single
    particles scatter, 0.5–1.5), and at the best pose of the search by less, not more.
    With the cropped and masked grid's share g left out (1, not 0.17) the term would be
    six times too large."""
    stack, params, state, ctx, out = hard_pass
    own = OwnShare.of(state, params, ctx.align, 1.0)
    rows = np.random.default_rng(0).choice(stack.n, 40, replace=False)
    grid = state.stats.num.shape[-1]
    same, best, predicted = [], [], []
    for row in rows:
        k = int(state.classes[row])
        recon = BatchData.build(load_spectra(stack, np.array([row]), ctx.window),
                                ctx.ctf_params.take(np.array([row])), state.alpha[[row]],
                                ctx.recon, state.sigma2, stack.apix)
        entry = Entries.build(np.array([0]), np.array([0]), out["psi"][[row]],
                              out["tx"][[row]], out["ty"][[row]], np.ones(1), 1)
        alone = accumulate(cpu, recon, entry, np.zeros((1, grid, grid), np.complex64),
                           state.pad, ctx.n_shells, np.array([row % 2]))
        num, den = state.stats.num[k].sum(axis=0), state.stats.den[k].sum(axis=0)
        grids = [masked_grid(params, state, n, d, k) for n, d in (
            (num, den), (num - alone.num[0].sum(axis=0), den - alone.den[0].sum(axis=0)))]
        data = recon.shifted(np.array([[out["tx"][row], out["ty"][row]]], np.float32))
        data = data.subset(ctx.align_index, ctx.align)
        same.append(np.subtract(*[pose_score(data, g, out["psi"][row], state.pad)
                                  for g in grids]))
        best.append(np.subtract(*[score_batch(cpu, data, g, ctx.local, np.zeros(1), 1.0, 1,
                                              True).top_s[0, 0, 0] for g in grids]))
        predicted.append(own.terms(data, np.array([k]))[0])
    predicted = np.array(predicted)
    assert np.all(predicted > 0)
    ratio = np.median(np.array(same) / predicted)
    assert 0.9 <= ratio <= 1.1, ratio
    assert np.median(np.array(best) / predicted) < ratio


def test_own_share_lowers_only_the_particles_own_class(hard_pass):
    """The per-particle prior: each particle's own class lowered by its tempered term, the
    other classes and particles in no class as the shared prior."""
    stack, params, state, ctx, _ = hard_pass
    own = OwnShare.of(state, params, ctx.align, 0.5)
    rows = np.arange(6)
    data = BatchData.build(load_spectra(stack, rows, ctx.window), ctx.ctf_params.take(rows),
                           state.alpha[rows], ctx.recon, state.sigma2,
                           stack.apix).subset(ctx.align_index, ctx.align)
    classes = state.classes[rows].astype(np.int64)
    classes[0] = -1
    shared = np.log(np.full(4, 0.25))
    prior = own.log_prior(shared, data, classes, 0.5)
    terms = own.terms(data, classes)
    assert terms[0] == 0.0 and np.all(terms[1:] > 0)
    expected = np.tile(shared, (6, 1))
    expected[np.arange(1, 6), classes[1:]] -= 0.5 * terms[1:]
    np.testing.assert_allclose(prior, expected)
    full = OwnShare.of(state, params, ctx.align, 1.0).terms(data, classes)
    np.testing.assert_allclose(full[1:], 2 * terms[1:], rtol=1e-6)


@pytest.mark.parametrize("kinds, expected", [
    ([], 0.2), (["online"], 0.2), (["online", "full"], 1.0),
    (["online", "full", "live assigned"], 1.0), (["online", "live assigned"], 0.2),
    (["live full"], 1.0)])
def test_a_particles_weight_is_the_batch_share_online_and_one_after_a_full_pass(hard_pass,
                                                                               kinds, expected):
    """ρ: 4 classes × 100 per batch of 2,000 particles online; 1 once a full pass (or a
    Live 2D round's) made the statistics; a round that only assigns keeps the ρ before."""
    _, params, state, _, _ = hard_pass
    state = dataclasses.replace(state, history=[{"kind": kind} for kind in kinds])
    assert OwnShare.weight(state, params, 2000) == pytest.approx(expected)
    assert OwnShare.weight(state, params, 100) == 1.0
