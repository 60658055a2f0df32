"""Rebalancing views: superclasses of similar averages, thinning by the factor, seeds, outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from class2d import io
from class2d.errors import ConfigError, InputError
from class2d.rebalance import rebalance_classes, thin, view_similarity
from class2d.simulate import simulate

#: classes per view, particles per class of the common view and of the others
CLASSES_PER_VIEW = 3
COMMON, RARE = 400, 40


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """4 views, each as 3 classes (turned in-plane, one mirrored, with noise); view 1 is 10×."""
    tmp = tmp_path_factory.mktemp("views")
    data = simulate(64, box=64, apix=3.0, n_objects=4, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=7)
    rng = np.random.default_rng(0)
    averages, view_of = [], []
    for view, reference in enumerate(data.references):
        for copy in range(CLASSES_PER_VIEW):
            image = ndimage.rotate(reference, rng.uniform(0, 360), reshape=False, order=1)
            image = image[:, ::-1] if copy == 2 else image
            image = ndimage.shift(image, rng.uniform(-2, 2, 2), order=1)
            averages.append(image + rng.normal(0, 0.05 * image.std(), image.shape))
            view_of.append(view)
    view_of = np.array(view_of)
    counts = np.where(view_of == 0, COMMON, RARE)
    classes = np.repeat(np.arange(1, len(counts) + 1), counts)
    io.write_stack(tmp / "classes.mrcs", np.stack(averages), 3.0)
    starfile.write({"classes": pd.DataFrame({
        "rlnReferenceImage": [f"{k}@classes.mrcs" for k in range(1, len(counts) + 1)],
        "rlnClassNumber": np.arange(1, len(counts) + 1), "rlnImagePixelSize": 3.0})},
        tmp / "classes.star")
    n = len(classes)
    particles = pd.DataFrame({"rlnImageName": [f"{i + 1}@particles.mrcs" for i in range(n)],
                              "rlnClassNumber": classes, "rlnAnglePsi": rng.uniform(0, 360, n),
                              "rlnOpticsGroup": 1})
    table = io.ParticleTable(particles, data.table.optics, base_dir=str(tmp))
    io.write_particles(table, tmp / "particles.star")
    return tmp, view_of


def _superclass_sizes(paths) -> pd.DataFrame:
    return starfile.read(paths["superclasses.star"], always_dict=True)["superclasses"]


def test_similar_views_group_together(views):
    tmp, view_of = views
    images = io.read_stack(tmp / "classes.mrcs", mmap=False)
    similarity = view_similarity(images, 3.0)
    same = view_of[:, None] == view_of[None, :]
    off_diagonal = ~np.eye(len(view_of), dtype=bool)
    assert similarity[same & off_diagonal].min() > similarity[~same].max()


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_largest_superclass_shrinks_as_the_factor_says(views, tmp_path, factor):
    tmp, view_of = views
    paths = rebalance_classes(tmp / "classes.star", tmp / "particles.star", tmp_path,
                              n_superclasses=4, rebalance_factor=factor, seed=3)
    classes = starfile.read(paths["superclasses.star"], always_dict=True)["classes"]
    superclass = classes["c2dSuperclass"].to_numpy()
    # one superclass per view, the common view first
    assert len(set(superclass)) == 4
    for view in range(4):
        assert len(set(superclass[view_of == view])) == 1
    assert set(superclass[view_of == 0]) == {1}
    sizes = _superclass_sizes(paths)
    big, small = CLASSES_PER_VIEW * COMMON, CLASSES_PER_VIEW * RARE
    assert sizes["c2dParticleCount"].tolist() == [big, small, small, small]
    target = round(small + (1 - factor) * (big - small))
    assert sizes["c2dParticlesKept"].tolist() == [target, small, small, small]
    kept = io.read_particles(paths["particles.star"]).particles
    excluded = io.read_particles(paths["excluded.star"]).particles if factor else None
    assert (kept["c2dSuperclass"] == 1).sum() == target
    for group in (2, 3, 4):                      # the others are untouched
        assert (kept["c2dSuperclass"] == group).sum() == small
    if excluded is not None:
        assert set(excluded["c2dSuperclass"]) == {1}
        assert len(kept) + len(excluded) == big + 3 * small
    else:
        assert len(np.load(paths["excluded.cs"])) == 0
    assert len(np.load(paths["particles.cs"])) == len(kept)
    with open(paths["superclasses.png"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_deterministic_with_a_seed(views, tmp_path):
    tmp, _ = views
    names = []
    for seed, out in ((1, "a"), (1, "b"), (2, "c")):
        paths = rebalance_classes(tmp / "classes.star", tmp / "particles.star", tmp_path / out,
                                  n_superclasses=4, rebalance_factor=0.7, seed=seed)
        names.append(io.read_particles(paths["particles.star"]).particles["rlnImageName"].tolist())
    assert names[0] == names[1] != names[2]
    assert len(names[0]) == len(names[2])


def test_thin_rounding_and_empty_groups():
    superclass = np.repeat([1, 2, 3], [10, 3, 5])
    keep, sizes, targets = thin(superclass, 0.5, seed=0)
    assert sizes.tolist() == [10, 3, 5] and targets.tolist() == [7, 3, 4]
    assert np.bincount(superclass[keep]).tolist() == [0, 7, 3, 4]


def test_bad_input(views, tmp_path):
    tmp, _ = views
    with pytest.raises(ValueError, match="rebalance_factor"):
        rebalance_classes(tmp / "classes.star", tmp / "particles.star", tmp_path,
                          rebalance_factor=1.5)
    table = io.read_particles(tmp / "particles.star")
    table = dataclasses.replace(table).with_columns(rlnClassNumber=np.full(table.n, 99))
    io.write_particles(table, tmp_path / "other.star")
    with pytest.raises(InputError, match="class 99, which is not in"):
        rebalance_classes(tmp / "classes.star", tmp_path / "other.star", tmp_path)


def test_bad_settings_name_their_config_key(views, tmp_path):
    tmp, _ = views
    for setting, key in ((dict(rebalance_factor=-0.1), "rebalance_factor"),
                         (dict(n_superclasses=0), "n_superclasses")):
        with pytest.raises(ConfigError, match=rf"^config rebalance\.{key}: must be"):
            rebalance_classes(tmp / "classes.star", tmp / "particles.star", tmp_path / "out",
                              **setting)
    assert not (tmp_path / "out").exists()
