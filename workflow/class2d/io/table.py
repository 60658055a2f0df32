"""The single in-memory particle table that RELION STAR and CryoSPARC ``.cs`` both map to.

    >>> from class2d.io import read_particles
    >>> table = read_particles("run_data.star")      # or "particles.cs"
    >>> table.pixel_size()                            # (n,) Å/px, from the metadata
    >>> table.ctf_params().defocus_u                  # (n,) Å

Layout
------
``particles`` is a pandas DataFrame, one row per particle, with RELION 3.1 column names
and RELION units for every quantity the project understands (Å, degrees, kV, mm,
``rlnImageName`` as ``N@path``, ``rlnOriginXAngst/YAngst``, 1-based ``rlnClassNumber``).
Columns the project does not understand are carried through untouched: RELION columns
under their own names, CryoSPARC fields under their ``.cs`` names (``"uid"``; a
field of shape (k,) as columns ``"ctf/tilt_A[0]"`` … ``"[k-1]"``) so that a ``.cs``
written back holds them again.  STAR files leave the ``.cs``-named columns out, all but
:data:`SIGN_COLUMN` (see :meth:`ParticleTable.image_signs`).

``optics`` is a DataFrame with one row per optics group (RELION's ``data_optics``), keyed
by ``rlnOpticsGroup``; every particle row has ``rlnOpticsGroup``.  RELION 3.0 inputs get
groups made from their distinct per-particle optics values.

Columns are read as numbers where they are used, through :func:`as_numbers` (or
``ParticleTable.numbers``), one rule whatever pandas stores text in: starfile leaves a
numeric column that holds one token such as ``15x00`` as text (NumPy ``object`` by
default, pandas' ``str`` backed by pyarrow under pandas 3 or ``future.infer_string``),
and that token then ends as one ``InputError`` naming the file, the column, the row and
the token.  ``ParticleTable.unusable_numbers`` finds, by the same parse, every row of the
per-particle number columns (:data:`PARTICLE_NUMBERS`) that holds no finite number, so
that preparation can leave those particles out (``class2d.faults``) instead.

``cs_dtype`` is the structured dtype of the CryoSPARC ``.cs`` a table was read from (or
``None``): ``write_cs`` uses it to give the fields it writes back their original order,
dtypes and string widths.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from class2d.ctf import CTFParams
from class2d.errors import InputError
from class2d.io.paths import resolve_paths, split_image_names

logger = logging.getLogger(__name__)

#: each particle's contrast sign, under its CryoSPARC name (see ``ParticleTable.image_signs``)
SIGN_COLUMN = "blob/sign"
#: optics-level columns: stored in ``optics``, looked up per particle through the group
OPTICS_COLUMNS = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
)
#: per-particle columns read as numbers, each value a finite number where the column is there
#: (``ParticleTable.unusable_numbers`` finds the rows that break this)
PARTICLE_NUMBERS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    SIGN_COLUMN,
    "rlnCoordinateX",
    "rlnCoordinateY",
)


@dataclasses.dataclass
class ParticleTable:
    """Particles and their optics groups.

    particles: one row per particle (see module docstring)
    optics: one row per optics group, keyed by ``rlnOpticsGroup``
    base_dir: directory that relative image paths in ``rlnImageName`` are resolved against
    source: the file this table was read from (for messages), or ``None``
    cs_dtype: structured dtype of the ``.cs`` file this table was read from, or ``None``
    """

    particles: pd.DataFrame
    optics: pd.DataFrame
    base_dir: str = "."
    source: str | None = None
    cs_dtype: np.dtype | None = None

    @property
    def n(self) -> int:
        return len(self.particles)

    def numbers(self, name: str, dtype: type = np.float64) -> np.ndarray:
        """(n,) ``dtype``: the particle column ``name`` as numbers (:func:`as_numbers`)."""
        return as_numbers(self.particles[name], self.source, dtype)

    def unusable_numbers(self) -> dict[str, np.ndarray]:
        """{column: (n,) bool} for each of :data:`PARTICLE_NUMBERS` the table has: the rows
        whose value is not a finite number (empty, NaN, ±Inf or text such as ``15x00``)."""
        return {name: ~np.isfinite(_parse(self.particles[name])[0].to_numpy(np.float64,
                                                                            na_value=np.nan))
                for name in PARTICLE_NUMBERS if name in self.particles.columns}

    def optics_column(self, name: str, dtype: type = np.float64) -> np.ndarray:
        """Per-particle value of an optics-group column: (n,) ``dtype``.

        ``InputError`` if the optics groups lack it (e.g. ``rlnImageSize`` when the metadata
        has no box size and the image stacks were not found to read it from) or hold a
        value that is not a number.
        """
        if name not in self.optics.columns:
            raise InputError(self.source, f"no {name} in the optics groups")
        groups = self.optics["rlnOpticsGroup"].to_numpy()
        values = as_numbers(self.optics[name], self.source, dtype, "optics group", groups)
        lookup = pd.Series(values, index=groups)
        return lookup.loc[self.particles["rlnOpticsGroup"].to_numpy()].to_numpy()

    def pixel_size(self) -> np.ndarray:
        """(n,) float64, Å/px of the particle images."""
        return self.optics_column("rlnImagePixelSize")

    def box_size(self) -> np.ndarray:
        """(n,) int64, the particle box in px."""
        return self.optics_column("rlnImageSize", np.int64)

    def ctf_params(self) -> CTFParams:
        """Per-particle CTF parameters in RELION units."""

        def col(name: str, default: float) -> np.ndarray:
            if name in self.particles.columns:
                return self.numbers(name)
            return np.full(self.n, default, np.float64)

        return CTFParams(
            defocus_u=self.numbers("rlnDefocusU"),
            defocus_v=self.numbers("rlnDefocusV"),
            defocus_angle=col("rlnDefocusAngle", 0.0),
            voltage=self.optics_column("rlnVoltage"),
            cs=self.optics_column("rlnSphericalAberration"),
            amplitude_contrast=self.optics_column("rlnAmplitudeContrast"),
            phase_shift=col("rlnPhaseShift", 0.0),
            bfactor=col("rlnCtfBfactor", 0.0),
            scale=col("rlnCtfScalefactor", 1.0),
        )

    def image_signs(self) -> np.ndarray:
        """(n,) float64: the contrast of each particle in the image its ``rlnImageName``
        points to, as CryoSPARC's ``blob/sign`` says it (image × sign shows the particle
        white): −1 dark, as CryoSPARC extracts (every ``.cs`` in the shared test data,
        2019 + 22 + 7 particles, holds −1), +1 white.

        The :data:`SIGN_COLUMN` as it is where the table has one (read from a ``.cs``, or
        from a STAR class2d wrote: ``class2d.io.star`` carries it); +1 for every particle
        of a table without it, a RELION STAR's: RELION's Extract job inverts the contrast
        unless told not to ("Invert contrast?" defaults to Yes, ``do_invert`` in RELION's
        ``src/pipeline_jobs.cpp``), so its particles are white.
        """
        if SIGN_COLUMN in self.particles.columns:
            return self.numbers(SIGN_COLUMN)
        return np.ones(self.n)

    def image_locations(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each image is: (paths (n,) str absolute, indices (n,) int 0-based).

        ``rlnImageName`` ``"12@stack.mrcs"`` is image 12 (1-based, as RELION counts) of
        ``stack.mrcs`` relative to ``base_dir``; a name without ``@`` is a single image.
        """
        numbers, paths = split_image_names(self.particles["rlnImageName"].to_numpy())
        return resolve_paths(paths, self.base_dir), np.maximum(numbers - 1, 0)

    def subset(self, rows: np.ndarray) -> "ParticleTable":
        """A table of the given rows (boolean mask or integer indices), same optics."""
        part = self.particles.iloc[np.flatnonzero(rows) if np.asarray(rows).dtype == bool
                                   else np.asarray(rows)].reset_index(drop=True)
        return dataclasses.replace(self, particles=part)

    def with_columns(self, **columns: np.ndarray) -> "ParticleTable":
        """A copy with columns added or replaced (each (n,))."""
        part = self.particles.copy()
        for name, values in columns.items():
            part[name] = values
        return dataclasses.replace(self, particles=part)


def require_ctf(table: ParticleTable) -> None:
    """Raise ``InputError`` naming the table's file unless every CTF quantity is present.

    Needed per particle: ``rlnDefocusU``, ``rlnDefocusV`` (finite, ≥ 0); per optics group:
    ``rlnVoltage``, ``rlnSphericalAberration``, ``rlnAmplitudeContrast``; every CTF value
    present a number.
    """
    missing = [name for name in ("rlnDefocusU", "rlnDefocusV")
               if name not in table.particles.columns]
    missing += [name for name in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
                if name not in table.optics.columns]
    if missing:
        raise InputError(table.source, f"no CTF parameters ({', '.join(missing)} missing)")
    ctf = table.ctf_params()          # every CTF value a number, or InputError
    defocus = np.column_stack([ctf.defocus_u, ctf.defocus_v])
    bad = ~np.isfinite(defocus)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputError(table.source, f"particle {row + 1} has no defocus value")
    if (defocus < 0).any():
        row = int(np.flatnonzero((defocus < 0).any(axis=1))[0])
        raise InputError(table.source, f"particle {row + 1} has a negative defocus "
                         f"({defocus[row].min():g} Å; RELION's underfocus is positive)")


def as_numbers(column: pd.Series, source: str | None, dtype: type = np.float64,
               row: str = "particle", labels: np.ndarray | None = None) -> np.ndarray:
    """(n,) ``dtype``: a table column as numbers, whatever pandas stores it as (NumPy numbers
    or ``object``, pandas' ``str`` on pyarrow or Python storage).

    An empty value stays NaN for a float ``dtype`` and is an ``InputError`` for an integer
    one; a value that is text but not a number is an ``InputError``:
    ``<source>: rlnDefocusU of particle 2 is '15x00', not a number``.
    row, labels: what a row is and its name in that message (default: particle 1, 2, …).
    """
    parsed, text = _parse(column)
    empty = parsed.isna().to_numpy()
    bad = empty if np.dtype(dtype).kind in "iu" else text
    if bad.any():
        k = int(np.argmax(bad))
        label = k + 1 if labels is None else labels[k]
        what = f"{column.iloc[k]!r}, not a number" if text[k] else "empty"
        raise InputError(source, f"{column.name} of {row} {label} is {what}")
    if np.dtype(dtype).kind == "f":
        return parsed.to_numpy(dtype, na_value=np.nan)
    return parsed.to_numpy(dtype)


def _parse(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(the column as numbers, missing where empty or not a number; (n,) bool: the values
    that are text but not a number): the one parse behind :func:`as_numbers` and
    ``ParticleTable.unusable_numbers``."""
    parsed = pd.to_numeric(column, errors="coerce")
    return parsed, parsed.isna().to_numpy() & column.notna().to_numpy()


def build_optics(per_particle: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Optics groups from per-particle optics values (RELION 3.0 and CryoSPARC inputs).

    per_particle: (n, c) optics-level columns, one row per particle
    returns: optics (one row per distinct row of ``per_particle``, numbered in order of first
    appearance, with ``rlnOpticsGroup`` and ``rlnOpticsGroupName``), groups (n,) int64 1-based
    """
    columns = list(per_particle.columns)
    if columns and len(per_particle):
        groups = per_particle.groupby(columns, sort=False, dropna=False).ngroup().to_numpy() + 1
    else:
        groups = np.ones(len(per_particle), np.int64)
    numbers, first = np.unique(groups, return_index=True)
    optics = (per_particle.iloc[first].reset_index(drop=True) if columns
              else pd.DataFrame(index=range(len(first))))
    optics.insert(0, "rlnOpticsGroupName", [f"opticsGroup{g}" for g in numbers])
    optics.insert(0, "rlnOpticsGroup", numbers.astype(np.int64))
    return optics, groups.astype(np.int64)
