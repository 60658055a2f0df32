"""Demo data with known ground truth: a procedural phantom, RELION's conventions, no downloads.

    >>> from class2d.simulate import simulate, write_dataset
    >>> data = simulate(2000, box=64, apix=3.0, snr=0.1, seed=0)      # random views (demo)
    >>> data.images.shape                       # (2000, 64, 64) float32, noise s.d. 1
    >>> data.truth[["true_class", "rlnAnglePsi", "junk", "duplicate_of"]]
    >>> test = simulate(16 * 150, snr=0.05, n_objects=16, junk_fraction=0, duplicate_fraction=0)
    >>> write_dataset(data, "demo")             # demo/particles.star (+ .mrcs, truth.star, ...)
    >>> write_simulated("big", chunk=512, n_particles=100_000, box=256, apix=1.0)  # on disk

What is simulated
-----------------
* A 3D phantom: 40 anisotropic Gaussian blobs in lobes of unequal size along a bent
  chain, ~60% of the box across (:mod:`~class2d.simulate.phantom`).  Its projection at
  any orientation is a sum of 2D Gaussians, drawn exactly (no interpolation).
* Views: one phantom at uniformly random views (``n_objects=None``; ``true_class`` is
  the nearest of its 16 most distinct views), or K objects (``n_objects=K``: of
  max(4K, 48) phantoms at random views, the K projections least alike up to in-plane
  rotation, greedily), equally many particles each, at random ψ and shift.
* Micrographs with their own defocus (8000–25000 Å) and astigmatism (≤ 1000 Å); the CTF
  multiplies the Fourier transform of the scene on a canvas twice the box, so fringes
  cross the box edge as on a micrograph; Gaussian noise at
  SNR = mean over good particles of var(noise-free CTF-modulated image in the box) /
  noise variance, white or (``noise_exponent``) coloured as on denoised micrographs and
  cut from a larger canvas, so that the box edge is a discontinuity.  Images are scaled to noise s.d. 1 (RELION's normalisation), particles
  white (extracted with contrast inverted).
* Junk (``truth["junk"]``): ``noise`` (noise only), ``edge`` (a sharp carbon step or a
  gradual ice edge across the box at a random angle and offset, through the CTF),
  ``aggregate`` (two objects side by side, crossing the box edge).
* Duplicate picks: the same particle picked again 6–15 Å away, with its own noise;
  ``truth["duplicate_of"]`` is the row of the first pick (-1 for first picks).

Conventions (pinned against RELION 3.1.3 ``relion_project`` in tests/test_simulate.py)
------------------------------------------------------------------------------------------
Images are arrays [y, x]; the first pixel is (0, 0) and the origin is pixel (D/2, D/2),
as in MRC files read by RELION.  With A = RELION's ``Euler_angles2matrix(rot, tilt, psi)``
(ZYZ, :func:`euler_matrix`) a point r of the volume lands at A·r, and the image is the
sum along the third axis.

* ψ: the particle is its ψ = 0 projection (``references``) turned by −ψ: a reference
  point p appears at R(−ψ)·p, R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]] acting on (x, y).
  relion_project of the rasterised phantom at 8 poses (tilt up to 130°, ψ up to 170°,
  origins up to 12 Å) correlates > 0.99996 with :func:`project`; with ψ negated
  0.57–0.92, with the inverse rotation 0.65–0.94.
* Origin: the particle's centre lies at −(rlnOriginXAngst, rlnOriginYAngst) / apix px
  from the box centre (relion_project shifts its projection by −origin; negated origins
  correlate 0.27–0.71).  Together: image(x) = reference(R(ψ)·(x + origin / apix)).
* CTF: relion_project ``--ctf`` multiplies the Fourier transform of the projection by
  :func:`class2d.ctf.evaluate` as it stands: positive at low frequency, no sign flip, no
  phase flip, defocus angle from x towards y (correlation > 0.99998 with our CTF applied
  in the box; −0.99998 with the sign flipped; 0.80–0.93 with the angle negated).
* Pick geometry (RELION 3.1 re-extraction): the particle's centre on its micrograph is
  ``rlnCoordinate − rlnOriginAngst / micrograph_apix`` (micrograph px), ``truth``
  ``centre_x/y``; a duplicate's centre equals its first pick's.  The micrograph pixel
  size (default 1 Å, micrographs 4096 px) is in the optics table as
  ``rlnMicrographOriginalPixelSize`` and ``rlnMicrographPixelSize``.

* Crowding (``neighbours``): other particles drawn around every pick, partly inside
  its box.

* A classifier's output (:func:`~class2d.simulate.classified.classifier_output`): classes,
  poses and scores from the truth, optionally each object split into two classes centred
  differently (two picks of one particle then often have distant aligned centres).

Simplifications: the CTF has no envelope; the ice is uniform.
"""

from class2d.simulate.classified import classifier_output
from class2d.simulate.dataset import JUNK_TYPES, Dataset, simulate
from class2d.simulate.output import (read_truth, simulate_demo, write_dataset, write_labelled,
                                     write_simulated)
from class2d.simulate.phantom import Phantom, euler_matrix, make_phantom, project, rasterize

__all__ = ["JUNK_TYPES", "Dataset", "Phantom", "classifier_output", "euler_matrix", "make_phantom", "project",
           "rasterize", "read_truth", "simulate", "simulate_demo", "write_dataset",
           "write_labelled", "write_simulated"]
