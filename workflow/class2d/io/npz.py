"""NumPy ``.npz`` archives that hold the same bytes whenever the same arrays are written.

    >>> write_npz("results/classify/iter_003/state.npz", {"references": refs, "apix": 1.5})
    >>> with np.load("results/classify/iter_003/state.npz") as data: ...

Each member carries a fixed date (``ZIP_DATE``) set here, not left to how ``np.savez``
happens to call ``zipfile`` (whose ``writestr`` and ``write`` stamp the time of writing
or the file's mtime), and the archive is written under a temporary name and renamed into
place (:func:`class2d.io.atomic.atomic_path`).  Members are stored uncompressed, as
``np.savez`` stores them, without pickle, and read back with ``np.load``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

import numpy as np

from class2d.io.atomic import atomic_path

#: date and time of every member: the earliest a zip file can hold
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, object]) -> None:
    """Write ``{name: array}`` as ``path`` (members ``name.npy``, in the mapping's order).

    Values go through ``np.asanyarray`` (numbers and strings become 0-d arrays); object
    arrays are refused (they would need pickle).
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            member.compress_type = zipfile.ZIP_STORED
            member.external_attr = 0o600 << 16   # -rw-------, as np.savez's members
            with archive.open(member, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(value), allow_pickle=False)
