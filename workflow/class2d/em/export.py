"""Final outputs of a classification: classes and particles as RELION and CryoSPARC read them.

    >>> write_outputs(stack, state, assignments, params, "results/classify")

Pose conventions (pinned against ``relion_project`` in the tests): internally an image
is its class rotated by ψ and shifted by t px (``kernels/scalar.py``); RELION writes the
same image as ``ref(R(ψ_R)(x + o/apix))``, so ``rlnAnglePsi = −ψ`` and
``rlnOriginXAngst/YAngst = −t · apix`` (apix of the alignment box, i.e. Å in the
original particle frame).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from class2d import io
from class2d.em.bias import alignment_bias
from class2d.em.mstep import class_resolution
from class2d.em.outliers import outlier_scores
from class2d.em.params import ClassifyParams
from class2d.em.state import ClassState
from class2d.fourier import pixel_grid, rotate_images
from class2d.kernels import get_backend
from class2d.prepare import PreparedStack
from class2d.report import convergence_plot, convergence_table, gallery
from class2d.timing import timer

logger = logging.getLogger(__name__)


def relion_pose(psi: np.ndarray, tx: np.ndarray, ty: np.ndarray,
                apix: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rlnAnglePsi in (−180, 180] degrees, rlnOriginXAngst, rlnOriginYAngst) of internal poses."""
    angle = -np.degrees(psi)
    angle = np.mod(angle + 180.0, 360.0) - 180.0
    angle = np.where(angle == -180.0, 180.0, angle)
    return angle, -tx * apix, -ty * apix


def vertical_rotation(image: np.ndarray) -> float:
    """Angle φ (radians, internal convention) that turns the image's long axis vertical."""
    box = image.shape[-1]
    y, x = pixel_grid(box)
    w = np.clip(image, 0, None)
    if w.sum() <= 0:
        return 0.0
    cov = np.cov(np.stack([x.ravel(), y.ravel()]), aweights=w.ravel())
    values, vectors = np.linalg.eigh(cov)
    axis = np.arctan2(vectors[1, -1], vectors[0, -1])
    return float(np.pi / 2 - axis)


def align_vertically(images: np.ndarray, psi: np.ndarray,
                     classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each class so its long axis is vertical (filaments) and every particle's ψ
    with it: image = R(ψ)·class = R(ψ − φ)·(R(φ)·class), turned about the centre pixel
    (``fourier.rotate_images``).  Returns (images, psi)."""
    phi = np.array([vertical_rotation(image) for image in images])
    turned = np.stack([rotate_images(image, np.degrees(a))
                       for image, a in zip(images, phi)]).astype(np.float32)
    return turned, psi - phi[classes]


def class_order(counts: np.ndarray, sort: bool) -> np.ndarray:
    """Output position → internal class: by decreasing size when ``sort``."""
    return np.argsort(-counts, kind="stable") if sort else np.arange(counts.size)


def write_outputs(stack: PreparedStack, state: ClassState, out: dict, params: ClassifyParams,
                  out_dir: str | os.PathLike) -> None:
    """Write classes.{mrcs,star,cs}, particles.{star,cs}, gallery.png, convergence.{tsv,png}.

    The particles carry, besides their class and pose, the per-particle outlier statistics
    of ``em.outliers`` (``rlnParticleSelectZScore``, ``.cs`` ``class2d/select_zscore``).
    Timed (``class2d.timing``) as ``writing files`` and ``pictures`` besides the parts of the
    functions called (``bias``, ``outlier scores``)."""
    out_dir = os.fspath(out_dir)
    k_count = state.n_classes
    best = out["best_class"].astype(np.int64)
    counts = np.bincount(best, minlength=k_count)
    order = class_order(counts, params.sort_classes)
    new_index = np.empty(k_count, np.int64)
    new_index[order] = np.arange(k_count)
    images = state.references.copy()
    psi_internal = out["psi"]
    if params.align_filaments_vertically:
        images, psi_internal = align_vertically(images, psi_internal, best)
    images = images[order]
    images[counts[order] == 0] = 0.0
    bias = alignment_bias(stack, state, params, get_backend("cpu"))
    resolution = class_resolution(state, params, bias)[order]
    stats = _class_stats(best, out, k_count)
    classes = pd.DataFrame({
        "rlnReferenceImage": [f"{k + 1}@classes.mrcs" for k in range(k_count)],
        "rlnClassNumber": np.arange(1, k_count + 1),
        "rlnClassDistribution": counts[order] / max(best.size, 1),
        "rlnEstimatedResolution": np.where(counts[order] > 0, resolution, 999.0),
        "rlnImagePixelSize": np.full(k_count, state.apix),
        "c2dParticleCount": counts[order],
        "c2dMeanPosterior": stats["posterior"][order],
        "c2dEffectiveClasses": stats["eca"][order],
    })
    with timer("writing files"):
        io.write_stack(os.path.join(out_dir, "classes.mrcs"), images, state.apix)
        io.write_star_blocks({"classes": classes}, os.path.join(out_dir, "classes.star"))
        _write_classes_cs(os.path.join(out_dir, "classes.cs"), classes, images.shape[-1],
                          state.apix)
    outliers = outlier_scores(out, best)
    psi, ox, oy = relion_pose(psi_internal, out["tx"], out["ty"], state.apix)
    table = stack.table().with_columns(
        rlnClassNumber=new_index[best] + 1, rlnAnglePsi=psi, rlnOriginXAngst=ox,
        rlnOriginYAngst=oy, rlnMaxValueProbDistribution=out["pmax"],
        rlnNrOfSignificantSamples=out["nsig"].astype(np.int64),
        rlnLogLikeliContribution=out["loglik"], rlnNormCorrection=state.alpha,
        c2dAlignmentError=-out["loglik"],
        **{"alignments2D/class_posterior": out["gamma"].astype(np.float32),
           "alignments2D/class_ess": out["ess"].astype(np.float32),
           "alignments2D/alpha": state.alpha.astype(np.float32),
           "alignments2D/error": (-out["loglik"]).astype(np.float32),
           "alignments2D/psize_A": np.full(best.size, state.apix, np.float32)}, **outliers)
    with timer("writing files"):
        io.write_particles(table, os.path.join(out_dir, "particles.star"))
        io.write_particles(table, os.path.join(out_dir, "particles.cs"))
        convergence_table(state.history, os.path.join(out_dir, "convergence.tsv"))
    labels = [f"{k + 1}: {c} ptcls\n{r:.1f} Å" if c else f"{k + 1}: empty"
              for k, (c, r) in enumerate(zip(counts[order], resolution))]
    with timer("pictures"):
        gallery(images, labels, os.path.join(out_dir, "gallery.png"),
                title=f"{k_count} classes, {best.size} particles{live_round(state.history)}, "
                      f"sorted by size")
        convergence_plot(state.history, os.path.join(out_dir, "convergence.png"))
    logger.info("classes: %s particles per class", counts[order].tolist())


def live_round(history: list[dict]) -> str:
    """``", live round r"`` for classes from ``class2d.live``'s r-th round (its history rows
    are of kind ``"live …"``), else ``""``."""
    rounds = sum(row["kind"].startswith("live") for row in history)
    return f", live round {rounds}" if rounds else ""


def _class_stats(best: np.ndarray, out: dict, k_count: int) -> dict[str, np.ndarray]:
    counts = np.maximum(np.bincount(best, minlength=k_count), 1)
    return {"posterior": np.bincount(best, out["gamma"], k_count) / counts,
            "eca": np.bincount(best, out["ess"], k_count) / counts}


def _write_classes_cs(path: str, classes: pd.DataFrame, box: int, apix: float) -> None:
    """Class averages as CryoSPARC lists them (``blob/*`` plus per-class statistics)."""
    k_count = len(classes)
    io.write_cs_fields({
        "uid": np.arange(1, k_count + 1), "blob/path": np.full(k_count, "classes.mrcs"),
        "blob/idx": np.arange(k_count), "blob/shape": np.full((k_count, 2), box),
        "blob/psize_A": np.full(k_count, apix), io.SIGN_COLUMN: np.ones(k_count),
        "alignments2D/class": np.arange(k_count),
        "alignments2D/res_A": classes["rlnEstimatedResolution"].to_numpy(),
        "alignments2D/class_ess": classes["c2dEffectiveClasses"].to_numpy(),
        "alignments2D/num_particles": classes["c2dParticleCount"].to_numpy(),
        "alignments2D/class_posterior": classes["c2dMeanPosterior"].to_numpy()}, k_count, path)
