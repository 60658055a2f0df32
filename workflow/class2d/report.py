"""Pictures for people: the class gallery, the convergence table and its plot.

    >>> gallery(images, ["1: 230 ptcls, 8.1 Å", ...], "results/classify/gallery.png")
    >>> convergence_table(state.history, "results/classify/convergence.tsv")
    >>> convergence_plot(state.history, "results/classify/convergence.png")
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from class2d.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def gallery(images: np.ndarray, labels: list[str], path: str | os.PathLike,
            columns: int = 10, title: str | None = None) -> None:
    """Save (K, d, d) images as a labelled grid PNG, each image scaled on its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, images.shape[0])
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    height = 1.8 * rows + 0.6          # inches; the top 0.6 for the title and first labels
    # a fixed layout: tight_layout measured every title and took longer than the drawing
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, height), squeeze=False,
                             gridspec_kw={"left": 0.01, "right": 0.99, "bottom": 0.01,
                                          "top": 1.0 - 0.6 / height, "wspace": 0.05,
                                          "hspace": 0.25})
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        lo, hi = np.percentile(image, [1, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9, y=1.0 - 0.1 / height, va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def convergence_table(history: list[dict], path: str | os.PathLike) -> None:
    """One row per iteration: kind, resolution, poses, log-likelihood, changes, classes, work
    (GFLOP of the E-step products; the times they took are in the jobs' logs).  Classes in
    use and the largest class count the pass's own best classes (``pass_sizes``), not the
    blended statistics, which keep a class that lost every particle at its old size."""
    header = ["iteration", "kind", "res_A", "poses", "local_poses", "frequencies", "particles",
              "loglik", "changed", "classes_nonempty", "largest_class", "gflops"]
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(header) + "\n")
        for row in history:
            sizes = np.asarray(row.get("pass_sizes", row["class_sizes"]))
            values = dict(row, classes_nonempty=int((sizes > 0.5).sum()),
                          largest_class=float(sizes.max() / max(sizes.sum(), 1e-12)))
            fh.write("\t".join(_fmt(values[key]) for key in header) + "\n")


def convergence_series(history: list[dict]) -> dict[str, np.ndarray]:
    """What the convergence plot draws, from ``history`` (rows as in
    :func:`convergence_table`): ``iteration`` (n,), ``loglik`` (n,) mean per particle,
    ``res_A`` (n,) alignment resolution in Å, ``shares`` (n, K) each class's share of the
    iteration's particles (its own best classes, ``pass_sizes``, where recorded)."""
    sizes = np.array([row.get("pass_sizes", row["class_sizes"]) for row in history], float)
    return {"iteration": np.array([row["iteration"] for row in history]),
            "loglik": np.array([row["loglik"] for row in history], float),
            "res_A": np.array([row["res_A"] for row in history], float),
            "shares": sizes / np.maximum(sizes.sum(axis=1, keepdims=True), 1e-12)}


def convergence_plot(history: list[dict], path: str | os.PathLike) -> None:
    """Save a PNG (576 × 648 px) of three panels over the iterations of ``history``: mean
    log-likelihood per particle, alignment resolution (Å), and every class's share of the
    particles, stacked (:func:`convergence_series`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = convergence_series(history)
    iterations, shares = series["iteration"], series["shares"]
    fig, (ax_ll, ax_res, ax_size) = plt.subplots(3, 1, figsize=(6.4, 7.2), sharex=True)
    ax_ll.plot(iterations, series["loglik"], "o-")
    ax_ll.set_ylabel("log-likelihood\nper particle")
    ax_res.plot(iterations, series["res_A"], "o-")
    ax_res.set_ylabel("alignment\nresolution (Å)")
    ax_res.invert_yaxis()                    # finer resolution higher up
    ax_size.stackplot(iterations, shares.T, linewidth=0.3, edgecolor="white")
    ax_size.set_ylim(0, 1)
    ax_size.set_ylabel(f"share of particles\n({shares.shape[1]} classes)")
    ax_size.set_xlabel("iteration")
    ax_size.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle("Convergence: online EM, then full passes")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
