"""Real β-galactosidase particles (EMPIAR-10017) cut from the shared denoised micrographs.

    >>> star = write_particles(SHARED_DATA / FOLDER, "/tmp/begal", n_max=1200)
    >>> prepare_stack(star, "/tmp/begal/prepare", diameter_A=PARTICLE_DIAMETER_A)

The micrographs are 4096² 8-bit JPEGs at ~1.77 Å/px, denoised (so their noise is
coloured), particles dark; each has a mask of filled 108-px discs at the manual picks.
Touching discs merge into one connected component, so the centres are the peaks of the
mask's distance transform (on the first micrograph these match the 629 picks of its
``.csv`` to 0 px for 95 % of them).  Each particle: a 192-px box around its centre,
Fourier-cropped to 96 px (3.54 Å/px), contrast inverted (particles white), background
mean 0 and s.d. 1 outside the particle.  Boxes that would cross the micrograph edge are
dropped.  No CTF is known: the STAR gives a CTF of 1 (defocus 0, Cs 0, amplitude
contrast 1, for which :func:`class2d.ctf.evaluate` is sin(π/2) = 1 at every frequency).

Run as a script to write a folder: ``python tests/begal.py OUT_DIR [N_MAX]``.
Never commit what it writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from class2d import io
from class2d.fourier import fourier_crop
from class2d.io.mrc import write_stack
from class2d.io.table import ParticleTable
from class2d.prepare import background_mask, normalise

#: the micrographs and masks, relative to ../shared/data
FOLDER = "micrographs/empiar10017_begal_denoised"
#: Å/px of the micrographs (EMPIAR's figure; not in the files)
MICROGRAPH_APIX = 1.77
#: px on the micrograph: pick discs, particle box, and the box after Fourier cropping
DISC_PX, BOX_PX, CROPPED_PX = 108, 192, 96
#: Å, the particle's diameter (the pick discs), for normalisation and the mask
PARTICLE_DIAMETER_A = DISC_PX * MICROGRAPH_APIX


def pick_centres(mask: np.ndarray) -> np.ndarray:
    """(n, 2) float (x, y) micrograph px of the pick discs of a (H, W) mask image.

    Peaks of the distance transform (≥ ⅔ of the disc radius, one per 41-px window): one
    per disc, also where discs touch and merge into one component.
    """
    inside = mask > 127
    distance = ndimage.distance_transform_edt(inside)
    peaks = (distance == ndimage.maximum_filter(distance, size=41)) & (distance >= DISC_PX / 3)
    labels, count = ndimage.label(peaks)
    centres = np.array(ndimage.center_of_mass(peaks, labels, range(1, count + 1)))
    return centres[:, ::-1].reshape(-1, 2)


def cut_particles(micrograph: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Particles of one micrograph: (images (m, 96, 96) float32, kept (n,) bool).

    micrograph: (H, W) dark particles on a light background; centres: (n, 2) (x, y) px.
    A box crossing the micrograph's edge is dropped (``kept`` False).
    """
    corner = np.rint(centres).astype(int) - BOX_PX // 2
    height, width = micrograph.shape
    kept = ((corner >= 0).all(axis=1) & (corner[:, 0] + BOX_PX <= width)
            & (corner[:, 1] + BOX_PX <= height))
    boxes = np.stack([micrograph[y:y + BOX_PX, x:x + BOX_PX] for x, y in corner[kept]]
                     ) if kept.any() else np.zeros((0, BOX_PX, BOX_PX))
    cropped = -fourier_crop(boxes.astype(np.float32), CROPPED_PX)
    radius = PARTICLE_DIAMETER_A / 2 / (MICROGRAPH_APIX * BOX_PX / CROPPED_PX)
    return normalise(cropped, background_mask(CROPPED_PX, radius)), kept


def write_particles(folder: str | os.PathLike, out_dir: str | os.PathLike,
                    n_max: int | None = None) -> str:
    """Cut every micrograph's particles into ``out_dir/particles.{mrcs,star}``; the first
    ``n_max`` particles (micrographs in name order) when given.  Returns the STAR path."""
    from PIL import Image

    folder, out_dir = Path(folder), Path(out_dir)
    images, rows = [], []
    for path in sorted((folder / "images").glob("*.jpg")):
        mask = np.asarray(Image.open(folder / "masks" / f"{path.stem}_mask.jpg").convert("L"))
        micrograph = np.asarray(Image.open(path).convert("L"), np.float32)
        centres = pick_centres(mask)
        cut, kept = cut_particles(micrograph, centres)
        images.append(cut)
        rows.append(pd.DataFrame({"rlnMicrographName": f"{path.stem}.mrc",
                                  "rlnCoordinateX": np.rint(centres[kept, 0]),
                                  "rlnCoordinateY": np.rint(centres[kept, 1])}))
        if n_max and sum(len(r) for r in rows) >= n_max:
            break
    stack = np.concatenate(images)[:n_max]
    particles = pd.concat(rows, ignore_index=True).iloc[:len(stack)]
    n = len(stack)
    particles.insert(0, "rlnImageName", [f"{i + 1:06d}@particles.mrcs" for i in range(n)])
    particles = particles.assign(rlnDefocusU=0.0, rlnDefocusV=0.0, rlnDefocusAngle=0.0,
                                 rlnOpticsGroup=1)
    apix = MICROGRAPH_APIX * BOX_PX / CROPPED_PX
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [MICROGRAPH_APIX],
        "rlnMicrographPixelSize": [MICROGRAPH_APIX],
        "rlnVoltage": [300.0], "rlnSphericalAberration": [0.0], "rlnAmplitudeContrast": [1.0],
        "rlnImagePixelSize": [apix], "rlnImageSize": [CROPPED_PX], "rlnImageDimensionality": [2],
    })
    out_dir.mkdir(parents=True, exist_ok=True)
    write_stack(out_dir / "particles.mrcs", stack, apix)
    star = out_dir / "particles.star"
    io.write_particles(ParticleTable(particles, optics, base_dir=str(out_dir)), star)
    return str(star)


if __name__ == "__main__":
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    print(write_particles(shared / FOLDER, sys.argv[1],
                          int(sys.argv[2]) if len(sys.argv) > 2 else None))
