"""Accuracy where most particles are met once: 20,000 particles sort as well as 2,000.

The online iterations take ``batch_per_class × n_classes`` = 2,000 particles each, 40,000
visits in all: a set of 2,000 is seen twenty times, one of 20,000 twice on average, most
particles once or only in the final full pass.  Both are the accuracy benchmark's labelled
set (``class2d.simulate.write_labelled``: 16 objects at 48 px, SNR 0.1, CTF over 0.5–3.5 µm,
3/16 junk picks, 1/16 duplicates) classified with the defaults into 20 classes.

Measured with ``bench/bench_accuracy.py --box 48 --particles 2000 20000`` on the code of
stop 33 (2,000: data seeds 1–3 × run seeds 1–3; 20,000: data seeds 1–3, run seed 1), the
requirement is the 2,000-particle spread:

| particles | ARI | purity | largest class | largest mostly-good class |
|---|---|---|---|---|
| 2,000 (9 runs) | 0.955 [0.933–0.971] | 0.980 [0.974–0.987] | 6.25 [6.0–6.6] % | 5.9 [5.7–6.25] % |
| 20,000 (3 runs) | 0.957 [0.953–0.962] | 0.981 [0.980–0.982] | 6.94, 11.5, 6.41 % | 6.94, 5.73, 6.41 % |

so the larger set must reach the smaller one's lowest ARI and purity.  Its largest class
is not yet within the smaller one's spread: in this test's set (data seed 1) the largest
class holds object 0 (938 particles) and 423 of the 1,250 aggregate picks (two objects side
by side), and in data seed 2 noise and edge picks; at 2,000 the junk spreads over more
classes.  The bound below (7.6 %) is the largest class of stop 30's 2,000-particle runs,
kept so that an attractor of objects (the issue's 29 %) still fails; an object class that
draws aggregates passes it (bench/RESULTS.md, stop 33).  The test fails on the code before
the split classes were sorted (0b01305: 0.895, 0.918, 9.95 %, an object pair in one class
that the first split of the class could not part), and on the code the seen-once issue was
filed against (af4a8ba: 0.835, 0.856, 9.93 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from class2d import io
from class2d.classify import classify_all
from class2d.metrics import adjusted_rand, purity
from class2d.prepare import prepare_stack
from class2d.simulate import read_truth, write_labelled

#: the 2,000-particle runs' lowest ARI and purity; stop 30's largest class (module docstring)
ARI_MIN, PURITY_MIN, LARGEST_MAX = 0.93, 0.97, 0.076


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
