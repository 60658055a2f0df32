"""Frequency sets (which Fourier coefficients take part) and pose grids (ψ, t).

    >>> freqs = FrequencySet.within(64, r_max=20.0)      # half-plane coefficients, radius ≤ 20
    >>> x = freqs.take(centered_rfft2(images))            # (n, F) complex64
    >>> poses = PoseGrid.make(psi_step_deg=6.0, side=7, step_px=1.0)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from class2d.fourier import rfft_frequencies


@dataclasses.dataclass(frozen=True)
class FrequencySet:
    """Coefficients of the ``rfft2`` grid of a d-box within a ring of radii.

    iy, ix: (F,) indices into the (d, d//2+1) spectrum;  fx, fy: (F,) float32 Fourier px
    wf: (F,) float32 half-plane weight (½ on the kx = 0 column, whose ±ky pairs both appear)
    shell: (F,) int rounded radius;  box: d
    """

    iy: np.ndarray
    ix: np.ndarray
    fx: np.ndarray
    fy: np.ndarray
    wf: np.ndarray
    shell: np.ndarray
    box: int

    @classmethod
    def within(cls, box: int, r_max: float, r_min: float = 1.0) -> "FrequencySet":
        fy, fx = rfft_frequencies(box)
        fy, fx = np.broadcast_arrays(fy * box, fx * box)
        radius = np.hypot(fx, fy)
        keep = (radius <= r_max) & (radius >= r_min)
        iy, ix = np.nonzero(keep)
        wf = np.where(ix == 0, 0.5, 1.0).astype(np.float32)
        return cls(iy=iy, ix=ix, fx=fx[keep].astype(np.float32), fy=fy[keep].astype(np.float32),
                   wf=wf, shell=np.rint(radius[keep]).astype(np.int64), box=box)

    @property
    def size(self) -> int:
        return self.iy.size

    @property
    def radius(self) -> np.ndarray:
        return np.hypot(self.fx, self.fy)

    def subset(self, index: np.ndarray) -> "FrequencySet":
        """The coefficients at ``index`` (positions in this set)."""
        return FrequencySet(iy=self.iy[index], ix=self.ix[index], fx=self.fx[index],
                            fy=self.fy[index], wf=self.wf[index], shell=self.shell[index],
                            box=self.box)

    def take(self, spectra: np.ndarray) -> np.ndarray:
        """(n, d, d//2+1) spectra -> (n, F) complex64."""
        return np.ascontiguousarray(spectra[:, self.iy, self.ix], dtype=np.complex64)

    def phases(self, shifts: np.ndarray) -> np.ndarray:
        """exp(−2πi f·t/d) for shifts (T, 2) px (x, y): (T, F) complex64."""
        angle = -2 * np.pi * (np.outer(shifts[:, 0], self.fx) + np.outer(shifts[:, 1], self.fy))
        return np.exp(1j * angle / self.box).astype(np.complex64)

    def shifted_back(self, x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """x (N, F) times conj(phases) of each row's shift (N, 2) px (x, y): the spectra
        moved back by their shifts, (N, F) complex64.  The phase is the product of one per
        frequency row and one per column (the frequencies are whole Fourier px), each taken
        from a table of the row's shift in float64: no (N, F) table of exponentials."""
        from class2d.em.phase_shift import shift_back

        out = np.empty(x.shape, np.complex64)
        shift_back(np.ascontiguousarray(x, np.complex64), np.asarray(shifts, np.float64),
                   np.rint(self.fx).astype(np.int64), np.rint(self.fy).astype(np.int64),
                   self.box, out)
        return out


@dataclasses.dataclass(frozen=True)
class PoseGrid:
    """In-plane rotations × a square grid of shifts; pose q = r·T + (iy·side + ix).

    psi: (R,) float32 radians;  side: shifts per axis;  step_px: shift step
    """

    psi: np.ndarray
    side: int
    step_px: float

    @classmethod
    def make(cls, psi_step_deg: float, side: int, step_px: float) -> "PoseGrid":
        n_rot = max(1, int(round(360.0 / psi_step_deg)))
        return cls(psi=np.deg2rad(np.arange(n_rot) * 360.0 / n_rot).astype(np.float32),
                   side=side, step_px=step_px)

    def coarser(self) -> "PoseGrid":
        """Every other rotation and a shift grid of twice the step over the same range: the
        grid suited to half the resolution."""
        return PoseGrid(psi=np.ascontiguousarray(self.psi[::2]), side=(self.side + 1) // 2,
                        step_px=2 * self.step_px)

    @property
    def psi_step(self) -> float:
        return 2 * np.pi / self.psi.size

    @property
    def shifts(self) -> np.ndarray:
        """(T, 2) float32 shifts (x, y) in px."""
        half = (self.side - 1) / 2
        iy, ix = np.divmod(np.arange(self.side * self.side), self.side)
        return (np.stack([ix - half, iy - half], axis=1) * self.step_px).astype(np.float32)

    @property
    def size(self) -> int:
        return self.psi.size * self.side * self.side

    def pose(self, q: np.ndarray, refine: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(ψ rad, tx px, ty px) of pose indices q, plus sub-step offsets (…, 3) if given."""
        n_shift = self.side * self.side
        r, t = np.divmod(q, n_shift)
        iy, ix = np.divmod(t, self.side)
        half = (self.side - 1) / 2
        psi = r.astype(np.float64)
        tx, ty = (ix - half).astype(np.float64), (iy - half).astype(np.float64)
        if refine is not None:
            psi = psi + refine[..., 0]
            tx, ty = tx + refine[..., 1], ty + refine[..., 2]
        return (np.mod(psi * self.psi_step, 2 * np.pi), tx * self.step_px, ty * self.step_px)
