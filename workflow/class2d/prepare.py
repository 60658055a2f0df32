"""Stack preparation: Fourier-crop to the alignment box, normalise, split into shards.

    >>> stack = prepare_stack("particles.star", "results/prepare", max_res_A=6.0,
    ...                       diameter_A=150.0, shards=2)
    >>> stack = PreparedStack.open("results/prepare")
    >>> stack.images(np.arange(100))             # (100, d, d) float32, from memory maps

The prepared folder holds ``particles.star`` (the input table, every column kept),
``stack_NNN.mrcs`` (one per shard, contiguous rows, in the alignment box, normalised:
background mean 0 and s.d. 1 outside the particle diameter, as RELION normalises) and
``prepared.yaml`` (boxes, pixel sizes, shard row ranges); ``class2d.layout`` names them.
The alignment resolution that sets the crop is ``ClassifyParams.align_res_A``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import mrcfile
import numpy as np
import yaml

from class2d import io, layout
from class2d.errors import InputError
from class2d.fourier import fourier_crop, pixel_radius
from class2d.io.atomic import atomic_path
from class2d.io.mrc import read_images, write_stack

logger = logging.getLogger(__name__)

#: images read, cropped and normalised at a time
BATCH = 1024


def alignment_box(box: int, apix: float, max_res_A: float | None, box_px: int | None) -> int:
    """Smallest even box whose Nyquist reaches ``max_res_A`` (never larger than ``box``)."""
    if box_px:
        return min(int(box_px) // 2 * 2, box)
    if not max_res_A:
        return box
    need = math.ceil(box * 2.0 * apix / max_res_A)
    return min(need + need % 2, box)


def background_mask(box: int, radius_px: float) -> np.ndarray:
    """(box, box) bool: pixels outside the particle circle, used for normalisation."""
    return pixel_radius(box) > radius_px


def normalise(images: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Images with background mean 0 and s.d. 1: (n, d, d) float32."""
    bg = images[:, background]
    mean = bg.mean(axis=1)
    std = bg.std(axis=1)
    std = np.where(std > 0, std, 1.0)
    return ((images - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PreparedStack:
    """A prepared folder: images in the alignment box, split into shards.

    box: alignment box, px;  apix: its pixel size, Å/px
    original_box, original_apix: of the input particles
    shard_rows: [(start, stop), …] row range of every shard
    """

    folder: str
    box: int
    apix: float
    original_box: int
    original_apix: float
    shard_rows: tuple[tuple[int, int], ...]

    @property
    def n(self) -> int:
        return self.shard_rows[-1][1]

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "PreparedStack":
        """The prepared stack in ``folder``."""
        return cls.read(layout.prepared_meta(os.fspath(folder)))

    @classmethod
    def read(cls, meta: str | os.PathLike) -> "PreparedStack":
        """The prepared stack described by ``meta`` (its ``prepared.yaml``, which sits in
        the prepared folder beside the shards' stacks)."""
        with open(meta) as fh:
            info = yaml.safe_load(fh)
        return cls(folder=os.path.dirname(os.fspath(meta)), box=info["box"], apix=info["apix"],
                   original_box=info["original_box"], original_apix=info["original_apix"],
                   shard_rows=tuple(tuple(r) for r in info["shard_rows"]))

    def table(self) -> io.ParticleTable:
        return io.read_particles(layout.prepared_particles(self.folder))

    def images(self, rows: np.ndarray) -> np.ndarray:
        """Images of the given rows (sorted or not): (m, box, box) float32."""
        rows = np.asarray(rows)
        out = np.empty((rows.size, self.box, self.box), np.float32)
        for s, (a, b) in enumerate(self.shard_rows):
            sel = np.flatnonzero((rows >= a) & (rows < b))
            if sel.size:
                with mrcfile.mmap(layout.stack_path(self.folder, s), "r") as mrc:
                    out[sel] = mrc.data[rows[sel] - a]
        return out


def prepare_stack(particles: str | os.PathLike, out_dir: str | os.PathLike, *,
                  max_res_A: float | None = None, box_px: int | None = None,
                  diameter_A: float | None = None, invert_contrast: bool = False,
                  shards: int = 1) -> PreparedStack:
    """Prepare ``particles`` (a .star or .cs) into ``out_dir``; returns the prepared stack.

    max_res_A: Å, the highest resolution the alignment will use (sets the crop:
        ``ClassifyParams.align_res_A``); None: no crop
    box_px: alignment box in px (overrides max_res_A)
    shards: pieces the prepared stack is split into (contiguous rows)
    diameter_A: Å, particle diameter; normalisation uses the pixels outside it
        (default: 75 % of the box, as RELION's default background radius)
    """
    table = io.read_particles(particles)
    io.require_ctf(table)
    source = os.fspath(particles)
    boxes = np.unique(table.box_size())
    if boxes.size != 1:
        raise InputError(source, f"mixed box sizes {boxes.tolist()}: prepare each size separately")
    apixes = np.unique(table.pixel_size())
    if apixes.size != 1:
        raise InputError(source, f"mixed pixel sizes {apixes.tolist()} Å: prepare each separately")
    box, apix = int(boxes[0]), float(apixes[0])
    new_box = alignment_box(box, apix, max_res_A, box_px)
    new_apix = apix * box / new_box
    radius = (0.75 * new_box / 2) if not diameter_A else diameter_A / 2 / new_apix
    if radius >= new_box / 2 * math.sqrt(2) - 1:
        raise InputError(source, f"particle diameter {diameter_A} Å leaves no background in a "
                         f"{box * apix:.0f} Å box")
    background = background_mask(new_box, radius)
    shards = max(1, min(int(shards), table.n))
    edges = np.linspace(0, table.n, shards + 1).round().astype(int)
    shard_rows = tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    names = table.particles["rlnImageName"].astype(str).to_numpy()
    logger.info("preparing %d particles: box %d -> %d px, %.3f -> %.3f Å/px, %d shard(s)",
                table.n, box, new_box, apix, new_apix, shards)
    for s, (a, b) in enumerate(shard_rows):
        out = np.empty((b - a, new_box, new_box), np.float32)
        for start in range(a, b, BATCH):
            rows = np.arange(start, min(start + BATCH, b))
            images = read_images(table, rows)
            bad = ~np.isfinite(images).all(axis=(1, 2))
            if bad.any():
                raise InputError(source, f"image {names[rows[bad][0]]} holds NaN or Inf values "
                                 f"({int(bad.sum())} such image(s) in this batch)")
            cropped = fourier_crop(images, new_box)
            if invert_contrast:
                cropped = -cropped
            out[rows - a] = normalise(cropped, background)
        write_stack(layout.stack_path(out_dir, s), out, new_apix)
    io.write_particles(table, layout.prepared_particles(out_dir))
    meta = {"box": new_box, "apix": new_apix, "original_box": box, "original_apix": apix,
            "shard_rows": [list(r) for r in shard_rows], "source": os.path.abspath(source),
            "n": table.n, "diameter_A": float(2 * radius * new_apix),
            "invert_contrast": bool(invert_contrast)}
    with atomic_path(layout.prepared_meta(out_dir)) as tmp, open(tmp, "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=False)
    return PreparedStack.open(out_dir)
