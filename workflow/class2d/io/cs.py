"""CryoSPARC ``.cs`` particle files (NumPy structured arrays) to and from the particle table.

    >>> table = read_cs("J24/J24_001_particles.cs")
    >>> write_cs(table, "results/classify/particles.cs")
    >>> write_cs_fields({"uid": uids, "blob/path": paths}, n, "classes.cs")     # any .cs

``write_cs_fields`` is the one writer of ``.cs`` files (particles, class averages,
templates, empty sets): fields packed with CryoSPARC's dtypes, through a temporary file.

Field mapping (``.cs`` → table; ``write_cs`` does the inverse)

=============================================  ==============================================
``blob/idx`` (0-based), ``blob/path``          ``rlnImageName = f"{idx + 1}@{path}"``
``blob/psize_A``, ``blob/shape[0]``            optics ``rlnImagePixelSize`` [Å], ``rlnImageSize``
``ctf/accel_kv``, ``cs_mm``, ``amp_contrast``  optics ``rlnVoltage``, ``rlnSphericalAberration``,
                                               ``rlnAmplitudeContrast``
``ctf/df1_A``, ``df2_A``                       ``rlnDefocusU``, ``rlnDefocusV`` [Å]
``ctf/df_angle_rad``, ``phase_shift_rad``      ``rlnDefocusAngle``, ``rlnPhaseShift`` [degrees]
``ctf/bfactor``, ``ctf/scale``                 ``rlnCtfBfactor``, ``rlnCtfScalefactor``
``alignments2D/class`` (0-based)               ``rlnClassNumber = class + 1``
``alignments2D/pose`` [rad]                    ``rlnAnglePsi = degrees(pose)``
``alignments2D/shift`` (2,) [px]               ``rlnOriginXAngst = shift[:, 0] * psize``,
                                               ``rlnOriginYAngst = shift[:, 1] * psize``
``location/center_x_frac``, ``_y_frac``        ``rlnCoordinateX = x_frac * shape[1]``,
``location/micrograph_shape`` (ny, nx)         ``rlnCoordinateY = y_frac * shape[0]`` [px]
``location/micrograph_path``                   ``rlnMicrographName``
``blob/sign``                                  the column of that name (``SIGN_COLUMN``);
                                               written +1 for a table without it (a RELION
                                               STAR's: ``ParticleTable.image_signs``)
=============================================  ==============================================

Order and signs of the 2D alignment follow pyem's ``csparc2star`` (the converter most
CryoSPARC users take to RELION; ``pyem/metadata/cryosparc2.py``): it assigns the (n, 2)
``alignments2D/shift`` to ``["rlnOriginX", "rlnOriginY"]`` (column 0 is x) unchanged in
sign, after rescaling it by ``alignments2D/psize_A / blob/psize_A`` to image pixels, and sets
``rlnAnglePsi = +degrees(pose)``; in Å that is ``shift * alignments2D/psize_A``.  (Other
converters differ: helicon negates shift and psi.  The real 2D export in the test data
cannot settle it: it has no images; see ``tests/test_io_cs.py``.)  ``micrograph_shape`` is
(ny, nx) as in pyem; pyem's default also flips y (``1 - y_frac``) for micrographs that
CryoSPARC motion-corrected, which is not done here: the fraction is of the micrograph as
stored, so that coordinates survive .cs → STAR → .cs unchanged.

Every other field is kept under its ``.cs`` name: one column per field, or for a field of
shape (k,) the columns ``"name[0]"`` … ``"name[k-1]"``; byte strings become ``str``.
``write_cs`` puts them back with the dtype the table's ``cs_dtype`` remembers.  A leading
``>`` in ``blob/path`` (CryoSPARC's mark for "next to the .cs file", set by exports) is
dropped; a path resolves against the ``.cs`` file's directory, its parent (the project
directory of a job's ``.cs``) or, by basename, the ``.cs`` file's directory.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pandas as pd

from class2d.errors import InputError
from class2d.io.atomic import atomic_path
from class2d.io.mrc import read_header, stack_box_sizes
from class2d.io.paths import factorize, join_image_names, relocate_paths, split_image_names
from class2d.io.star import is_cs_column
from class2d.io.table import SIGN_COLUMN, ParticleTable, build_optics

logger = logging.getLogger(__name__)

#: fields whose content the table holds in RELION columns (not kept under their own names)
MAPPED_FIELDS = frozenset({
    "blob/path", "blob/idx", "blob/shape", "blob/psize_A",
    "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A", "ctf/df2_A",
    "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/bfactor", "ctf/scale",
    "alignments2D/class", "alignments2D/pose", "alignments2D/shift",
    "location/micrograph_path", "location/center_x_frac", "location/center_y_frac",
})
#: CryoSPARC's dtypes for the fields ``write_cs`` makes from RELION columns
FIELD_DTYPES = {
    "uid": np.dtype("<u8"), "blob/idx": np.dtype("<u4"), "blob/shape": np.dtype(("<u4", (2,))),
    "location/micrograph_shape": np.dtype(("<u4", (2,))), "alignments2D/class": np.dtype("<u4"),
    "alignments2D/shift": np.dtype(("<f4", (2,))),
    **{name: np.dtype("<f4") for name in (
        "blob/psize_A", SIGN_COLUMN, "ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast", "ctf/df1_A",
        "ctf/df2_A", "ctf/df_angle_rad", "ctf/phase_shift_rad", "ctf/bfactor", "ctf/scale",
        "location/center_x_frac", "location/center_y_frac", "alignments2D/pose",
        "alignments2D/psize_A", "alignments2D/res_A", "alignments2D/class_ess",
        "alignments2D/class_posterior")},
    "alignments2D/num_particles": np.dtype("<u4"),
}
_SPLIT = re.compile(r"^(?P<name>.+)\[(?P<index>\d+(?:,\d+)*)\]$")
_LOCATION_FIELDS = {"location/center_x_frac", "location/center_y_frac", "location/micrograph_shape"}
#: per-particle CTF fields: (field, RELION column, conversion to RELION units)
_CTF_FIELDS = (("ctf/df1_A", "rlnDefocusU", None), ("ctf/df2_A", "rlnDefocusV", None),
               ("ctf/df_angle_rad", "rlnDefocusAngle", np.degrees),
               ("ctf/phase_shift_rad", "rlnPhaseShift", np.degrees),
               ("ctf/bfactor", "rlnCtfBfactor", None), ("ctf/scale", "rlnCtfScalefactor", None))
_OPTICS_FIELDS = {"ctf/accel_kv": "rlnVoltage", "ctf/cs_mm": "rlnSphericalAberration",
                  "ctf/amp_contrast": "rlnAmplitudeContrast"}


def read_cs(path: str | os.PathLike) -> ParticleTable:
    """Read a CryoSPARC particle ``.cs`` file into a ``ParticleTable``."""
    path = os.fspath(path)
    data = _load(path)
    names = data.dtype.names
    n = len(data)
    cs_dir = os.path.dirname(os.path.abspath(path))
    image_paths = _resolve_blob_paths(_decode(data["blob/path"]), cs_dir)
    columns: dict[str, np.ndarray] = {
        "rlnImageName": join_image_names(data["blob/idx"].astype(np.int64) + 1, image_paths)}
    if "location/micrograph_path" in names:
        columns["rlnMicrographName"] = _decode(data["location/micrograph_path"])
    if _LOCATION_FIELDS <= set(names):
        shape = data["location/micrograph_shape"].astype(np.float64)
        columns["rlnCoordinateX"] = data["location/center_x_frac"].astype(np.float64) * shape[:, 1]
        columns["rlnCoordinateY"] = data["location/center_y_frac"].astype(np.float64) * shape[:, 0]
    for field, column, convert in _CTF_FIELDS:
        if field in names:
            values = data[field].astype(np.float64)
            columns[column] = convert(values) if convert else values
    columns["rlnOpticsGroup"] = np.zeros(n, np.int64)  # placeholder, keeps the column order
    if "alignments2D/class" in names:
        columns["rlnClassNumber"] = data["alignments2D/class"].astype(np.int64) + 1
    if "alignments2D/pose" in names:
        columns["rlnAnglePsi"] = np.degrees(data["alignments2D/pose"].astype(np.float64))
    if "alignments2D/shift" in names:
        psize = data["alignments2D/psize_A" if "alignments2D/psize_A" in names else "blob/psize_A"]
        shift = data["alignments2D/shift"].astype(np.float64) * psize.astype(np.float64)[:, None]
        columns["rlnOriginXAngst"], columns["rlnOriginYAngst"] = shift[:, 0], shift[:, 1]
    for field in names:
        if field not in MAPPED_FIELDS:
            columns.update(_split_field(field, data[field]))
    particles = pd.DataFrame(columns)
    optics, particles["rlnOpticsGroup"] = _optics(data, path, cs_dir, image_paths)
    logger.info("%s: %d particles, %d optics group(s)", path, n, len(optics))
    return ParticleTable(particles, optics, base_dir=cs_dir, source=path, cs_dtype=data.dtype)


def write_cs(table: ParticleTable, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write a particle table as a CryoSPARC ``.cs`` structured array.

    Written from RELION columns: ``uid`` (kept, or a hash of the image name), ``blob/*``
    (``blob/sign``: :meth:`ParticleTable.image_signs`, kept or +1 for a RELION STAR's),
    ``ctf/*`` (if there is a defocus), ``location/*`` (if there are coordinates and the
    micrograph shapes are known, from the table or the micrographs' headers) and
    ``alignments2D/*`` (if there is a class, psi or origin); then every ``.cs``-named column.
    """
    path = os.fspath(path)
    p, n = table.particles, table.n
    fields = {"uid": table.numbers("uid", np.uint64) if "uid" in p
              else _make_uids(p["rlnImageName"])}
    numbers, image_paths = split_image_names(p["rlnImageName"].to_numpy())
    out_dir = os.path.dirname(os.path.abspath(path))
    image_paths = relocate_paths(image_paths, table.base_dir, out_dir)
    fields["blob/path"] = _encode(image_paths)
    fields["blob/idx"] = np.maximum(numbers - 1, 0)
    apix = table.pixel_size()
    if "rlnImageSize" in table.optics.columns:
        fields["blob/shape"] = np.repeat(table.box_size()[:, None], 2, axis=1)
    else:
        logger.warning("%s: box size unknown: no blob/shape written to %s", table.source, path)
    fields["blob/psize_A"] = apix
    fields[SIGN_COLUMN] = table.image_signs()
    if "rlnDefocusU" in p:
        fields.update(_ctf_fields(table))
    if "rlnCoordinateX" in p and "rlnCoordinateY" in p:
        fields.update(_location_fields(table))
    if any(c in p for c in ("rlnClassNumber", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")):
        fields.update(_alignment_fields(table, apix))
    for field, values in _gather_cs_columns(p).items():
        fields.setdefault(field, values)
    write_cs_fields(fields, n, path, template=table.cs_dtype, overwrite=overwrite)
    logger.info("wrote %d particles to %s", n, path)


def write_cs_fields(fields: dict[str, np.ndarray], n: int, path: str | os.PathLike, *,
                 template: np.dtype | None = None, overwrite: bool = True) -> None:
    """Write ``n`` rows of ``fields`` (name → (n, …) values) as a ``.cs`` structured array.

    Dtypes: ``template``'s (the ``.cs`` a table was read from), else CryoSPARC's
    (``FIELD_DTYPES``), else the values' (floats as float32, text as bytes); fields in
    ``template``'s order first.  Written through a temporary file renamed at the end.
    """
    array = _to_structured(dict(fields), n, template)
    with atomic_path(os.fspath(path), overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def _load(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"not a CryoSPARC .cs file ({err})") from err
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, "not a CryoSPARC .cs file (not a 1-D structured array)")
    if "blob/path" not in data.dtype.names or "blob/idx" not in data.dtype.names:
        raise InputError(path, "no blob/path and blob/idx fields: not a particle .cs "
                               "(particle images are needed)")
    if len(data) == 0:
        raise InputError(path, "no particles (0 rows)")
    if "blob/psize_A" not in data.dtype.names:
        raise InputError(path, "no pixel size (blob/psize_A missing)")
    for name, wanted in FIELD_DTYPES.items():
        got = data.dtype.fields.get(name)
        if got is not None and (got[0].base.kind not in "iuf" or got[0].shape != wanted.shape):
            raise InputError(path, f"field {name} has dtype {got[0]}, not numbers "
                                   f"(CryoSPARC's is {wanted})")
    return data


def _optics(data: np.ndarray, path: str, cs_dir: str,
            image_paths: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Optics groups from the distinct per-particle (voltage, Cs, Q0, pixel size, box) tuples."""
    per_particle = pd.DataFrame({column: data[field].astype(np.float64)
                                 for field, column in _OPTICS_FIELDS.items()
                                 if field in data.dtype.names})
    apix = data["blob/psize_A"].astype(np.float64)
    bad = ~(np.isfinite(apix) & (apix > 0))
    if bad.any():
        raise InputError(path, f"pixel size {apix[bad][0]} Å (blob/psize_A) for particle "
                               f"{np.argmax(bad) + 1} (must be > 0)")
    per_particle["rlnImagePixelSize"] = apix
    if "blob/shape" in data.dtype.names:
        shape = data["blob/shape"].astype(np.int64)
        if np.any(shape[:, 0] != shape[:, 1]):
            raise InputError(path, "non-square particle images (blob/shape)")
        if len(np.unique(shape[:, 0])) > 1:
            sizes = sorted(set(shape[:, 0].tolist()))
            raise InputError(path, f"mixed box sizes: blob/shape holds {sizes} px")
        per_particle["rlnImageSize"] = shape[:, 0]
    else:
        sizes = stack_box_sizes(image_paths, cs_dir, path)
        if sizes is not None:
            per_particle["rlnImageSize"] = sizes
    return build_optics(per_particle)


def _resolve_blob_paths(raw: np.ndarray, cs_dir: str) -> np.ndarray:
    """Drop a leading ``>``; take the first that exists of p, ../p and basename(p) in ``cs_dir``."""
    unique, inverse = factorize(raw)
    chosen = []
    for raw_path in unique:
        path = raw_path[1:] if raw_path.startswith(">") else raw_path
        candidates = [path] if os.path.isabs(path) else [
            path, os.path.join(os.pardir, path), os.path.basename(path)]
        found = [c for c in candidates if os.path.isfile(os.path.join(cs_dir, c))]
        chosen.append(found[0] if found else path)
    return np.array(chosen, dtype=object)[inverse]


def _split_field(field: str, values: np.ndarray) -> dict[str, np.ndarray]:
    """A field as DataFrame columns: itself, or ``name[i]`` for each element of a (k,) field."""
    if values.dtype.kind == "S":
        return {field: _decode(values)}
    if values.ndim == 1:
        return {field: values}
    flat = values.reshape(len(values), -1)
    return {f"{field}[{','.join(map(str, index))}]": flat[:, k]
            for k, index in enumerate(np.ndindex(*values.shape[1:]))}


def _gather_cs_columns(particles: pd.DataFrame) -> dict[str, np.ndarray]:
    """Inverse of ``_split_field`` over every ``.cs``-named column of the table."""
    fields: dict[str, list] = {}
    for column in particles.columns:
        if not is_cs_column(column):
            continue
        match = _SPLIT.match(column)
        if match:
            name, index = match["name"], tuple(int(i) for i in match["index"].split(","))
        else:
            name, index = column, None
        fields.setdefault(name, []).append((index, particles[column].to_numpy()))
    out = {}
    for name, parts in fields.items():
        if parts[0][0] is None:
            out[name] = parts[0][1]
            continue
        shape = tuple(max(index[d] for index, _ in parts) + 1 for d in range(len(parts[0][0])))
        stacked = np.zeros((len(particles),) + shape, dtype=np.result_type(*(v for _, v in parts)))
        for index, values in parts:
            stacked[(slice(None),) + index] = values
        out[name] = stacked
    return out


def _ctf_fields(table: ParticleTable) -> dict[str, np.ndarray]:
    p, n = table.particles, table.n

    def column(name: str, default: float) -> np.ndarray:
        return table.numbers(name) if name in p else np.full(n, default)

    fields = {field: table.optics_column(name) for field, name in _OPTICS_FIELDS.items()
              if name in table.optics.columns}
    fields.update({"ctf/df1_A": column("rlnDefocusU", 0.0), "ctf/df2_A": column("rlnDefocusV", 0.0),
                   "ctf/df_angle_rad": np.radians(column("rlnDefocusAngle", 0.0))})
    # a table read from a .cs gets back exactly the optional fields it had
    for field, name, default, convert in (("ctf/phase_shift_rad", "rlnPhaseShift", 0.0, np.radians),
                                          ("ctf/bfactor", "rlnCtfBfactor", 0.0, None),
                                          ("ctf/scale", "rlnCtfScalefactor", 1.0, None)):
        if name in p or table.cs_dtype is None:
            values = column(name, default)
            fields[field] = convert(values) if convert else values
    return fields


def _location_fields(table: ParticleTable) -> dict[str, np.ndarray]:
    p = table.particles
    mics = (p["rlnMicrographName"].astype(str).to_numpy() if "rlnMicrographName" in p
            else np.full(table.n, ""))
    shape_columns = ["location/micrograph_shape[0]", "location/micrograph_shape[1]"]
    if all(column in p for column in shape_columns):
        shape = np.column_stack([table.numbers(c, np.int64) for c in shape_columns])
    else:
        shape = _micrograph_shapes(mics, table.base_dir)
        if shape is None:
            logger.warning("%s: micrograph shapes unknown (micrographs not found): no location/* "
                           "fields written", table.source)
            return {}
    return {"location/micrograph_path": _encode(mics), "location/micrograph_shape": shape,
            "location/center_x_frac": table.numbers("rlnCoordinateX") / shape[:, 1],
            "location/center_y_frac": table.numbers("rlnCoordinateY") / shape[:, 0]}


def _micrograph_shapes(mics: np.ndarray, base_dir: str) -> np.ndarray | None:
    """(n, 2) (ny, nx) of each particle's micrograph from its header; None if one is missing."""
    unique, inverse = factorize(mics)
    shapes = []
    for mic in unique:
        full = os.path.join(base_dir, mic)
        if not mic or not os.path.isfile(full):
            return None
        header = read_header(full)
        shapes.append((header.ny, header.nx))
    return np.array(shapes, np.int64)[inverse]


def _alignment_fields(table: ParticleTable, apix: np.ndarray) -> dict[str, np.ndarray]:
    p, n = table.particles, table.n
    psize = table.numbers("alignments2D/psize_A") if "alignments2D/psize_A" in p else apix
    fields = {"alignments2D/psize_A": psize}
    if "rlnClassNumber" in p:
        classes = table.numbers("rlnClassNumber", np.int64)
        if np.any(classes < 1):
            raise InputError(table.source, f"rlnClassNumber {classes.min()} (classes count from 1)")
        fields["alignments2D/class"] = classes - 1
    psi = table.numbers("rlnAnglePsi") if "rlnAnglePsi" in p else np.zeros(n)
    fields["alignments2D/pose"] = np.radians(psi)
    origin = np.zeros((n, 2))
    for k, axis in enumerate("XY"):
        if f"rlnOrigin{axis}Angst" in p:
            origin[:, k] = table.numbers(f"rlnOrigin{axis}Angst") / psize
    fields["alignments2D/shift"] = origin
    return fields


def _to_structured(fields: dict[str, np.ndarray], n: int, template: np.dtype | None) -> np.ndarray:
    """Pack fields into a structured array: template's order and dtypes first, then the rest."""
    order = [f for f in (template.names if template is not None else ()) if f in fields]
    order += [f for f in fields if f not in order]
    spec = []
    for name in order:
        values = np.asarray(fields[name])
        if template is not None and name in template.names:
            base, shape = template[name].base, template[name].shape
        elif name in FIELD_DTYPES:
            base, shape = FIELD_DTYPES[name].base, FIELD_DTYPES[name].shape
        else:
            base = values.dtype if values.dtype.kind in "biuS" else np.dtype("<f4")
            shape = values.shape[1:]
        if base.kind == "S" or values.dtype.kind in "OUS":
            values = _encode(values)
            width = max(base.itemsize if base.kind == "S" else 0, values.dtype.itemsize, 1)
            base = np.dtype(f"S{width}")
        fields[name] = values
        spec.append((name, base, shape) if shape else (name, base))
    array = np.zeros(n, dtype=np.dtype(spec))
    for name in order:
        array[name] = fields[name]
    return array


def _make_uids(names: pd.Series) -> np.ndarray:
    """Deterministic 64-bit uids: a hash of the image name and its occurrence number."""
    names = names.astype(str)
    keys = names + "#" + names.groupby(names).cumcount().astype(str)
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(np.uint64)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.char.decode(np.asarray(values, dtype=bytes), "utf-8").astype(object)


def _encode(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return values
    return np.char.encode(values.astype(str), "utf-8")
