"""The sampling and schedule functions of ClassifyParams against their documented formulas.

Every expected number below is worked out by hand from the docstrings and
``config/config.yaml`` (box 64 px at 3 Å/px, 20 online iterations, align res 6 Å unless
a test says otherwise), not from the code under test.
"""

from __future__ import annotations

import pytest

from class2d.em.params import ClassifyParams
from class2d.errors import ConfigError

BOX, APIX = 64, 3.0


def test_resolution_rises_linearly_in_one_over_angstrom():
    """Start 4 × 6 Å raised to 25 Å; 1/res linear in the iteration, reaching 1/6 Å⁻¹ at
    iteration 15 (3/4 of 20: (i − 1)/14 of the way) and staying there, full passes too."""
    params = ClassifyParams(max_res_A=6.0, online_iterations=20)
    assert params.first_res_A == 25.0
    assert params.resolution_at(1) == pytest.approx(25.0)
    # half-way: 1/(0.04/2 + 0.1667/2) = 9.677 Å
    assert params.resolution_at(8) == pytest.approx(1 / (0.5 / 25 + 0.5 / 6), rel=1e-12)
    assert params.resolution_at(8) == pytest.approx(9.6774, abs=1e-4)
    # a quarter of the way (i = 4.5 would be; i = 4 is 3/14)
    assert params.resolution_at(4) == pytest.approx(1 / (1 / 25 + 3 / 14 * (1 / 6 - 1 / 25)))
    for i in (15, 16, 20, 21, 22):
        assert params.resolution_at(i) == pytest.approx(6.0)


def test_start_and_maximum_alignment_resolution_keys():
    assert ClassifyParams(max_res_A=6.0, max_align_res_A=10.0).first_res_A == 40.0
    assert ClassifyParams(max_res_A=6.0, max_align_res_A=10.0).resolution_at(20) == 10.0
    params = ClassifyParams(max_res_A=6.0, start_res_A=12.0, online_iterations=8)
    # 0.75 · 8 − 1 = 5 steps: iteration 6 reaches 6 Å, iteration 3 is 2/5 of the way
    assert params.resolution_at(1) == pytest.approx(12.0)
    assert params.resolution_at(3) == pytest.approx(1 / (1 / 12 + 0.4 * (1 / 6 - 1 / 12)))
    assert params.resolution_at(6) == pytest.approx(6.0)
    assert params.resolution_at(5) > 6.0


def test_temperature_falls_from_the_uncertainty_factor_to_one_by_half_way():
    params = ClassifyParams(uncertainty_factor=3.0, online_iterations=20)
    # τ = 1 + (3 − 1)(1 − (i − 1)/10) until iteration 11
    assert [params.temperature_at(i) for i in (1, 2, 6, 11, 12, 20, 21)] == pytest.approx(
        [3.0, 2.8, 2.0, 1.0, 1.0, 1.0, 1.0])
    assert ClassifyParams(uncertainty_factor=1.0).temperature_at(1) == 1.0


def test_step_size_replaces_first_then_decays_as_a_power_to_a_floor():
    params = ClassifyParams()
    assert params.step_size_at(1) == 1.0
    assert params.step_size_at(2) == pytest.approx(0.659754, abs=1e-6)      # 2^−0.6
    assert params.step_size_at(10) == pytest.approx(0.251189, abs=1e-6)     # 10^−0.6
    assert params.step_size_at(46) == pytest.approx(0.100541, abs=1e-6)     # 46^−0.6
    assert params.step_size_at(47) == 0.1 and params.step_size_at(200) == 0.1


def test_an_iteration_takes_its_batch_in_updates_of_at_most_a_quarter_of_the_particles():
    """batch = 100 per class × K, at most every particle; updates = ⌈batch / (N / 4)⌉, but
    no more than keep 30 particles per class in each."""
    params = ClassifyParams(n_classes=20)                      # batch 2,000
    assert params.online_steps(100_000) == 1
    assert params.online_steps(8_000) == 1                     # 2,000 = N / 4
    assert params.online_steps(7_999) == 2
    assert params.online_steps(3_000) == 3                     # 2,000 / 750 → 3 of 667
    assert params.online_steps(2_000) == 3                     # 4 would be 25 per class
    assert ClassifyParams(n_classes=50).online_steps(3_000) == 2     # 3,000: 2 of 30 per class
    assert ClassifyParams(n_classes=4, batch_per_class=10).online_steps(150) == 1   # 40: 10 each
    assert ClassifyParams(n_classes=4).online_steps(300) == 2  # 300 of 400 asked: 2 of 150
    assert ClassifyParams(n_classes=50, batch_per_class=20).online_steps(10**6) == 1


def test_mask_from_the_particle_diameter():
    params = ClassifyParams()
    # 90 % of 64 px across, edge 5 % of the box (3.2 px): radius min(28.8, 32 − 3.2)
    assert params.mask_radius_px(BOX, APIX) == pytest.approx((28.8, 3.2))
    assert params.mask_diameter_px(BOX, APIX) == pytest.approx(57.6)
    # a 210 Å particle: a 270 Å (9/7) mask, in a 192 Å box cut to the box less the edge
    assert ClassifyParams(particle_diameter_A=210.0, mask_edge_A=6.0).mask_radius_px(
        BOX, APIX) == pytest.approx((30.0, 2.0))
    # a 70 Å particle: a 90 Å mask, 30 px at 3 Å/px
    assert ClassifyParams(particle_diameter_A=70.0).mask_diameter_px(BOX, APIX) == \
        pytest.approx(30.0)


@pytest.mark.parametrize("res_A, settings, expected", [
    # radius 28.8 px · 3 Å = 86.4 Å: 6/86.4 rad = 3.979°, 360/3.979 = 90.5 → 91 steps
    (6.0, {}, 360 / 91),
    # 30/86.4 rad = 19.9° is more than the 15° ceiling: 24 steps
    (30.0, {}, 15.0),
    # particle 70 Å, mask 90 Å (radius 45 Å): 6/45 rad = 7.639°, 47.1 → 48 steps
    (6.0, {"particle_diameter_A": 70.0}, 360 / 48),
    # 0.5/86.4 rad = 0.33° is below the 1° floor: 360 steps
    (0.5, {}, 1.0),
    (6.0, {"psi_step_deg": 5.0}, 5.0),
])
def test_psi_step_is_resolution_over_radius_in_whole_turns(res_A, settings, expected):
    step = ClassifyParams(**settings).psi_step(res_A, BOX, APIX)
    assert step == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("res_A, settings, expected", [
    # step max(1, 6/4/3 = 0.5) = 1 px, range 10 % of 64 = 6.4 px: ±6 → 13 points
    (6.0, {}, (13, 1.0)),
    # step 30/4/3 = 2.5 px: 6.4/2.5 = 2.56 → ±2 → 5 points
    (30.0, {}, (5, 2.5)),
    # ±9 Å in steps of 3 Å = ±3 px in 1 px: 7 points
    (30.0, {"shift_range_A": 9.0, "shift_step_A": 3.0}, (7, 1.0)),
    # range an exact multiple of the step: its end is on the grid
    (6.0, {"shift_range_A": 6.0, "shift_step_A": 1.5}, (9, 0.5)),
    # step larger than the range: the centre only
    (6.0, {"shift_range_A": 2.0, "shift_step_A": 3.0}, (1, 1.0)),
])
def test_shift_grid_covers_the_range_at_the_step(res_A, settings, expected):
    side, step = ClassifyParams(**settings).shift_grid(res_A, BOX, APIX)
    assert side == expected[0]
    assert step == pytest.approx(expected[1], rel=1e-12)


def test_force_max_is_on_whatever_the_class_count():
    """Not CryoSPARC's off at ≤ 20 classes (config.yaml says why); a setting wins."""
    assert ClassifyParams(n_classes=20).force_max is True
    assert ClassifyParams(n_classes=5).force_max is True
    assert ClassifyParams(n_classes=50, force_max=False).force_max is False
    with pytest.raises(ConfigError, match="classify.force_max: must be true or false"):
        ClassifyParams(force_max=None)
