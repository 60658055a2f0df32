"""The convergence plot: the numbers it draws, and the PNG it writes."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from class2d.report import convergence_plot, convergence_series

#: three iterations of 3 classes; the first row predates pass_sizes (blended sizes only)
HISTORY = [
    {"iteration": 1, "kind": "online", "res_A": 40.0, "loglik": -12.5,
     "class_sizes": [10.0, 30.0, 60.0]},
    {"iteration": 2, "kind": "online", "res_A": 20.0, "loglik": -3.0,
     "class_sizes": [25.5, 25.5, 49.0], "pass_sizes": [0, 50, 50]},
    {"iteration": 3, "kind": "full", "res_A": 12.0, "loglik": 4.25,
     "class_sizes": [1.0, 2.0, 3.0], "pass_sizes": [120, 0, 0]},
]


def test_series_are_the_history_with_shares_of_the_pass_particles():
    series = convergence_series(HISTORY)
    np.testing.assert_array_equal(series["iteration"], [1, 2, 3])
    np.testing.assert_array_equal(series["loglik"], [-12.5, -3.0, 4.25])
    np.testing.assert_array_equal(series["res_A"], [40.0, 20.0, 12.0])
    np.testing.assert_allclose(series["shares"], [[0.1, 0.3, 0.6], [0, 0.5, 0.5], [1, 0, 0]])


def test_plot_is_a_png_of_the_stated_size(tmp_path):
    path = tmp_path / "convergence.png"
    convergence_plot(HISTORY, path)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (648, 576)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["convergence.png"]   # no temporary
    # three panels of lines and a stacked area: far from a blank page
    assert (image[..., :3] < 0.9).mean() > 0.05
