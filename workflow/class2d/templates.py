"""Templates for particle pickers from selected class averages.

    >>> paths = export_templates("results/select/classes.star", "results/templates",
    ...                          lowpass_A=20.0, picker_apix=1.06, contrast="dark")
    >>> # relion_autopick --i micrographs.star --ref results/templates/templates.star --lowpass 20

Each average is re-centred (centre of mass of its density), low-pass filtered
(``lowpass_A``: half amplitude there, raised-cosine edge two Fourier pixels wide),
resampled to the picker's pixel size by Fourier cropping or padding, cut or padded to the
picker's box, masked with
a soft circle and scaled to unit s.d. inside it.  The pixel size is hit exactly where
possible: the average is first zero-padded to a box whose Fourier resampling gives a
whole number of pixels (``rlnImagePixelSize`` in ``templates.star`` is the exact value).

Contrast.  Class averages show density white.  Micrographs show particles dark on a light
background, and ``relion_autopick`` matches templates of the *same* contrast as the
micrographs unless told ``--invert`` ("density in micrograph is inverted w.r.t. density in
template").  So ``contrast="dark"`` (default) writes dark particles on a zero background:
use with ``relion_autopick`` as it is.  ``contrast="light"`` keeps density white: use with
``relion_autopick --invert``, or for micrographs whose contrast was already inverted.
``contrast="keep"`` leaves the averages' sign alone.  The density of each average is
recognised by the sign of its mean inside the particle disc (relative to the background).
In ``templates.cs``, ``blob/sign`` is −1 for dark and +1 for light templates
(CryoSPARC's convention: data × sign shows density white).

Files: ``templates.mrcs`` (float32, pixel size in the header); ``templates.star`` (block
``data_templates``: ``rlnReferenceImage`` as ``k@/absolute/path/templates.mrcs``, because
RELION opens it relative to the directory it runs in; ``rlnClassNumber``;
``rlnImagePixelSize``); ``templates.cs`` (``blob/*`` and ``alignments2D/class``).
RELION does not read the pixel size from the STAR: when ``picker_apix`` is not the
micrographs' pixel size, pass ``--angpix_ref`` with ``rlnImagePixelSize``.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from class2d import discs
from class2d.errors import ConfigError, InputError
from class2d.fourier import (centered_irfft2, centered_rfft2, centre_images, circular_mask,
                             fourier_crop, pixel_radius, rfft_frequencies)
from class2d.io import (ParticleTable, read_classes, write_particles, write_stack,
                        write_star_blocks)
from class2d.io.table import SIGN_COLUMN

logger = logging.getLogger(__name__)

CONTRASTS = ("dark", "light", "keep")
#: padded boxes tried, as multiples of the class box, to hit the pixel size exactly
MAX_PAD = 2.0
#: relative pixel-size error accepted without searching further
APIX_TOLERANCE = 1e-4


def export_templates(classes_star: str | os.PathLike, out_dir: str | os.PathLike,
                     lowpass_A: float | None = 20.0, picker_apix: float | None = None,
                     picker_box: int | None = None, contrast: str = "dark",
                     recentre: bool = True, classes: list[int] | None = None,
                     particle_diameter_A: float = 0.0) -> dict[str, str]:
    """Write picker templates from class averages (see the module docstring).

    classes_star: selected classes (``classes.star``); lowpass_A: Å (``None`` or 0: none);
    picker_apix: Å/px of the micrographs to pick (default: the averages' pixel size);
    picker_box: px, even (default: the averages' field of view at ``picker_apix``);
    contrast: ``"dark"``, ``"light"`` or ``"keep"``; recentre: shift each average's centre
    of mass to the box centre; classes: class numbers to export (default: all);
    particle_diameter_A: Å (0: from the box), where the density and the background are
    measured (``discs``).
    Returns {file name: path}.
    """
    if contrast not in CONTRASTS:
        raise ConfigError("templates.contrast", f"must be one of {', '.join(CONTRASTS)}, "
                                                f"got {contrast!r}")
    if picker_apix is not None and not picker_apix > 0:
        raise ConfigError("templates.picker_apix", f"must be > 0 Å/px, got {picker_apix}")
    if picker_box is not None and (picker_box < 8 or picker_box % 2):
        raise ConfigError("templates.picker_box", f"must be an even number of px ≥ 8, got "
                                                  f"{picker_box}")
    class_set = read_classes(classes_star)
    numbers = class_set.table["rlnClassNumber"].to_numpy(np.int64)
    rows = np.arange(len(numbers))
    if classes is not None:
        missing = sorted(set(classes) - set(numbers.tolist()))
        if missing:
            raise ConfigError("templates.classes", f"class {missing[0]} is not in "
                                                   f"{class_set.path} (its classes: "
                                                   f"{', '.join(map(str, numbers))})")
        rows = np.flatnonzero(np.isin(numbers, classes))
    images = np.asarray(class_set.images[rows], np.float64)
    empty = ~np.any(images != 0, axis=(1, 2))
    if empty.any():
        logger.warning("%s: skipping empty class(es) %s", class_set.path, numbers[rows][empty])
        rows, images = rows[~empty], images[~empty]
    if len(rows) == 0:
        raise InputError(class_set.path, "no non-empty class average to make templates from")

    apix = class_set.apix
    images, density_sign = _prepare(images, apix, particle_diameter_A)
    if recentre:
        images = centre_images(images * density_sign[:, None, None]) * density_sign[:, None, None]
    target_apix = apix if picker_apix is None else float(picker_apix)
    images, new_apix = resample(images, apix, target_apix, lowpass_A)
    box = picker_box or images.shape[-1]
    field = images.shape[-1]
    images = crop_or_pad(images, box)
    edge = discs.mask_edge_px(box, new_apix)
    mask = circular_mask(box, 0.5 * min(box, field) - edge, edge).astype(np.float64)
    images *= mask
    signs = {"dark": -density_sign, "light": density_sign, "keep": np.ones(len(rows))}[contrast]
    images *= signs[:, None, None]
    spread = np.sqrt((images ** 2 * mask).sum(axis=(1, 2)) / mask.sum())
    images /= np.where(spread > 0, spread, 1.0)[:, None, None]

    out_dir = os.fspath(out_dir)
    paths = {name: os.path.join(out_dir, name)
             for name in ("templates.mrcs", "templates.star", "templates.cs")}
    write_stack(paths["templates.mrcs"], images.astype(np.float32), new_apix)
    stack = os.path.abspath(paths["templates.mrcs"])
    # blob/sign: data × sign shows density white
    write_particles(_template_table(numbers[rows], signs * density_sign, new_apix, box, out_dir),
                    paths["templates.cs"])
    write_star_blocks({"templates": pd.DataFrame({
        "rlnReferenceImage": [f"{k + 1}@{stack}" for k in range(len(rows))],
        "rlnClassNumber": numbers[rows], "rlnImagePixelSize": new_apix})},
        paths["templates.star"])
    logger.info("%s: %d templates of %d px at %.4g Å/px (%s contrast, low-pass %s Å) in %s",
                class_set.path, len(rows), box, new_apix, contrast, lowpass_A, out_dir)
    return paths


def _prepare(images: np.ndarray, apix: float,
             particle_diameter_A: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Subtract each average's background (median over the class mask's soft edge); the
    sign of its density (mean inside the particle's disc) (K,).  images: (K, D, D)."""
    box = images.shape[-1]
    radius = pixel_radius(box)
    outer, edge = discs.mask_radius_px(box, apix, particle_diameter_A)
    annulus = (radius >= outer - edge) & (radius < outer)
    images = images - np.median(images[:, annulus], axis=1)[:, None, None]
    particle = radius < discs.particle_radius_px(box, apix, particle_diameter_A)
    inside = images[:, particle].mean(axis=1)
    sign = np.where(inside < 0, -1.0, 1.0)
    if len(set(sign)) > 1:
        logger.warning("averages of both contrasts: %d white, %d dark; each is set by its own",
                       int((sign > 0).sum()), int((sign < 0).sum()))
    return images, sign


def resample(images: np.ndarray, apix: float, new_apix: float,
             lowpass_A: float | None = None) -> tuple[np.ndarray, float]:
    """Low-pass and Fourier-resample (K, D, D) images from ``apix`` to ``new_apix`` Å/px.

    Returns the images (K, Q, Q) covering at least the same field of view, and their exact
    pixel size (equal to ``new_apix`` within ``APIX_TOLERANCE`` where a padded box allows).
    """
    box = images.shape[-1]
    ratio = apix / new_apix
    padded = box
    best_error = np.inf
    for size in range(box, int(MAX_PAD * box) + 1, 2):
        new_size = max(2, 2 * int(round(size * ratio / 2)))
        error = abs(size * ratio / new_size - 1.0)
        if error < best_error - 1e-12:
            padded, best_error = size, error
        if error < APIX_TOLERANCE:
            break
    new_size = max(2, 2 * int(round(padded * ratio / 2)))
    images = crop_or_pad(images, padded)
    if lowpass_A:
        spectra = centered_rfft2(images)
        fy, fx = rfft_frequencies(padded, apix)
        frequency = np.hypot(fy, fx)
        cutoff, width = 1.0 / lowpass_A, 2.0 / (padded * apix)
        ramp = np.clip((frequency - cutoff) / width + 0.5, 0.0, 1.0)
        images = centered_irfft2(spectra * (0.5 + 0.5 * np.cos(np.pi * ramp)), padded)
    out_apix = apix * padded / new_size
    if best_error > 0.005:
        logger.warning("templates at %.4g Å/px, not %.4g Å/px (no padded box fits better)",
                       out_apix, new_apix)
    return fourier_crop(images, new_size), out_apix


def crop_or_pad(images: np.ndarray, box: int) -> np.ndarray:
    """Centre-crop or zero-pad (K, D, D) images to (K, box, box), keeping the centre pixel."""
    size = images.shape[-1]
    if size == box:
        return images
    out = np.zeros(images.shape[:-2] + (box, box), images.dtype)
    start_in, start_out = max(size // 2 - box // 2, 0), max(box // 2 - size // 2, 0)
    span = min(size, box)
    out[..., start_out:start_out + span, start_out:start_out + span] = \
        images[..., start_in:start_in + span, start_in:start_in + span]
    return out


def _template_table(numbers: np.ndarray, blob_sign: np.ndarray, apix: float, box: int,
                    out_dir: str) -> ParticleTable:
    """The templates as a particle table, for ``class2d.io.write_cs``."""
    particles = pd.DataFrame({"rlnImageName": [f"{k + 1}@templates.mrcs"
                                               for k in range(len(numbers))],
                              "rlnClassNumber": numbers, "rlnOpticsGroup": 1,
                              SIGN_COLUMN: blob_sign.astype(np.float64)})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["templates"],
                           "rlnImagePixelSize": [apix], "rlnImageSize": [box]})
    return ParticleTable(particles, optics, base_dir=os.path.abspath(out_dir))
