"""Write a large MRC image stack piece by piece: memory bounded by the piece, never the stack.

    >>> with stack_writer("stack_000.mrcs", n=100_000, box=96, apix=2.67) as stack:
    ...     for start in range(0, 100_000, 4096):
    ...         stack.write(start, images_of(start))      # (m, 96, 96), any order
    ...     stack.end_at(99_990)                          # fewer images than planned
    # renamed into place only when every image was written and the block succeeded

The file is preallocated (sparse) under a temporary name beside the target and filled
by offset with ordinary writes rather than through a memory map: pages of a written map
stay resident and count towards the job's peak memory, plain writes do not.  The header
(float32 image stack, the pixel size, the class2d label) is written last, with statistics
that do not depend on how the images were split: min and max are exact, the mean and
r.m.s. come from per-image float64 sums added in image order.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import mrcfile
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from class2d.io.atomic import atomic_path
from class2d.io.mrc import LABEL

logger = logging.getLogger(__name__)


class StackPieces:
    """The open stack of :func:`stack_writer`: ``write(start, images)`` fills rows."""

    def __init__(self, handle, n: int, box: int):
        self._handle = handle
        self.n, self.box = n, box
        self._written = np.zeros(n, bool)
        self._min = np.full(n, np.inf, np.float32)
        self._max = np.full(n, -np.inf, np.float32)
        self._sum = np.zeros(n)
        self._sumsq = np.zeros(n)

    def write(self, start: int, images: np.ndarray) -> None:
        """Write images (m, box, box) as rows ``start … start + m − 1`` (converted to float32)."""
        images = self._checked(images)
        self._record(np.arange(start, start + images.shape[0]), images)
        self._handle.seek(self._offset(start))
        self._handle.write(images.data)

    def write_rows(self, rows: np.ndarray, images: np.ndarray) -> None:
        """Write images (m, box, box) as the rows ``rows`` (m,), in any order."""
        images = self._checked(images)
        rows = np.asarray(rows, np.int64)
        self._record(rows, images)
        for row, image in zip(rows, images):
            self._handle.seek(self._offset(row))
            self._handle.write(image.data)

    def end_at(self, n: int) -> None:
        """Shorten the stack to its first ``n`` rows (1 ≤ n ≤ its size), as when some of the
        images it was made for turned out unusable; the rows after them are dropped."""
        if not 1 <= n <= self.n:
            raise ValueError(f"a stack of {self.n} images cannot end at {n}")
        self.n = n
        for name in ("_written", "_min", "_max", "_sum", "_sumsq"):
            setattr(self, name, getattr(self, name)[:n])
        self._handle.truncate(self._offset(n))

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (self.box, self.box):
            raise ValueError(f"images must be (m, {self.box}, {self.box}), got {images.shape}")
        return images

    def _offset(self, row: int) -> int:
        return HEADER_DTYPE.itemsize + int(row) * self.box * self.box * 4

    def _record(self, rows: np.ndarray, images: np.ndarray) -> None:
        """Check the rows and keep each image's statistics."""
        if rows.size != images.shape[0]:
            raise ValueError(f"{rows.size} rows for {images.shape[0]} images")
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"rows {rows.min()}..{rows.max()} outside the stack of {self.n}")
        flat = images.reshape(images.shape[0], -1)
        self._min[rows], self._max[rows] = flat.min(axis=1), flat.max(axis=1)
        self._sum[rows] = flat.sum(axis=1, dtype=np.float64)
        self._sumsq[rows] = np.einsum("ij,ij->i", flat, flat, dtype=np.float64)
        self._written[rows] = True

    def unwritten(self) -> np.ndarray:
        """Rows not written yet: (m,) int."""
        return np.flatnonzero(~self._written)

    def header(self, template: bytes, apix: float) -> bytes:
        """The final header: ``template``'s fields with the stack's size and statistics."""
        header = np.frombuffer(template, dtype=HEADER_DTYPE).copy().reshape(()).view(np.recarray)
        count = float(self.n * self.box * self.box)
        mean = self._sum.sum() / count
        header.nz = self.n
        header.dmin, header.dmax = self._min.min(), self._max.max()
        header.dmean = np.float32(mean)
        header.rms = np.float32(np.sqrt(max(self._sumsq.sum() / count - mean * mean, 0.0)))
        return header.tobytes()


@contextlib.contextmanager
def stack_writer(path: str | os.PathLike, n: int, box: int, apix: float,
                 overwrite: bool = True) -> Iterator[StackPieces]:
    """Yield a :class:`StackPieces` for an MRC stack of n float32 (box, box) images.

    apix: Å/px, the header's voxel size.  On leaving the block every row must have been
    written (``ValueError`` otherwise); the file is then renamed to ``path``.  On any
    error the temporary file is removed and ``path`` is left as it was.
    """
    if n < 1 or box < 1:
        raise ValueError(f"need n ≥ 1 and box ≥ 1, got {n}, {box}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        # mrcfile writes a one-image stack: its header is the template of ours
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.zeros((1, box, box), np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = float(apix)
            mrc.header.label[0] = LABEL
        with open(tmp, "r+b") as handle:
            template = handle.read(HEADER_DTYPE.itemsize)
            handle.truncate(HEADER_DTYPE.itemsize + n * box * box * 4)
            pieces = StackPieces(handle, n, box)
            yield pieces
            missing = pieces.unwritten()
            if missing.size:
                raise ValueError(f"{path}: {missing.size} of {n} images never written "
                                 f"(first: row {missing[0]})")
            handle.seek(0)
            handle.write(pieces.header(template, apix))
    logger.debug("wrote %d images of %d px to %s", n, box, path)
