"""Twin classes (em.twins): one object in two classes is found and merged; two views that
differ in their signal, however alike, are not.

The classes are built from known images: each half set's sums are a noisy image's padded
Fourier grid times a flat weight, so the unfiltered half averages are those images and the
noise level (hence every class's C per shell) is known.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from class2d.em import mstep, twins
from class2d.em.state import ClassState, Statistics
from class2d.em.params import ClassifyParams
from class2d.em.twins import merge_twins, merged, twin_pairs
from class2d.fourier import circular_mask, frc, rotate_images, shift_images

BOX, PAD = 64, 2


def blob_object(rng, smooth=1.5):
    """A smooth random object inside a radius of 20 px, unit variance inside."""
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    image = ndimage.gaussian_filter(rng.normal(size=(BOX, BOX)), smooth) * (np.hypot(x, y) < 20)
    return image / image[np.hypot(x, y) < 20].std()


def state_of(signals, noise, rng, counts=None):
    """A ClassState whose class k has half averages signals[k] + noise·N(0, 1) each."""
    k_count = len(signals)
    grid = PAD * BOX
    num = np.zeros((k_count, 2, grid, grid), np.complex128)
    den = np.ones((k_count, 2, grid, grid))
    for k, signal in enumerate(signals):
        halves = signal[None] + noise * rng.normal(size=(2, BOX, BOX))
        num[k] = mstep.reference_grids(halves.astype(np.float32), PAD)
    counts = np.full(k_count, 100.0) if counts is None else np.asarray(counts, float)
    stats = Statistics(num=num, den=den, counts=counts, noise_sum=np.zeros(BOX // 2 + 1),
                       noise_count=np.ones(BOX // 2 + 1))
    mask = circular_mask(BOX, 26, 3)
    return ClassState(iteration=5, references=(np.stack(signals) * mask).astype(np.float32),
                      stats=stats, sigma2=np.ones(BOX // 2 + 1), tau2=np.ones((k_count, 33)),
                      alpha=np.ones(10, np.float32), classes=np.zeros(10, np.int32),
                      shifts=np.zeros((10, 2), np.float32), apix=3.0, pad=PAD, history=[]), mask


@pytest.fixture(scope="module")
def objects():
    rng = np.random.default_rng(7)
    return [blob_object(rng) for _ in range(4)]


def turned_and_shifted(image, angle, shift):
    return shift_images(rotate_images(image, angle, 3)[None], np.array([shift]))[0]


@pytest.mark.parametrize("change", [1.0, 0.5])
def test_a_turned_and_shifted_copy_is_a_twin_unless_a_near_view_joins_them(objects, change):
    """Classes: three objects, object 0 turned and shifted, and a view near object 0 whose
    signal correlates 1/√(1 + change²) with it: 0.71 (measured 0.69), a view apart, or 0.89
    (measured 0.88), a neighbour: then the pair is not known to be one object."""
    rng = np.random.default_rng(1)
    twin = turned_and_shifted(objects[0], 63.0, (2.5, -1.5))
    near = objects[0] + change * blob_object(rng)
    state, mask = state_of([objects[0], objects[1], objects[2], twin, near], noise=0.5,
                           rng=rng, counts=[100, 100, 100, 60, 100])
    pairs = twin_pairs(state, mask)
    if change == 0.5:
        assert pairs == []
        return
    assert [(p.keep, p.drop) for p in pairs] == [(0, 3)]
    pair = pairs[0]
    assert pair.signal == pytest.approx(1.0, abs=0.05)
    # the drop class turned and shifted as found lands on the kept one
    back = turned_and_shifted(twin, pair.angle, pair.shift)
    inside = mask > 0.5
    assert np.corrcoef(back[inside], objects[0][inside])[0, 1] >= 0.99
    assert pair.angle % 360 == pytest.approx(297.0, abs=1.0)


def test_views_of_a_continuous_object_are_not_twins(objects):
    """Six classes along a path of views, each signal correlating cos(0.185 k) with the k-th
    next (0.98, 0.93, 0.85, …): neighbours agree like twins and join one group, but it holds
    pairs that do not (none in [ALONE, TWIN_SIGNAL) to flag it), so none is merged; the
    group of a split object agrees throughout."""
    rng = np.random.default_rng(6)
    other = blob_object(rng)
    other -= other.ravel() @ objects[3].ravel() / (objects[3].ravel() @ objects[3].ravel()) \
        * objects[3]
    other *= np.linalg.norm(objects[3]) / np.linalg.norm(other)
    path = [np.cos(0.185 * k) * objects[3] + np.sin(0.185 * k) * other for k in range(6)]
    state, mask = state_of(path + [objects[0], objects[1]], noise=0.1, rng=rng)
    assert twin_pairs(state, mask) == []


def test_three_classes_of_one_object_merge_into_the_largest(objects):
    rng = np.random.default_rng(5)
    copies = [turned_and_shifted(objects[1], angle, shift)
              for angle, shift in ((100.0, (1.0, 2.0)), (-30.0, (-2.0, 0.5)))]
    state, mask = state_of([objects[0], objects[1], objects[2]] + copies, noise=0.5, rng=rng,
                           counts=[100, 120, 100, 60, 50])
    pairs = twin_pairs(state, mask)
    assert sorted((p.keep, p.drop) for p in pairs) == [(1, 3), (1, 4)]
    inside = mask > 0.5
    for pair in pairs:
        back = turned_and_shifted(state.references[pair.drop], pair.angle, pair.shift)
        assert np.corrcoef(back[inside], objects[1][inside])[0, 1] >= 0.99


def test_twins_are_not_found_where_the_classes_measure_nothing(objects):
    rng = np.random.default_rng(2)
    twin = turned_and_shifted(objects[0], 40.0, (0.0, 0.0))
    # noise 30 times the signal: no shell is measured well enough to tell
    state, mask = state_of([objects[0], twin, objects[1]], noise=30.0, rng=rng)
    assert twin_pairs(state, mask) == []


def test_merging_moves_the_dropped_sums_into_the_kept_frame(objects):
    rng = np.random.default_rng(3)
    twin = turned_and_shifted(objects[0], 150.0, (-3.0, 2.0))
    state, mask = state_of([objects[0], objects[1], twin], noise=0.05, rng=rng,
                           counts=[100, 80, 50])
    pairs = twin_pairs(state, mask)
    assert [(p.keep, p.drop) for p in pairs] == [(0, 2)]
    stats, done = merged(state.stats, pairs, PAD)
    assert done == pairs
    assert stats.counts.tolist() == [150, 80, 0]
    assert not stats.num[2].any() and not stats.den[2].any()
    np.testing.assert_array_equal(stats.num[1], state.stats.num[1])
    # the kept class now holds both: its average (num/den, den 2 where both inserted) is the
    # object, and the dropped class's own part is the object in the kept frame
    own = mstep.unfiltered(stats.num[:1, 0] - state.stats.num[:1, 0],
                           stats.den[:1, 0] - state.stats.den[:1, 0], state.sigma2, PAD, BOX)[0]
    inside = mask > 0.5
    assert np.corrcoef(own[inside], objects[0][inside])[0, 1] >= 0.98
    curve = frc(own * mask, objects[0] * mask)
    assert curve[1:20].min() >= 0.9


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory):
    """200 particles of 2 distinct objects (32 px, 6 Å/px, SNR 1), prepared."""
    from class2d.prepare import prepare_stack
    from class2d.simulate import simulate, write_dataset

    folder = tmp_path_factory.mktemp("twins")
    data = simulate(200, box=32, apix=6.0, snr=1.0, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    prepare_stack(write_dataset(data, folder / "data"), folder / "prep")
    return data, str(folder / "prep"), folder


@pytest.mark.parametrize("merge", [True, False])
def test_two_objects_in_four_classes_end_in_two_when_twins_merge(two_objects, merge):
    from class2d import io
    from class2d.classify import classify_all
    from class2d.metrics import adjusted_rand

    data, prepared, folder = two_objects
    out = folder / f"merge_{merge}"
    # marginalised over poses, the objects split the more (with force max, unmerged: ARI 0.82)
    classify_all(prepared, str(out), {"n_classes": 4, "max_res_A": 14.0, "online_iterations": 6,
                                      "batch_per_class": 30, "merge_twin_classes": merge,
                                      "force_max": False}, seed=1, backend="cpu")
    classes = io.read_particles(out / "particles.star").particles["rlnClassNumber"].to_numpy()
    ari = adjusted_rand(data.truth["true_class"].to_numpy(), classes)
    if merge:       # one class per object, the two others left empty (measured: ARI 1)
        assert np.unique(classes).size == 2
        assert ari >= 0.98
    else:           # four classes, objects split (measured: 90, 89, 11, 10; ARI 0.81 since
        # refill turns particles about the centre pixel; 89, 52, 48, 11 and 0.65 before).
        # Run seeds 1-5: unmerged 0.50-0.81; merged 1.0 on four, 0.50 on seed 3, where no
        # pair was known a twin at two standard errors
        assert np.unique(classes).size == 4
        assert ari <= 0.9


def _view_at(objects, correlation, rng):
    """Object 0 turned by 63° and shifted, mixed with an independent object so that its
    signal correlates ``correlation`` with object 0 (in real space)."""
    other = blob_object(rng)
    other -= other.ravel() @ objects[0].ravel() / (objects[0].ravel() @ objects[0].ravel()) \
        * objects[0]
    other *= np.linalg.norm(objects[0]) / np.linalg.norm(other)
    view = correlation * objects[0] + np.sqrt(1 - correlation ** 2) * other
    return turned_and_shifted(view, 63.0, (2.5, -1.5))


@pytest.mark.parametrize("correlation", [1.0, 0.9])
def test_over_20_noise_seeds_twins_merge_and_a_view_at_0_9_does_not(objects, correlation):
    """Issue 25's requirement, on the construction above (noise 0.5, counts 100/60): true
    twins merge in ≥ 95 % of 20 seeds (measured 20/20), a distinct view correlating 0.9
    with the object at most once (measured 0/20); and the bootstrap's standard error is the
    estimate's spread over the seeds (measured: mean 0.018 against 0.018 for twins, 0.022
    against 0.022 at 0.9)."""
    merged, signals, errors = 0, [], []
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        view = _view_at(objects, correlation, rng)
        state, mask = state_of([objects[0], objects[1], objects[2], view], noise=0.5, rng=rng,
                               counts=[100, 100, 100, 60])
        pairs = twin_pairs(state, mask)
        merged += any((pair.keep, pair.drop) == (0, 3) for pair in pairs)
        known = twins._Classes(state, mask).compare([(0, 3, np.arange(0.0, 360.0, 1.0))])[0]
        signals.append(known.signal)
        errors.append(known.error)
    if correlation == 1.0:
        assert merged >= 19
    else:
        assert merged <= 1
    assert np.mean(signals) == pytest.approx(correlation, abs=0.02)
    assert 0.7 <= np.mean(errors) / np.std(signals, ddof=1) <= 1.4


def test_the_screen_stays_near_the_full_estimate_and_screens_out_only_distinct_pairs(objects):
    """Every pair of five classes (three objects, a turned and shifted copy of object 0 and
    a view near it, at two noise levels): the screen (the drop class's C's from its own
    halves, ``_Classes.screen``) is within 0.05 of the full estimate, and a pair below
    SCREEN_LINE is one the full estimate finds distinct (measured: within 0.01)."""
    rng = np.random.default_rng(3)
    twin = turned_and_shifted(objects[0], 63.0, (2.5, -1.5))
    near = objects[0] + 0.5 * blob_object(rng)
    screened = 0
    for noise in (0.5, 1.5):
        state, mask = state_of([objects[0], objects[1], objects[2], twin, near], noise=noise,
                               rng=rng, counts=[100, 100, 100, 60, 90])
        classes = twins._Classes(state, mask)
        requests = [(a, b, np.arange(0.0, 360.0, 1.0)) for a in range(5) for b in range(a + 1, 5)
                    if classes.measured(a, b).sum() >= twins.MIN_SHELLS]
        pairs = classes.compare(requests)
        for pair in pairs:
            both = classes.reliable[pair.keep] * classes.reliable[pair.drop]
            weight = np.arange(both.size) * both ** 2 * classes.measured(pair.keep, pair.drop)
            weight /= weight.sum()
            full, _ = classes.signal(pair.keep, pair.drop, pair.angle, np.array(pair.shift),
                                     weight)
            screen = classes.screen(np.array([pair.keep]), np.array([pair.drop]),
                                    np.array([pair.angle]), np.array([pair.shift]),
                                    weight[None])[0]
            assert screen == pytest.approx(full, abs=0.05)
            if screen < twins.SCREEN_LINE:
                screened += 1
                assert pair.distinct and full < twins.TWIN_SIGNAL - twins.FAR
    assert screened >= 6


def test_the_last_pass_decides_which_classes_are_twins(objects):
    """``merge_twins`` judges the last pass's own statistics, not the blended ones: two
    classes that both held objects 0 and 1 (twins in the blended statistics) but that the
    pass parted are kept apart; where the pass shows them alike too, they are merged."""
    rng = np.random.default_rng(4)
    mixed = 0.5 * (objects[0] + objects[1])
    blended, _ = state_of([mixed, turned_and_shifted(mixed, 70.0, (1.0, -2.0)), objects[2]],
                          noise=0.2, rng=rng, counts=[100, 90, 100])
    parted, _ = state_of([objects[0], turned_and_shifted(objects[1], 70.0, (1.0, -2.0)),
                          objects[2]], noise=0.2, rng=rng, counts=[100, 90, 100])
    params = ClassifyParams.from_config({"n_classes": 3}, 1)
    stats, dropped = merge_twins(blended.stats, parted.stats, blended, params)
    assert dropped.size == 0
    np.testing.assert_array_equal(stats.counts, [100, 90, 100])
    stats, dropped = merge_twins(blended.stats, blended.stats, blended, params)
    assert dropped.tolist() == [1]
    np.testing.assert_array_equal(stats.counts, [190, 0, 100])
