"""RELION STAR: particle files (3.0, 3.1+, 5) to and from the particle table; the one STAR writer.

    >>> table = read_star("Class2D/job012/run_it025_data.star")
    >>> write_star(table, "results/classify/particles.star")   # RELION 3.1 layout
    >>> write_star_blocks({"classes": frame}, "results/classify/classes.star")

Reading accepts
  * RELION 3.1+ (``data_optics`` + ``data_particles``, blocks in either order, any number of
    optics groups; extra optics columns such as beam tilt and Zernike lists are kept as
    they are);
  * RELION 3.0 and older (one particle block with any name: ``data_``, ``data_images``,
    ``data_model_class_1``; optics values per particle): the optics groups are the distinct
    (voltage, Cs, amplitude contrast, pixel size, box) tuples, the pixel size is
    ``rlnImagePixelSize`` or ``rlnDetectorPixelSize`` [µm] · 10⁴ / ``rlnMagnification`` Å,
    origins in px (``rlnOriginX/Y``) become ``rlnOriginXAngst/YAngst``, as RELION 3.1 itself
    converts them.
The particle block is ``data_particles`` or else the first block with ``rlnImageName``.
The box size comes from ``rlnImageSize`` or else from the headers of the image stacks.
Image names ``N@path`` resolve against the STAR's directory, or the nearest ancestor
where the first image exists (RELION resolves them against its project directory).
Every column not named here is carried through untouched.

Writing gives ``# version 30001`` + ``data_optics`` + ``data_particles``.  Columns that
hold CryoSPARC-only fields (``"uid"``, ``"ctf/type"``…) are left out: RELION has no label
for them and the ``.cs`` written beside keeps them.  The exception is each particle's
contrast sign (``table.SIGN_COLUMN``, CryoSPARC's ``blob/sign``), written as
:data:`SIGN_LABEL` and read back into that column: the workflow passes its particles from
stage to stage as STAR files, and a ``.cs`` written from one of them must still say
whether the images it points to hold dark particles.

Every STAR file the package writes goes through :func:`format_star`, so all of them
share one text form, and the same tables always give the same bytes (no time stamp, as
``starfile.write`` puts in its banner): loop blocks only, tab-separated, a float in
the shortest text that reads back to the same value at its column's precision (float64
as Python's ``repr``, float32 as NumPy's shortest float32 form), so a table survives
write → read exactly; NaN as ``nan``; strings that are empty or hold a space in double
quotes.
"""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pandas as pd
import starfile

from class2d.errors import InputError
from class2d.io.atomic import atomic_path
from class2d.io.mrc import stack_box_sizes
from class2d.io.paths import find_base_dir, join_image_names, relocate_paths, split_image_names
from class2d.io.table import OPTICS_COLUMNS, SIGN_COLUMN, ParticleTable, as_numbers, build_optics

logger = logging.getLogger(__name__)

STAR_VERSION = "# version 30001"
#: first line of every STAR file written here
BANNER = "# written by class2d"
#: the STAR label of ``SIGN_COLUMN`` (RELION has none of its own)
SIGN_LABEL = "c2dContrastSign"
#: RELION 3.0 columns whose only content (the pixel size) moves into the optics group
_LEGACY_PIXEL = ("rlnMagnification", "rlnDetectorPixelSize")


def is_cs_column(name: str) -> bool:
    """True for columns holding CryoSPARC fields (``"blob/sign"``, ``"uid"``), not RELION labels."""
    return "/" in name or name == "uid"


def read_star_blocks(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """Every data block of a STAR file, by name (``starfile.read``); InputError naming the
    file when it is missing or not STAR."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        return starfile.read(path, always_dict=True)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the file ({err})") from err
    except Exception as err:  # starfile raises whatever pandas raises on malformed text
        raise InputError(path, f"not a readable STAR file ({type(err).__name__}: {err})") from err


def read_star(path: str | os.PathLike) -> ParticleTable:
    """Read a RELION particle STAR file (any version since 3.0) into a ``ParticleTable``."""
    path = os.fspath(path)
    blocks = read_star_blocks(path)
    particles = _particle_block(blocks, path).rename(columns={SIGN_LABEL: SIGN_COLUMN})
    optics = blocks.get("optics")
    if isinstance(optics, dict):        # a single optics group written as a simple block
        optics = pd.DataFrame([optics])
    if len(particles) == 0:
        raise InputError(path, "the particle block has no rows")
    _, image_paths = _image_names(particles, path)
    star_dir = os.path.dirname(os.path.abspath(path))
    base_dir = find_base_dir(star_dir, image_paths[0])
    if isinstance(optics, pd.DataFrame):
        particles, optics = _check_optics(particles, optics, path)
    else:
        particles, optics = _optics_from_particles(particles, path)
    _check_pixel_size(optics, path)
    if "rlnImageSize" not in optics.columns:
        sizes = stack_box_sizes(image_paths, base_dir, path)
        if sizes is not None:
            optics["rlnImageSize"] = int(sizes[0])
    particles = _origins_to_angstrom(particles, optics, path)
    logger.info("%s: %d particles, %d optics group(s)", path, len(particles), len(optics))
    return ParticleTable(particles.reset_index(drop=True), optics.reset_index(drop=True),
                         base_dir=base_dir, source=path)


def write_star(table: ParticleTable, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write a RELION 3.1 particle STAR (``data_optics`` + ``data_particles``).

    Relative image paths are rewritten to resolve from the new file's directory.
    """
    path = os.fspath(path)
    particles = table.particles.rename(columns={SIGN_COLUMN: SIGN_LABEL})
    particles = particles[[c for c in particles.columns if not is_cs_column(c)]].copy()
    numbers, image_paths = split_image_names(particles["rlnImageName"].to_numpy())
    out_dir = os.path.dirname(os.path.abspath(path))
    moved = relocate_paths(image_paths, table.base_dir, out_dir)
    if not np.array_equal(moved, image_paths):
        particles["rlnImageName"] = join_image_names(numbers, moved)
    optics = table.optics.copy()
    if "rlnOpticsGroupName" not in optics.columns:
        names = [f"opticsGroup{group}" for group in optics["rlnOpticsGroup"]]
        optics.insert(1, "rlnOpticsGroupName", names)
    if "rlnImageDimensionality" not in optics.columns:
        optics["rlnImageDimensionality"] = 2
    write_star_blocks({"optics": optics, "particles": particles}, path, relion_version=True,
                      overwrite=overwrite)
    logger.info("wrote %d particles to %s", len(particles), path)


def format_star(blocks: dict[str, pd.DataFrame], relion_version: bool = False) -> str:
    """STAR text of loop blocks ``data_{name}``, in the form the module docstring states.

    blocks: {block name: table}, written in order; relion_version: put ``# version 30001``
    before each block (RELION 3.1+ reads particle files without it as 3.0).
    """
    lines = [BANNER, ""]
    for name, frame in blocks.items():
        if relion_version:
            lines += [STAR_VERSION, ""]
        lines += [f"data_{name}", "", "loop_"]
        lines += [f"_{column} #{k}" for k, column in enumerate(frame.columns, 1)]
        text = frame.assign(**{column: frame[column].map(_quote) for column in frame.columns
                               if not pd.api.types.is_numeric_dtype(frame[column])})
        lines += text.to_csv(sep="\t", header=False, index=False, na_rep="nan",
                             quoting=csv.QUOTE_NONE, lineterminator="\n").splitlines()
        lines += ["", ""]
    return "\n".join(lines) + "\n"


def write_star_blocks(blocks: dict[str, pd.DataFrame], path: str | os.PathLike,
                      relion_version: bool = False, overwrite: bool = True) -> None:
    """Write :func:`format_star` text to ``path``, atomically (``overwrite=False``: refuse
    to replace a file)."""
    text = format_star(blocks, relion_version)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w") as handle:
            handle.write(text)


def _quote(value):
    """A string value as a STAR token: in double quotes when empty or holding a space."""
    if isinstance(value, str) and (not value or " " in value):
        return f'"{value}"'
    return value


def _particle_block(blocks: dict, path: str) -> pd.DataFrame:
    """``data_particles``, or else the first block with an ``rlnImageName`` column."""
    candidates = [("particles", blocks["particles"])] if "particles" in blocks else []
    candidates += [(name, block) for name, block in blocks.items()
                   if name not in ("particles", "optics")]
    for name, block in candidates:
        if isinstance(block, dict) and "rlnImageName" in block:
            return pd.DataFrame([block])
        if isinstance(block, pd.DataFrame) and "rlnImageName" in block.columns:
            return block.copy()
    names = ", ".join(f"data_{name}" for name in blocks) or "none"
    raise InputError(path, f"no particle block (no data block with rlnImageName; blocks: {names})")


def _image_names(particles: pd.DataFrame, path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return split_image_names(particles["rlnImageName"].to_numpy())
    except ValueError as err:
        raise InputError(path, f"rlnImageName is not of the form N@path ({err})") from err


def _check_optics(particles: pd.DataFrame, optics: pd.DataFrame,
                  path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.1+: check that every particle's optics group is defined."""
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(path, "data_optics has no rlnOpticsGroup column")
    optics = optics.copy()
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) != 1:
            raise InputError(path, "particles have no rlnOpticsGroup and there are several "
                                   "optics groups")
        particles["rlnOpticsGroup"] = optics["rlnOpticsGroup"].iloc[0]
    unknown = np.setdiff1d(particles["rlnOpticsGroup"].unique(), optics["rlnOpticsGroup"].unique())
    if len(unknown):
        raise InputError(path, f"particles refer to optics group {unknown[0]}, not in data_optics")
    if "rlnImagePixelSize" not in optics.columns:
        raise InputError(path, "no pixel size: data_optics has no rlnImagePixelSize")
    return particles, optics


def _optics_from_particles(particles: pd.DataFrame, path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RELION 3.0: make optics groups from the per-particle optics values."""
    if "rlnImagePixelSize" in particles.columns:
        apix = as_numbers(particles["rlnImagePixelSize"], path)
    elif all(name in particles.columns for name in _LEGACY_PIXEL):
        apix = (as_numbers(particles["rlnDetectorPixelSize"], path) * 1e4
                / as_numbers(particles["rlnMagnification"], path))
    else:
        raise InputError(path, "no pixel size: no data_optics block, and neither rlnImagePixelSize "
                               "nor rlnMagnification + rlnDetectorPixelSize per particle")
    per_particle = particles[[c for c in OPTICS_COLUMNS if c in particles.columns]].copy()
    per_particle["rlnImagePixelSize"] = apix
    optics, groups = build_optics(per_particle)
    particles = particles.drop(columns=[c for c in OPTICS_COLUMNS + _LEGACY_PIXEL
                                        if c in particles.columns])
    particles["rlnOpticsGroup"] = groups
    return particles, optics


def _check_pixel_size(optics: pd.DataFrame, path: str) -> None:
    groups = optics["rlnOpticsGroup"].to_numpy()
    apix = as_numbers(optics["rlnImagePixelSize"], path, row="optics group", labels=groups)
    bad = ~(np.isfinite(apix) & (apix > 0))
    if bad.any():
        group = groups[bad][0]
        raise InputError(path, f"pixel size {apix[bad][0]} Å in optics group {group} "
                               f"(must be > 0)")


def _origins_to_angstrom(particles: pd.DataFrame, optics: pd.DataFrame,
                         path: str) -> pd.DataFrame:
    """rlnOriginX/Y [px] → rlnOriginXAngst/YAngst [Å] (pixel size of each particle's group)."""
    if not any(f"rlnOrigin{axis}" in particles.columns for axis in "XY"):
        return particles
    apix = ParticleTable(particles, optics, source=path).pixel_size()
    for axis in "XY":
        old, new = f"rlnOrigin{axis}", f"rlnOrigin{axis}Angst"
        if old in particles.columns:
            if new not in particles.columns:
                particles[new] = as_numbers(particles[old], path) * apix
            particles = particles.drop(columns=[old])
    return particles

