"""Class averages against known views: the matcher finds rotation and shift."""

import mrcfile
import numpy as np
import pandas as pd
from scipy import ndimage

from class2d.io import write_stack
from class2d.truth import compare_with_truth


def test_rotated_shifted_views_are_matched_to_their_truth(tmp_path):
    rng = np.random.default_rng(2)
    y, x = np.mgrid[:48, :48] - 24
    views = np.zeros((3, 48, 48))
    for v in range(3):
        for _ in range(4):
            cx, cy = rng.uniform(-9, 9, 2)
            views[v] += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
    classes = np.stack([np.roll(ndimage.rotate(views[2], 40, reshape=False, order=1), 2, axis=1),
                        ndimage.rotate(views[0], -100, reshape=False, order=1),
                        np.zeros((48, 48))]).astype(np.float32)
    write_stack(tmp_path / "classes.mrcs", classes, 4.0)
    write_stack(tmp_path / "refs.mrcs", views.astype(np.float32), 4.0)
    table = compare_with_truth(str(tmp_path / "classes.mrcs"), str(tmp_path / "refs.mrcs"),
                               str(tmp_path / "frc.tsv"))
    assert table["true_view"].tolist() == [2, 0, -1]
    assert (table["correlation"][:2] > 0.97).all()
    assert (table["frc05_A"][:2] < 20).all()
    assert pd.read_csv(tmp_path / "frc.tsv", sep="\t").shape == (3, 4)
    assert mrcfile.validate(str(tmp_path / "classes.mrcs"))
