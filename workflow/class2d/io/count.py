"""How many particles a file holds, read cheaply enough for the workflow to build its DAG.

    >>> count_particles("run_data.star")      # 1000000: rows counted, nothing parsed
    >>> count_particles("particles.cs")       # the array's length, from its header

The count picks the block :func:`class2d.io.read_particles` reads (``data_particles``, or
else the first loop with an ``rlnImageName`` column) and counts its non-empty,
non-comment rows: one pass over the text, no tokenising, ~0.3 s per million rows.
"""

from __future__ import annotations

import os

import numpy as np

from class2d.errors import InputError


def count_particles(path: str | os.PathLike) -> int:
    """Rows of the particle table in a RELION ``.star`` or CryoSPARC ``.cs`` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "file not found")
    if path.endswith(".cs"):
        try:
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        except (ValueError, OSError) as err:
            raise InputError(path, f"not a CryoSPARC .cs file ({err})") from err
    counts: dict[str, int] = {}
    with_images: list[str] = []
    block, in_loop, in_header = "", False, False
    with open(path, errors="replace") as handle:
        for line in handle:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if text.startswith("data_"):
                block, in_loop, in_header = text[5:], False, False
                counts.setdefault(block, 0)
            elif text == "loop_":
                in_loop, in_header = True, True
            elif in_loop and text.startswith("_"):
                if in_header and text.split()[0] == "_rlnImageName":
                    with_images.append(block)
            elif in_loop:
                in_header = False
                counts[block] += 1
    name = "particles" if "particles" in counts else (with_images[0] if with_images else None)
    if name is None:
        raise InputError(path, "no particle block (data_particles or a loop with rlnImageName)")
    return counts[name]
