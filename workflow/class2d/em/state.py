"""Model state between iterations, and the sufficient statistics that build it.

    >>> state = ClassState.load("results/classify/iter_003/state.npz")
    >>> state.references.shape        # (K, d, d) float32 class averages
    >>> state.save("results/classify/iter_004/state.npz")   # atomic

A state file is the whole memory of the run: iteration n+1 reads iteration n's file
and nothing else, so a killed run resumes from the last complete file.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from class2d.io.npz import write_npz
from class2d.timing import timer


@dataclasses.dataclass
class Statistics:
    """Sums over particles that the M-step turns into classes and a noise model.

    num: (K, 2, G, G) complex128, Σ w·α·CTF·X/σ² inserted in the reference frame, kept
        apart for the two half sets (even and odd particle rows) that give each class's
        resolution and from which an emptied class is re-seeded
    den: (K, 2, G, G) float64, Σ w·α²·CTF²/σ²
    counts: (K,) float64, Σ w (particles per class)
    noise_sum: (S,) float64, Σ w·|X − model|² per shell;  noise_count: (S,) coefficients
    """

    num: np.ndarray
    den: np.ndarray
    counts: np.ndarray
    noise_sum: np.ndarray
    noise_count: np.ndarray

    @classmethod
    def zeros(cls, n_classes: int, grid: int, n_shells: int) -> "Statistics":
        return cls(num=np.zeros((n_classes, 2, grid, grid), np.complex128),
                   den=np.zeros((n_classes, 2, grid, grid)), counts=np.zeros(n_classes),
                   noise_sum=np.zeros(n_shells), noise_count=np.zeros(n_shells))

    def blend(self, new: "Statistics", step: float) -> "Statistics":
        """(1 − step)·self + step·new, field by field."""
        return Statistics(*(a * (1 - step) + b * step
                            for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(new))))

    def __add__(self, other: "Statistics") -> "Statistics":
        return Statistics(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                   dataclasses.astuple(other))))

    def to_file(self, prefix: str = "stats_") -> dict[str, np.ndarray]:
        """The fields as a file stores them, keys ``prefix + name``: ``num`` complex64 and
        ``den`` float32 (half the bytes; they hold sums whose own noise is far above
        float32's 6·10⁻⁸), the small per-class and per-shell sums float64."""
        single = {"num": np.complex64, "den": np.float32}
        return {prefix + f.name: np.asarray(getattr(self, f.name), single.get(f.name))
                for f in dataclasses.fields(self)}

    def as_stored(self) -> "Statistics":
        """These statistics as a state file keeps them (``to_file``, then ``from_file``).
        Every new state holds them so, whether or not it passes through a file before the
        next iteration: grouping iterations into jobs does not change the results."""
        return Statistics.from_file(self.to_file())

    @classmethod
    def from_file(cls, data, prefix: str = "stats_") -> "Statistics":
        """Read back what :meth:`to_file` wrote (``data``: a mapping such as ``np.load``'s),
        widened to the working precision (complex128, float64)."""
        return cls(**{f.name: np.asarray(data[prefix + f.name],
                                         np.complex128 if f.name == "num" else np.float64)
                      for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class ClassState:
    """Everything iteration n hands to iteration n+1.

    iteration: 0 for the initial classes, then 1, 2, …
    references: (K, d, d) float32, class averages (masked, real space) used to align
    stats: the blended sufficient statistics they were built from
    sigma2: (S,) float64, noise power per shell of the d-box
    tau2: (K, S) float64, signal power per class and shell (Wiener regularisation)
    alpha: (N,) float32, per-particle scale
    classes: (N,) int32, each particle's class when last seen (−1: not yet)
    shifts: (N, 2) float32, each particle's shift (x, y) px when last seen
    apix: Å/px of the alignment box;  pad: zero-padding factor
    history: one dict per iteration (resolution, log-likelihood, class sizes, …)
    """

    iteration: int
    references: np.ndarray
    stats: Statistics
    sigma2: np.ndarray
    tau2: np.ndarray
    alpha: np.ndarray
    classes: np.ndarray
    shifts: np.ndarray
    apix: float
    pad: int
    history: list[dict]

    @property
    def n_classes(self) -> int:
        return self.references.shape[0]

    @property
    def box(self) -> int:
        return self.references.shape[-1]

    @timer("checkpoints")
    def save(self, path: str | os.PathLike) -> None:
        write_npz(path, dict(iteration=self.iteration, references=self.references,
                             sigma2=self.sigma2, tau2=self.tau2, alpha=self.alpha,
                             classes=self.classes, shifts=self.shifts, apix=self.apix,
                             pad=self.pad, history=json.dumps(self.history),
                             **self.stats.to_file()))

    @classmethod
    @timer("checkpoints")
    def load(cls, path: str | os.PathLike) -> "ClassState":
        with np.load(path) as data:
            stats = Statistics.from_file(data)
            return cls(iteration=int(data["iteration"]), references=data["references"],
                       stats=stats, sigma2=data["sigma2"], tau2=data["tau2"],
                       alpha=data["alpha"], classes=data["classes"],
                       shifts=data["shifts"], apix=float(data["apix"]), pad=int(data["pad"]),
                       history=json.loads(str(data["history"])))
