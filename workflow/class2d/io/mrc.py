"""MRC image stacks: read through memory maps, write with the pixel size in the header.

    >>> stack = read_stack("particles.mrcs")              # (n, D, D), memory-mapped
    >>> images = read_images(table, rows=[0, 5, 9])      # (3, D, D) float32, any number of stacks
    >>> write_stack("classes.mrcs", averages, apix=2.8)  # float32, image-stack header

The pixel size of particle images always comes from the metadata (STAR / ``.cs``): the
headers of real stacks often say 0 or 1 Å.  Headers are read permissively (RELION and
older programs write no ``MAP`` ID or machine stamp), and checked for what matters here:
positive dimensions, a known data mode and a file long enough to hold the images.
Stacks of any data mode are read in their own dtype; ``read_images`` converts.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, NamedTuple

import mrcfile
import mrcfile.utils
from mrcfile.dtypes import HEADER_DTYPE
import numpy as np

from class2d import __version__
from class2d.errors import InputError
from class2d.io.atomic import atomic_path

if TYPE_CHECKING:
    from class2d.io.table import ParticleTable

logger = logging.getLogger(__name__)
#: the header's first label: the same images give the same bytes, whenever written
LABEL = f"class2d {__version__}"


class StackHeader(NamedTuple):
    """What the header of an MRC file says about its images."""

    path: str
    """the file"""
    n: int
    """number of images (nz)"""
    ny: int
    """rows per image, px"""
    nx: int
    """columns per image, px"""
    dtype: np.dtype
    """data type on disk, byte order included"""
    offset: int
    """bytes before the first image (1024 + extended header)"""
    header_apix: float
    """Å/px according to the header (often 0 or 1: do not trust it for particles)"""


def read_header(path: str | os.PathLike) -> StackHeader:
    """Read and check an MRC header; ``InputError`` if the file is missing or not a usable MRC."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_DTYPE.itemsize)
    except OSError as err:
        raise InputError(path, f"cannot read the file ({err})") from err
    if len(raw) < HEADER_DTYPE.itemsize:
        raise InputError(path, f"not an MRC file ({len(raw)} bytes, shorter than an MRC header)")
    header = _interpret_header(raw)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) <= 0:
        raise InputError(path, f"corrupt MRC header (dimensions {nx} x {ny} x {nz})")
    try:
        dtype = np.dtype(mrcfile.utils.data_dtype_from_header(header))
    except (ValueError, KeyError) as err:
        raise InputError(path, f"unsupported MRC data mode {int(header.mode)}") from err
    if dtype.kind == "c":
        raise InputError(path, f"complex MRC data (mode {int(header.mode)}) is not an image stack")
    if int(header.nsymbt) < 0:
        raise InputError(path, f"corrupt MRC header (extended header of "
                               f"{int(header.nsymbt)} bytes)")
    offset = 1024 + int(header.nsymbt)
    needed = offset + nx * ny * nz * dtype.itemsize
    size = os.path.getsize(path)
    if size < needed:
        raise InputError(path, f"truncated: the header promises {nz} images of {ny} x {nx} px "
                               f"({needed} bytes), the file has {size} bytes")
    mx = int(header.mx)
    apix = float(header.cella.x) / mx if mx > 0 else 0.0
    return StackHeader(path, nz, ny, nx, dtype, offset, apix)


def _interpret_header(raw: bytes) -> np.recarray:
    """The 1024-byte header, in the byte order of its machine stamp or else of a valid mode.

    Parsed here rather than by ``mrcfile.open``, which reads the whole extended header even
    with ``header_only`` (gigabytes when a corrupt header claims so).  Like mrcfile's
    permissive mode, a missing ``MAP`` ID or machine stamp is accepted: RELION writes neither.
    """
    header = np.frombuffer(raw, dtype=HEADER_DTYPE).reshape(()).view(np.recarray)
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header.machst)
    except ValueError:
        order = "<"
    header = header.view(header.dtype.newbyteorder(order)).view(np.recarray)
    for candidate in (header, header.view(header.dtype.newbyteorder()).view(np.recarray)):
        try:
            mrcfile.utils.dtype_from_mode(candidate.mode)
            return candidate
        except ValueError:
            continue
    return header


def read_stack(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """All images of an MRC file: (n, D, D) in the file's dtype (a single image is (1, D, D)).

    With ``mmap`` the array is a read-only memory map (nothing is read until indexed).
    """
    header = read_header(path)
    if header.nx != header.ny:
        raise InputError(header.path, f"images are not square ({header.ny} x {header.nx} px)")
    data = np.memmap(header.path, dtype=header.dtype, mode="r", offset=header.offset,
                     shape=(header.n, header.ny, header.nx))
    return data if mmap else np.array(data)


def write_stack(path: str | os.PathLike, images: np.ndarray, apix: float,
                overwrite: bool = True) -> None:
    """Write images as an MRC image stack (``ispg`` 0, ``mz`` 1) of float32.

    images: (n, D, D) or (D, D); apix: Å/px, written as the header's voxel size
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"images must be (n, D, D), got shape {images.shape}")
    apix = float(apix)
    if not np.isfinite(apix) or apix <= 0:
        raise ValueError(f"pixel size must be > 0 Å, got {apix}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(images)
            mrc.set_image_stack()
            mrc.voxel_size = apix
            mrc.update_header_stats()
            mrc.header.label[0] = LABEL     # not mrcfile's, which holds the time of writing
    logger.debug("wrote %d images of %d px to %s", images.shape[0], images.shape[-1], path)


def stack_box_sizes(image_paths: np.ndarray, base_dir: str, source: str) -> np.ndarray | None:
    """(n,) box sizes in px from the headers of the stacks, or ``None`` if a stack is missing.

    image_paths: (n,) stack paths (relative to ``base_dir`` or absolute); every distinct stack's
    header is read once; ``InputError`` (naming ``source``) for non-square or mixed sizes.
    """
    # io.paths brings pandas: imported here, not by a job that only reads stacks
    from class2d.io.paths import factorize

    unique, inverse = factorize(image_paths)
    sizes = np.zeros(len(unique), np.int64)
    for k, stack in enumerate(unique):
        full = os.path.join(base_dir, stack)
        if not os.path.isfile(full):
            logger.warning("%s: no box size in the metadata and stack %s not found: box size "
                           "unknown", source, full)
            return None
        header = read_header(full)
        if header.nx != header.ny:
            raise InputError(source, f"stack {full} holds non-square images "
                                     f"({header.ny} x {header.nx} px)")
        sizes[k] = header.nx
        if sizes[k] != sizes[0]:
            raise InputError(source, f"mixed box sizes: {unique[0]} holds {sizes[0]} px images, "
                                     f"{stack} {sizes[k]} px")
    return sizes[inverse]


def images_past_end(table: ParticleTable, rows: np.ndarray) -> np.ndarray:
    """(m,) bool: which of the table's ``rows`` (m,) name an image past the end of its stack.

    Only the headers of the stacks are read; ``InputError`` for a stack that is missing or
    not a usable MRC file (a fault of the whole input, not of one particle).
    """
    paths, indices = table.subset(np.asarray(rows, np.int64)).image_locations()
    if not len(paths):
        return np.zeros(0, bool)
    distinct, codes = np.unique(paths.astype(str), return_inverse=True)
    lengths = np.empty(len(distinct), np.int64)
    for k, path in enumerate(distinct):
        try:
            lengths[k] = read_header(path).n
        except InputError as err:
            raise _named_in(err, table) from err
    return indices >= lengths[codes.ravel()]


def _named_in(err: InputError, table: ParticleTable) -> InputError:
    """``err`` about an image stack, saying which particle file named the stack."""
    return InputError(err.path, f"{err.problem} (image stack named in "
                                f"{table.source or 'particle table'})")


def read_images(table: ParticleTable, rows: np.ndarray | None = None,
                dtype=np.float32) -> np.ndarray:
    """Gather the images of a particle table: (m, D, D) of ``dtype``.

    rows: integer indices or a boolean mask into ``table.particles`` (``None``: all rows);
    each stack file is opened once, as a memory map, and only the wanted images are read.
    """
    if rows is None:
        rows = np.arange(table.n)
    rows = np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
    source = table.source or "particle table"
    part = table.subset(rows)
    paths, indices = part.image_locations()
    expected = part.box_size() if "rlnImageSize" in table.optics.columns else None
    order = np.argsort(paths.astype(str), kind="stable")
    bounds = np.flatnonzero(np.r_[True, paths[order][1:] != paths[order][:-1]]) if len(rows) else []
    out: np.ndarray | None = None
    size_from = ""
    for start, stop in zip(bounds, list(bounds[1:]) + [len(rows)]):
        sel = order[start:stop]
        stack_path = paths[sel[0]]
        try:
            stack = read_stack(stack_path)
        except InputError as err:
            raise _named_in(err, table) from err
        n, box = stack.shape[0], stack.shape[-1]
        wanted = indices[sel]
        if wanted.max() >= n:
            raise InputError(source, f"stack {stack_path} has {n} images, "
                                     f"the table asks for image {int(wanted.max()) + 1}")
        if expected is not None and np.any(expected[sel] != box):
            raise InputError(source, f"stack {stack_path} holds {box} px images, rlnImageSize "
                                     f"says {int(expected[sel][0])}")
        if out is None:
            out, size_from = np.empty((len(rows), box, box), dtype), stack_path
        elif out.shape[-1] != box:
            raise InputError(source, f"mixed box sizes: {size_from} holds {out.shape[-1]} px "
                                     f"images, {stack_path} {box} px")
        by_index = np.argsort(wanted, kind="stable")
        out[sel[by_index]] = stack[wanted[by_index]]
    if out is None:
        sizes = (table.optics["rlnImageSize"].unique() if "rlnImageSize" in table.optics.columns
                 else [])
        box = int(sizes[0]) if len(sizes) == 1 else 0
        out = np.empty((0, box, box), dtype)
    return out
