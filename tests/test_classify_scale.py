"""Accuracy where most particles are met once: 20,000 particles sort as well as 2,000.

The online iterations take ``batch_per_class × n_classes`` = 2,000 particles each, 40,000
visits in all: a set of 2,000 is seen twenty times, one of 20,000 twice on average, most
particles once or only in the final full pass.  Both are the accuracy benchmark's labelled
set (``class2d.simulate.write_labelled``: 16 objects at 48 px, SNR 0.1, CTF over 0.5–3.5 µm,
3/16 junk picks, 1/16 duplicates) classified with the defaults into 20 classes.

Measured with ``bench/bench_accuracy.py --box 48 --particles 2000 20000`` (data seeds 1–3,
run seed 1; a class under 0.35 of an even share refilled, ``em.refill.SPLIT_SHARE``), the
requirement is the 2,000-particle spread:

| particles | ARI | purity | largest class |
|---|---|---|---|
| 2,000 | 0.933–0.950 | 0.968–0.976 | 5.95–7.55 % |
| 20,000 | 0.953–0.957 | 0.980–0.981 | 6.63–11.5 % |

so the larger set must reach the smaller one's lowest ARI and purity and hold no class
larger than its largest (20,000 particles of data seed 2 do not: their largest class, 11.5 %,
is noise and edge picks; of mostly good particles 5.7 %).  This test's set is data seed 1
(20,000: ARI 0.957, purity 0.980, largest 6.94 %).  It fails on the code before the split
classes were sorted (0b01305: 0.895, 0.918, 9.95 %, an object pair in one class that the
first split of the class could not part), and on the code the seen-once issue was filed
against (af4a8ba: 0.835, 0.856, 9.93 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from class2d import io
from class2d.classify import classify_all
from class2d.metrics import adjusted_rand, purity
from class2d.prepare import prepare_stack
from class2d.simulate import read_truth, write_labelled

#: the 2,000-particle runs' lowest ARI and purity and largest class share (module docstring)
ARI_MIN, PURITY_MIN, LARGEST_MAX = 0.93, 0.96, 0.076


@pytest.mark.slow
def test_particles_met_once_sort_as_well_as_particles_met_twenty_times(tmp_path):
    star = write_labelled(tmp_path / "data", 20_000, box=48, seed=1)
    prepare_stack(star, tmp_path / "prepare", max_res_A=6.0)
    classify_all(str(tmp_path / "prepare"), str(tmp_path / "classify"),
                 {"n_classes": 20, "max_res_A": 6.0}, seed=1, backend="cpu")
    truth = read_truth(tmp_path / "data" / "truth.star")
    classes = io.read_particles(tmp_path / "classify" / "particles.star").particles[
        "rlnClassNumber"].to_numpy()
    good = (truth["junk"] == "").to_numpy()
    objects = truth["true_class"].to_numpy()
    ari = adjusted_rand(objects[good], classes[good])
    largest = np.bincount(classes).max() / classes.size
    assert ari >= ARI_MIN, ari
    assert purity(objects[good], classes[good]) >= PURITY_MIN
    assert largest <= LARGEST_MAX, largest
