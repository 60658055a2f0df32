"""Tests of class2d.budget: batch sizes from the memory budget, and too small a budget."""

from __future__ import annotations

import pytest

from class2d import budget
from class2d.em.params import ClassifyParams
from class2d.errors import ConfigError


def test_prepare_batch_is_what_fits_after_the_base():
    per_particle = 32 * 256 ** 2 + 16 * 96 ** 2                  # 2,244,608 bytes
    assert budget.prepare_batch(4.0, 256, 96) == int(3.4e9 // per_particle) == 1514
    assert budget.prepare_batch(100.0, 64, 32) == budget.MAX_BATCH


def test_budget_too_small_names_memory_gb_and_what_it_needs():
    with pytest.raises(ConfigError, match=r"^config memory_gb: 0.61 GB is too small for one "
                                          r"prepare \(4096 -> 512 px\) batch \(needs at least "
                                          r"1.14 GB\)$"):
        budget.prepare_batch(0.61, 4096, 512)
    with pytest.raises(ConfigError, match="memory_gb: 0.5 GB is too small for one simulation"):
        budget.simulate_chunk(0.5, 64, 2)


def test_estep_batch_from_memory_and_classes():
    """batch_size 0: what memory_gb holds after four copies of the class statistics."""
    params = ClassifyParams(n_classes=50, batch_size=0, memory_gb=4.0)
    assert params.estep_batch(96) == 2048                          # capped
    assert ClassifyParams(batch_size=777).estep_batch(96) == 777    # set by hand
    big = ClassifyParams(n_classes=200, batch_size=0, memory_gb=2.5)
    per_class = 4 * 2 * (2 * 96) ** 2 * 24                        # 7.1 MB
    fits = int((1.9e9 - 200 * per_class) // (80 * 96 ** 2))
    assert big.estep_batch(96) == fits == 657
    with pytest.raises(ConfigError, match="memory_gb: 2 GB is too small for one E-step"):
        ClassifyParams(n_classes=200, batch_size=0, memory_gb=2.0).estep_batch(96)
