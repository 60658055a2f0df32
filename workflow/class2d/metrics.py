"""Agreement between classifications, for tests and benchmarks against ground truth.

    >>> adjusted_rand(truth_labels, our_labels)        # 1.0: identical partitions
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
