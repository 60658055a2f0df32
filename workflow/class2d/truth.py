"""Class averages against the simulator's noise-free views (demo data only).

    >>> table = compare_with_truth("classify/classes.mrcs", "demo/references.mrcs",
    ...                            "classify/truth_frc.tsv")

For every class: the true view it matches best (over in-plane rotations and shifts), the
normalised correlation there, and the resolution where the Fourier ring correlation with
that view falls below 0.5.
"""

from __future__ import annotations

import logging

import mrcfile
import numpy as np
import pandas as pd
from class2d.fourier import (align, fourier_crop, frc, frc_resolution, rotate_images,
                             shift_images)
from class2d.io.atomic import atomic_path

logger = logging.getLogger(__name__)

#: in-plane rotations tried, degrees
ANGLE_STEP = 4.0


def best_match(image: np.ndarray, reference: np.ndarray) -> tuple[float, np.ndarray]:
    """(correlation, reference rotated and shifted onto ``image``) over rotations by
    ANGLE_STEP and shifts (``fourier.align``)."""
    angle, shift, correlation = align(image, reference, np.arange(0.0, 360.0, ANGLE_STEP))
    return correlation, shift_images(rotate_images(reference, angle)[None], shift[None])[0]


def compare_with_truth(classes_mrcs: str, references_mrcs: str, out_tsv: str) -> pd.DataFrame:
    """Match every class average to its nearest true view; write and return the table."""
    with mrcfile.open(classes_mrcs, permissive=True) as mrc:
        classes = np.asarray(mrc.data, np.float64)
        apix = float(mrc.voxel_size.x)
    with mrcfile.open(references_mrcs, permissive=True) as mrc:
        references = np.asarray(mrc.data, np.float64)
    box = classes.shape[-1]
    if references.shape[-1] != box:
        references = fourier_crop(references, box)
    rows = []
    for k, image in enumerate(classes, start=1):
        if not np.any(image):
            rows.append({"class": k, "true_view": -1, "correlation": 0.0, "frc05_A": np.nan})
            continue
        matches = [best_match(image, ref) for ref in references]
        view = int(np.argmax([c for c, _ in matches]))
        curve = frc(image, matches[view][1])
        rows.append({"class": k, "true_view": view, "correlation": matches[view][0],
                     "frc05_A": frc_resolution(curve, box, apix, 0.5)})
    table = pd.DataFrame(rows)
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.3f")
    good = table[table["true_view"] >= 0]
    logger.info("classes vs truth: median correlation %.2f, median FRC-0.5 resolution %.1f Å, "
                "%d of %d true views found", good["correlation"].median(),
                good["frc05_A"].median(), good["true_view"].nunique(), len(references))
    return table

