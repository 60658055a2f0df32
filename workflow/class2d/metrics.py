"""Agreement between classifications, for tests and benchmarks against ground truth.

    >>> adjusted_rand(truth_labels, our_labels)        # 1.0: identical partitions
    >>> purity(truth_labels, our_labels)               # 1.0: no class mixes true labels
    >>> circular_sd_deg(ours_psi - true_psi)           # one class's spread of ψ errors
    >>> median_angle_deviation_deg(ours_psi - true_psi)   # the same, a few flips aside
    >>> origin_spread(ours_psi, ours_origins, true_origins)   # and of its origins, Å
"""

from __future__ import annotations

import numpy as np


def adjusted_rand(truth: np.ndarray, labels: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings of the same items."""
    _, t = np.unique(truth, return_inverse=True)
    _, l = np.unique(labels, return_inverse=True)
    table = np.zeros((t.max() + 1, l.max() + 1))
    np.add.at(table, (t, l), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (t.size * (t.size - 1) / 2)
    if 0.5 * (rows + cols) == expected:
        return 1.0
    return (index - expected) / (0.5 * (rows + cols) - expected)


def purity(truth: np.ndarray, labels: np.ndarray) -> float:
    """Share of the items that belong to their class's most common true label (1.0: every
    class holds one true label; a class may still split one)."""
    _, t = np.unique(truth, return_inverse=True)
    _, l = np.unique(labels, return_inverse=True)
    table = np.zeros((l.max() + 1, t.max() + 1))
    np.add.at(table, (l, t), 1)
    return float(table.max(axis=1).sum() / t.size)


def circular_sd_deg(angles_deg: np.ndarray) -> float:
    """Circular standard deviation of angles, degrees."""
    z = np.exp(1j * np.radians(angles_deg)).mean()
    return float(np.degrees(np.sqrt(-2 * np.log(max(abs(z), 1e-12)))))


def median_angle_deviation_deg(angles_deg: np.ndarray) -> float:
    """Median angle (degrees) between each of ``angles_deg`` and their circular mean: the
    spread of most of them, which a few far off (a particle of a nearly symmetric object
    turned by 180°) do not set: 146 angles of s.d. 2° and two turned by 180° read a circular
    s.d. of 13.5° (1.9° without the two) and a median deviation of 1.4° (1.4°)."""
    z = np.exp(1j * np.radians(angles_deg))
    return float(np.degrees(np.median(np.abs(np.angle(z * np.conj(z.mean()))))))


def origin_spread(psi_deg: np.ndarray, ours: np.ndarray, true: np.ndarray) -> float:
    """Mean distance of our origins (n, 2) from the true ones, rotated back by our ψ
    (degrees) into the class frame and less their mean: 0 when every particle of a class is
    centred alike (the class itself may sit off the true centre).  With the class centred
    c0 from the true centre, RELION's convention gives ours − true = R(−ψ)·c0 per particle;
    the smaller of the two rotation senses is taken."""
    d = ours - true
    angle = np.radians(psi_deg)
    errors = []
    for sign in (1.0, -1.0):
        c, s = np.cos(sign * angle), np.sin(sign * angle)
        back = np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], axis=1)
        errors.append(float(np.linalg.norm(back - back.mean(0), axis=1).mean()))
    return min(errors)
