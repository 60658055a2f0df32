"""Faults of single particles: which rows preparation leaves out, and why.

    >>> numbers = number_faults(table)                     # missing or garbled numbers
    >>> faults = numbers.within(rows) + past_stack_faults(table, numbers.good(rows))
    >>> faults = faults + image_faults(images, rows)       # constant or non-finite images
    >>> write_faults(layout.shard_rejects(prepare_dir, 0), faults)        # one per shard
    >>> faults = read_faults(path_0) + read_faults(path_1)  # gathered
    >>> rejected = rejected_table(table, faults)            # their rows, with a reason each

With ``prepare.bad_particles: skip`` (the default) a particle whose image is constant (an
all-zero box: no particle) or holds NaN/±Inf, whose per-particle number
(:data:`~class2d.io.table.PARTICLE_NUMBERS`: defocus, CTF, sign, pick coordinates) is
missing or not a number, or whose image index lies past the end of its stack is left out;
``prepare/rejected.star`` and ``rejected.cs`` list each with its row's columns and a reason
(:data:`REASON_COLUMN`; ``.cs``: :data:`REASON_FIELD`), and one warning counts them by
reason.  A value that was not a number is written NaN there (a ``.cs`` float cannot hold
text).  Faults of the whole input stay one-line ``InputError``: an unreadable file, a
missing column, no usable particle, or more than ``prepare.max_bad_fraction`` of the
particles bad (:func:`check_share`).  ``bad_particles: error`` stops at the first bad
particle, naming the file and the row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from class2d.errors import ConfigError, InputError
from class2d.io.mrc import images_past_end
from class2d.io.npz import write_npz

if TYPE_CHECKING:      # (pandas, which io.table needs, stays out of classification jobs)
    from class2d.io.table import ParticleTable

logger = logging.getLogger(__name__)

#: the STAR label of the reason a particle was left out (RELION keeps unknown labels)
REASON_COLUMN = "c2dRejectReason"
#: the same reason in a ``.cs``: a string field
REASON_FIELD = "class2d/reject_reason"
#: reasons (a bad number's is ``bad_number:<column>``)
CONSTANT, NON_FINITE, PAST_STACK = "constant_image", "non_finite_pixels", "index_past_stack"
#: what ``prepare.bad_particles`` may say
MODES = ("skip", "error")


def bad_number(column: str) -> str:
    """The reason of a particle whose ``column`` holds no finite number."""
    return f"bad_number:{column}"


@dataclasses.dataclass(frozen=True)
class Faults:
    """Bad particles: rows (m,) int64 of the input table, sorted, each once; reasons (m,) str."""

    rows: np.ndarray
    reasons: np.ndarray

    @classmethod
    def of(cls, rows, reasons) -> "Faults":
        """Faults from rows and their reasons in any order; a row listed twice keeps its
        first reason."""
        rows = np.asarray(rows, np.int64).ravel()
        reasons = np.broadcast_to(np.asarray(reasons, str), rows.shape)
        rows, first = np.unique(rows, return_index=True)
        return cls(rows, reasons[first].astype(str))

    @classmethod
    def none(cls) -> "Faults":
        return cls.of([], "")

    def __add__(self, other: "Faults") -> "Faults":
        """Both sets; a row in both keeps ``self``'s reason."""
        return Faults.of(np.r_[self.rows, other.rows], np.r_[self.reasons, other.reasons])

    def __len__(self) -> int:
        return self.rows.size

    def within(self, rows: np.ndarray) -> "Faults":
        """The faults of ``rows`` only."""
        inside = np.isin(self.rows, rows)
        return Faults(self.rows[inside], self.reasons[inside])

    def good(self, rows: np.ndarray) -> np.ndarray:
        """The ``rows`` that are not faulty, in their order."""
        return rows[~np.isin(rows, self.rows)]

    def counts(self) -> dict[str, int]:
        """{reason: particles}, reasons sorted."""
        reasons, counts = np.unique(self.reasons, return_counts=True)
        return {str(r): int(c) for r, c in zip(reasons, counts)}

    def summary(self) -> str:
        """``2 constant_image, 1 index_past_stack``."""
        return ", ".join(f"{count} {reason}" for reason, count in self.counts().items())


def check_mode(bad_particles: str) -> str:
    if bad_particles not in MODES:
        raise ConfigError("prepare.bad_particles", f"must be one of {', '.join(MODES)}, "
                                                   f"got {bad_particles!r}")
    return bad_particles


def number_faults(table: ParticleTable) -> Faults:
    """Every row whose :data:`~class2d.io.table.PARTICLE_NUMBERS` value is missing or not a
    finite number (the first such column names the reason)."""
    found = [Faults.of(np.flatnonzero(mask), bad_number(name))
             for name, mask in table.unusable_numbers().items()]
    return sum(found, Faults.none())


def past_stack_faults(table: ParticleTable, rows: np.ndarray) -> Faults:
    """The ``rows`` whose image index lies past the end of their stack (headers read only;
    ``InputError`` for a stack that cannot be read)."""
    return Faults.of(rows[images_past_end(table, rows)], PAST_STACK)


def image_faults(images: np.ndarray, rows: np.ndarray) -> Faults:
    """Faults of images (m, D, D) of ``rows`` (m,): NaN or ±Inf pixels, then constant."""
    flat = images.reshape(len(rows), -1)
    non_finite = ~np.isfinite(flat).all(axis=1)
    constant = ~non_finite & (flat.min(axis=1) == flat.max(axis=1))
    return Faults.of(rows[non_finite], NON_FINITE) + Faults.of(rows[constant], CONSTANT)


def check_share(faults: Faults, n: int, max_bad_fraction: float, source: str,
                partial: bool = False) -> None:
    """``InputError`` naming ``source`` when no particle is left or more than
    ``max_bad_fraction`` of the ``n`` are bad.  partial: ``faults`` are those found so far
    (one shard's): the message says "at least"."""
    if len(faults) >= n:
        raise InputError(source, f"no usable particle: all {n} are bad ({faults.summary()})")
    if len(faults) > max_bad_fraction * n:
        raise InputError(source, f"{'at least ' if partial else ''}{len(faults)} of {n} "
                                 f"particles are bad "
                                 f"({faults.summary()}): more than prepare.max_bad_fraction "
                                 f"{max_bad_fraction:g} of them")


def write_faults(path: str | os.PathLike, faults: Faults) -> None:
    """One shard's faults as ``.npz`` (``rows``, ``reasons``), written atomically."""
    write_npz(path, {"rows": faults.rows, "reasons": faults.reasons.astype(str)})


def read_faults(path: str | os.PathLike) -> Faults:
    """What :func:`write_faults` wrote; ``InputError`` when the file is missing."""
    if not os.path.isfile(path):
        raise InputError(path, "file not found: prepare its shard again")
    with np.load(path) as data:
        return Faults.of(data["rows"], data["reasons"])


def rejected_table(table: ParticleTable, faults: Faults) -> ParticleTable:
    """The faulty rows of ``table`` with their reason (:data:`REASON_COLUMN` and
    :data:`REASON_FIELD`); a per-particle number that is not one becomes NaN."""
    import pandas

    part = table.subset(faults.rows)
    for name, bad in part.unusable_numbers().items():
        if bad.any():
            part.particles[name] = pandas.to_numeric(part.particles[name], errors="coerce")
    return part.with_columns(**{REASON_COLUMN: faults.reasons, REASON_FIELD: faults.reasons})
