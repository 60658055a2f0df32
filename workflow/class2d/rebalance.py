"""Rebalance views: group class averages into superclasses of similar views, thin the crowded ones.

    >>> paths = rebalance_classes("results/select/classes.star", "results/select/particles.star",
    ...                           "results/rebalance", n_superclasses=10, rebalance_factor=0.5)

Similar views: the averages are Fourier-cropped to at most ``SIMILARITY_BOX`` px,
centred on their centre of mass and masked; the similarity of two averages is the largest
normalised cross-correlation over in-plane rotations (``ROTATION_STEP``°) of one of them,
and of its mirror image (a projection seen from the other side is the mirror image of
the first: the same view for the purpose of balancing).  Average-linkage hierarchical
clustering of 1 − similarity cuts the classes into ``n_superclasses`` groups, numbered
from the most populated.

Thinning: with s_j particles in superclass j and s_min the smallest superclass, each
keeps ``round(s_min + (1 − rebalance_factor) · (s_j − s_min))`` particles, drawn at
random (seeded) from all of its particles: 0 keeps everything, 1 cuts every superclass to
the smallest one's size.  (CryoSPARC's *Rebalance 2D Classes* defines its factor
differently: as the smallest ratio of a superclass to the largest.)

Writes ``particles.{star,cs}`` (kept, with ``c2dSuperclass``), ``excluded.{star,cs}``,
``superclasses.star`` (``data_classes``: class → superclass; ``data_superclasses``: sizes
before and after) and ``superclasses.png`` (the averages, one row per superclass).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import sparse
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from class2d import discs
from class2d.errors import ConfigError
from class2d.fourier import centre_images, circular_mask, fourier_crop, rotation_coordinates
from class2d.io import (particle_classes, read_classes, read_particles, write_particle_set,
                        write_star_blocks)
from class2d.io.atomic import atomic_path

logger = logging.getLogger(__name__)

#: averages are compared at this box (px) at most
SIMILARITY_BOX = 48
#: in-plane rotation step (degrees) of the similarity search
ROTATION_STEP = 5.0
#: classes drawn per row of superclasses.png
PICTURE_COLUMNS = 12


def rebalance_classes(classes_star: str | os.PathLike, particles_path: str | os.PathLike,
                      out_dir: str | os.PathLike, n_superclasses: int = 10,
                      rebalance_factor: float = 0.5, particle_diameter_A: float = 0.0,
                      seed: int = 0) -> dict[str, str]:
    """Cluster classes into superclasses of similar views and thin the crowded ones.

    classes_star: class averages (``classes.star``, e.g. from the select stage);
    particles_path: their particles (``rlnClassNumber`` refers to ``classes_star``);
    n_superclasses: groups of views (at most the number of classes);
    rebalance_factor: 0 (keep all) to 1 (every superclass as small as the smallest);
    particle_diameter_A: Å (0: from the box), sets the window the averages are compared in
    (the class mask, ``discs.mask_radius_px``);
    seed: of the random choice of kept particles.  Returns {file name: path}.
    """
    if not 0.0 <= rebalance_factor <= 1.0:
        raise ConfigError("rebalance.rebalance_factor", f"must be in [0, 1], got "
                                                        f"{rebalance_factor}")
    if n_superclasses < 1:
        raise ConfigError("rebalance.n_superclasses", f"must be ≥ 1, got {n_superclasses}")
    class_set = read_classes(classes_star)
    table = read_particles(particles_path)
    numbers, class_index = particle_classes(class_set, table)
    counts = np.bincount(class_index, minlength=len(numbers))

    similarity = view_similarity(class_set.images, class_set.apix, particle_diameter_A)
    superclass = cluster_views(similarity, n_superclasses, counts)
    per_particle = superclass[class_index]
    keep, sizes, targets = thin(per_particle, rebalance_factor, seed)
    logger.info("%s: %d classes in %d superclasses; kept %d of %d particles (factor %g)",
                class_set.path, len(numbers), superclass.max(), int(keep.sum()), table.n,
                rebalance_factor)

    out_dir = os.fspath(out_dir)
    table = table.with_columns(c2dSuperclass=per_particle)
    paths = write_particle_set(table.subset(keep), out_dir, "particles", template=table)
    paths.update(write_particle_set(table.subset(~keep), out_dir, "excluded", template=table))
    kept_per_class = np.bincount(class_index[keep], minlength=len(numbers))
    classes = pd.DataFrame({"rlnClassNumber": numbers, "c2dSuperclass": superclass,
                            "c2dParticleCount": counts, "c2dParticlesKept": kept_per_class})
    groups = pd.DataFrame({"c2dSuperclass": np.arange(1, len(sizes) + 1),
                           "c2dClassCount": np.bincount(superclass, minlength=len(sizes) + 1)[1:],
                           "c2dParticleCount": sizes, "c2dParticlesKept": targets})
    paths["superclasses.star"] = os.path.join(out_dir, "superclasses.star")
    write_star_blocks({"classes": classes, "superclasses": groups}, paths["superclasses.star"])
    paths["superclasses.png"] = draw_superclasses(
        os.path.join(out_dir, "superclasses.png"), class_set.images, numbers, superclass,
        counts, kept_per_class)
    return paths


def view_similarity(images: np.ndarray, apix: float, particle_diameter_A: float = 0.0
                    ) -> np.ndarray:
    """(K, K) float64 in [-1, 1]: best correlation over in-plane rotations and mirroring,
    inside the class mask (``discs.mask_radius_px``).  images: (K, D, D); apix: Å/px."""
    images = np.asarray(images, np.float64)
    box = images.shape[-1]
    if box > SIMILARITY_BOX:
        images = fourier_crop(images, SIMILARITY_BOX)
        apix, box = apix * box / SIMILARITY_BOX, SIMILARITY_BOX
    mask = circular_mask(box, *discs.mask_radius_px(box, apix, particle_diameter_A))
    mask = mask.astype(np.float64)
    masked = images * mask
    masked -= np.median(masked, axis=(1, 2), keepdims=True)
    centred = centre_images(masked) * mask
    unit = _unit(centred, mask)
    angles = np.arange(0.0, 360.0, ROTATION_STEP)
    rotate = _rotation_operator(box, angles)
    best = np.full((len(images), len(images)), -1.0)
    for flip in (False, True):
        source = (centred[:, :, ::-1] if flip else centred).reshape(len(images), -1)
        turned = (rotate @ source.T).T.reshape(len(images), len(angles), box, box)
        turned = _unit(turned.astype(np.float32), mask.astype(np.float32))
        turned = turned.reshape(len(images), len(angles), -1)
        scores = np.einsum("ap,brp->abr", unit.reshape(len(images), -1), turned, optimize=True)
        best = np.maximum(best, scores.max(axis=-1))
    return np.maximum(best, best.T)


def _unit(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked, zero mean under the mask, unit norm (all-zero images stay zero): (…, D, D)."""
    flat = images.reshape(-1, mask.size)
    weight = (mask / mask.sum()).ravel()
    centred = flat - (flat @ weight)[:, None]
    centred *= mask.ravel()
    norm = np.sqrt(np.einsum("ip,ip->i", centred, centred))
    centred /= np.where(norm > 0, norm, 1.0)[:, None]
    return centred.reshape(images.shape)


def _rotation_operator(box: int, angles_deg: np.ndarray) -> sparse.csr_matrix:
    """(R·box², box²) bilinear interpolation turning a flattened image by each angle
    (degrees, ``fourier.rotation_coordinates``; outside read as 0): one sparse product
    turns every average by every angle."""
    rows, cols = (where.ravel() for where in rotation_coordinates(box, angles_deg))
    row0, col0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    out, inp, weights = [], [], []
    for dy in (0, 1):
        for dx in (0, 1):
            r, c = row0 + dy, col0 + dx
            w = (1 - np.abs(rows - r)) * (1 - np.abs(cols - c))
            inside = (r >= 0) & (r < box) & (c >= 0) & (c < box) & (w > 0)
            out.append(np.flatnonzero(inside))
            inp.append(r[inside] * box + c[inside])
            weights.append(w[inside])
    return sparse.csr_matrix((np.concatenate(weights), (np.concatenate(out), np.concatenate(inp))),
                             shape=(len(angles_deg) * box * box, box * box))


def cluster_views(similarity: np.ndarray, n_superclasses: int, counts: np.ndarray) -> np.ndarray:
    """(K,) superclass of each class, 1-based, numbered by particle count (largest first).

    Average-linkage clustering of 1 − similarity into at most ``n_superclasses`` groups.
    """
    n_classes = len(similarity)
    if n_classes == 1:
        return np.ones(1, np.int64)
    distance = np.clip(1.0 - similarity, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = fcluster(tree, t=min(n_superclasses, n_classes), criterion="maxclust")
    sizes = np.bincount(labels, weights=counts)
    # largest first; ties by the first class of the group
    first = np.array([np.flatnonzero(labels == g)[0] if (labels == g).any() else n_classes
                      for g in range(len(sizes))])
    order = [g for g in np.lexsort((first, -sizes)) if (labels == g).any()]
    renumber = np.zeros(len(sizes), np.int64)
    renumber[order] = np.arange(1, len(order) + 1)
    return renumber[labels]


def thin(superclass: np.ndarray, factor: float, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly drop particles of crowded superclasses.

    superclass: (n,) 1-based group of each particle; factor: 0–1 (module docstring).
    Returns keep (n,) bool, sizes (G,) and kept counts (G,) per superclass 1…G.
    """
    groups = int(superclass.max())
    sizes = np.bincount(superclass, minlength=groups + 1)[1:]
    smallest = sizes[sizes > 0].min()
    targets = np.floor(smallest + (1.0 - factor) * (sizes - smallest) + 0.5).astype(np.int64)
    targets = np.where(sizes > 0, np.minimum(targets, sizes), 0)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(superclass), bool)
    for group in range(1, groups + 1):
        rows = np.flatnonzero(superclass == group)
        if targets[group - 1] == len(rows):
            keep[rows] = True
        elif len(rows):
            keep[rng.choice(rows, targets[group - 1], replace=False)] = True
    return keep, sizes, targets


def draw_superclasses(path: str, images: np.ndarray, numbers: np.ndarray, superclass: np.ndarray,
                      counts: np.ndarray, kept: np.ndarray) -> str:
    """A picture of the averages, one row (or more) per superclass; returns its path."""
    rows = []
    for group in range(1, superclass.max() + 1):
        members = np.flatnonzero(superclass == group)
        members = members[np.argsort(-counts[members], kind="stable")]
        for start in range(0, len(members), PICTURE_COLUMNS):
            rows.append((group, members[start:start + PICTURE_COLUMNS], start == 0))
    columns = min(PICTURE_COLUMNS, max(len(members) for _, members, _ in rows))
    figure = Figure(figsize=(1.3 * (columns + 1), 1.45 * len(rows)))
    axes = figure.subplots(len(rows), columns + 1, squeeze=False)
    for axis_row, (group, members, first) in zip(axes, rows):
        for axis in axis_row:
            axis.axis("off")
        if first:
            where = superclass == group
            axis_row[0].text(0.5, 0.5, f"superclass {group}\n{counts[where].sum()} → "
                                       f"{kept[where].sum()}", ha="center", va="center",
                             fontsize=8, transform=axis_row[0].transAxes)
        for axis, k in zip(axis_row[1:], members):
            axis.imshow(images[k], cmap="gray", origin="lower")
            axis.set_title(f"{numbers[k]}: {counts[k]}", fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80)
    return path
