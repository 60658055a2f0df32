"""Averages of particle images in their class's frame, made from the images and the poses.

    >>> image = class_frame_average(table, rows)     # (D, D) float64, the table's box

Select uses it to judge a class on the particles that fit it (``select.refit_classes``):
the classifier's average holds every member, junk included.

Each image is normalised as preparation does (background mean 0, s.d. 1 outside
``discs.normalisation_radius_px``) and turned white (``ParticleTable.image_signs``), multiplied by its CTF, and
brought into its class's frame by its pose: a particle shows ``ref(R(ψ)(x + o/apix))``
(``em/export.py``: ``rlnAnglePsi`` ψ, ``rlnOriginX/YAngst`` o), so the class-frame pixel y
reads the particle at R(−ψ)·y − o/apix (``fourier.rotation_coordinates``, bilinear).  The
sum is divided, per frequency, by the sum of the CTF² turned alike (the CTF of an image
turned by ψ is its CTF with the astigmatism angle turned by ψ) plus WIENER_FLOOR per
particle: the classifier's M-step with a flat signal-to-noise ratio.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from class2d import discs
from class2d.ctf import evaluate
from class2d.fourier import FFT_WORKERS, rfft_frequencies, rotation_coordinates
from class2d.io import ParticleTable
from class2d.io.mrc import read_images
from class2d.prepare import background_mask, normalise

#: added to the CTF² sum per particle (CTF² averages ½): keeps the CTF's zeros finite
WIENER_FLOOR = 0.1
#: images read, turned and summed at a time (about 64 × box² × 40 bytes of working arrays)
BATCH = 64


def class_frame_average(table: ParticleTable, rows: np.ndarray,
                        diameter_A: float = 0.0) -> np.ndarray:
    """The CTF-corrected average (D, D) float64 of the particles ``rows`` (indices into
    ``table``) in their class's frame (see the module docstring); ``diameter_A``: the
    particle diameter, Å, for the normalisation (0: ``discs``' default)."""
    rows = np.asarray(rows, np.int64)
    if rows.size == 0:
        raise ValueError("no particles to average")
    part = table.subset(rows)
    apix = part.pixel_size()
    box = int(part.box_size()[0])
    fy, fx = rfft_frequencies(box, apix=float(apix[0]))
    psi = part.numbers("rlnAnglePsi")
    origins = np.stack([part.numbers(f"rlnOrigin{axis}Angst") for axis in "YX"], axis=1) \
        / apix[:, None]
    signs = part.image_signs()
    ctf = part.ctf_params()
    background = background_mask(box, discs.normalisation_radius_px(box, float(apix[0]),
                                                                     diameter_A))
    total = np.zeros((box, box))
    weight = np.zeros((box, box // 2 + 1))
    for start in range(0, rows.size, BATCH):
        batch = slice(start, min(start + BATCH, rows.size))
        images = normalise(read_images(table, rows[batch]), background) \
            * signs[batch, None, None]
        params = ctf.take(np.arange(batch.start, batch.stop))
        weighted = scipy.fft.irfft2(scipy.fft.rfft2(images, workers=FFT_WORKERS)
                                    * evaluate(params, fx, fy), s=(box, box),
                                    workers=FFT_WORKERS)
        where = rotation_coordinates(box, psi[batch]) - origins[batch].T[:, :, None, None]
        for image, coordinates in zip(weighted, np.moveaxis(where, 1, 0)):
            total += ndimage.map_coordinates(image, coordinates, order=1)
        turned = params._replace(defocus_angle=params.defocus_angle + psi[batch])
        weight += (evaluate(turned, fx, fy, np.float64) ** 2).sum(axis=0)
    spectrum = scipy.fft.rfft2(total) / (weight + WIENER_FLOOR * rows.size)
    return scipy.fft.irfft2(spectrum, s=(box, box))
