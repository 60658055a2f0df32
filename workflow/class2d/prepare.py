"""Stack preparation: Fourier-crop to the alignment box, normalise, split into shards.

    >>> stack = prepare_stack("particles.star", "results/prepare", max_res_A=6.0,
    ...                       diameter_A=150.0, shards=2)     # in one process, or per job:
    >>> prepare_shard("particles.star", "results/prepare/stack_001.mrcs", 1, 2, max_res_A=6.0)
    >>> finish_prepare("particles.star", "results/prepare", 2, max_res_A=6.0)
    >>> stack = PreparedStack.open("results/prepare")
    >>> stack.images(np.arange(100))             # (100, d, d) float32, from memory maps

The prepared folder holds ``particles.star`` (the input table, its RELION columns kept, and
``blob/sign`` set to the sign each image was given: −1 where the original is dark, so that
every ``.cs`` written from it, a forced ``invert_contrast`` included, tells the truth),
``ctf.npz`` (its CTF parameters as arrays, so that a pass need not parse the STAR text),
``stack_NNN.mrcs`` (one per shard, contiguous rows, in the alignment box, particles white
(see :func:`contrast_signs`), normalised: background mean 0 and s.d. 1 outside the
circle ``discs.normalisation_radius_px``, as RELION normalises) and ``prepared.yaml``
(boxes, pixel sizes, shard row ranges, how many images were inverted); ``class2d.layout``
names them.
The alignment resolution that sets the crop is ``ClassifyParams.align_res_A``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import NamedTuple

import mrcfile
import numpy as np
import yaml

from class2d import discs, faults, io, layout
from class2d.budget import DEFAULT_MEMORY_GB, prepare_batch
from class2d.ctf import CTFParams
from class2d.errors import ConfigError, InputError
from class2d.fourier import fourier_crop, pixel_radius
from class2d.io.atomic import atomic_path
from class2d.io.count import count_particles
from class2d.io.mrc import read_header, read_images
from class2d.io.npz import write_npz
from class2d.io.stack_writer import stack_writer
from class2d.progress import Progress
from class2d.timing import timer

logger = logging.getLogger(__name__)

#: the share of bad particles (``class2d.faults``) above which preparation stops (config
#: ``prepare.max_bad_fraction``)
MAX_BAD_FRACTION = 0.05


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

    @functools.cached_property
    def ctf_params(self) -> CTFParams:
        """Every particle's CTF parameters, (n,) float64 each: read from ``ctf.npz`` once
        (at 10⁶ particles, parsing them from the STAR file took seconds)."""
        with np.load(layout.prepared_ctf(self.folder)) as data:
            return CTFParams(**{name: data[name] for name in CTFParams._fields})

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


class Geometry(NamedTuple):
    """The boxes and pixel sizes of a preparation, derived once from the table and settings."""

    box: int
    """px, input images"""
    apix: float
    """Å/px, input images"""
    new_box: int
    """px, the alignment box"""
    new_apix: float
    """Å/px in the alignment box"""
    radius: float
    """px of the alignment box: normalisation uses the pixels outside this circle"""


def geometry(table: io.ParticleTable, source: str, max_res_A: float | None,
             box_px: int | None, diameter_A: float | None) -> Geometry:
    """Check the table (one box and pixel size, CTF columns, no image twice) and derive
    the prepared geometry.

    max_res_A: Å, the highest resolution the alignment will use (sets the crop:
    ``ClassifyParams.align_res_A``; None: no crop); box_px: alignment box in px
    (overrides max_res_A); diameter_A: Å, the particle diameter (config
    ``particle_diameter_A``; normalisation uses the pixels outside
    ``discs.normalisation_radius_px``: 75 % of the box by default, RELION's default).
    """
    io.require_ctf(table)
    boxes = np.unique(table.box_size())
    if boxes.size != 1:
        raise InputError(source, f"mixed box sizes {boxes.tolist()}: prepare each size separately")
    apixes = np.unique(table.pixel_size())
    if apixes.size != 1:
        raise InputError(source, f"mixed pixel sizes {apixes.tolist()} Å: prepare each separately")
    box, apix = int(boxes[0]), float(apixes[0])
    names = table.particles["rlnImageName"].astype(str)
    repeated = names[names.duplicated()]
    if repeated.size:
        raise InputError(source, f"image {repeated.iloc[0]} appears "
                         f"{int((names == repeated.iloc[0]).sum())} times: each image once")
    if max_res_A and max_res_A < 2 * apix:
        logger.warning("alignment resolution %g Å (classify.max_res_A, max_align_res_A) is "
                       "finer than the particles' Nyquist limit %g Å: the alignment stops "
                       "at Nyquist", max_res_A, 2 * apix)
    new_box = alignment_box(box, apix, max_res_A, box_px)
    new_apix = apix * box / new_box
    discs.check_diameter(diameter_A, new_box, new_apix)
    radius = discs.normalisation_radius_px(new_box, new_apix, diameter_A)
    return Geometry(box, apix, new_box, new_apix, radius)


def contrast_signs(table: io.ParticleTable,
                   invert_contrast: bool | None) -> tuple[np.ndarray, str]:
    """(n,) float32 ±1 that each image is multiplied by so that its particle is white, as
    the classifier assumes; and why, for the log.

    invert_contrast: True (−1) or False (+1) for every image, whatever the input says; None:
    the input's own convention, :meth:`~class2d.io.table.ParticleTable.image_signs`: a
    CryoSPARC ``.cs`` (or a STAR class2d wrote from one) gives each particle's ``blob/sign``
    (−1, as CryoSPARC extracts: dark particles, inverted here; +1 kept); a RELION STAR has
    no such field and is kept (RELION extracts particles white).
    """
    if invert_contrast is not None:
        signs = np.full(table.n, -1.0 if invert_contrast else 1.0, np.float32)
        why = f"prepare.invert_contrast is {str(bool(invert_contrast)).lower()}"
    else:
        signs = np.where(table.image_signs() < 0, -1.0, 1.0).astype(np.float32)
        why = (f"prepare.invert_contrast is null: the input's {io.SIGN_COLUMN} decides, -1 "
               f"(CryoSPARC's dark particles) is inverted" if io.SIGN_COLUMN in table.particles
               else f"prepare.invert_contrast is null and the input has no {io.SIGN_COLUMN}: "
                    f"kept, as RELION extracts particles white")
    return signs, f"contrast inverted for {int((signs < 0).sum())} of {table.n} particles: {why}"


def shard_rows(n: int, shards: int) -> tuple[tuple[int, int], ...]:
    """Row range (start, stop) of each of ``shards`` contiguous, near-equal shards of n rows."""
    if not 1 <= shards <= n:
        raise ConfigError("prepare.shards", f"{shards} shard(s) for {n} particles: need between "
                                            f"1 and one shard per particle")
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))


def shard_count(particles: str | os.PathLike | int, shards: int = 0,
                particles_per_shard: int = 50_000) -> int:
    """The number of shards: ``shards``, or with 0 ceil(particles / particles_per_shard).

    particles: a particle file (its rows are counted cheaply, see
    :func:`~class2d.io.count.count_particles`) or the count itself.  The workflow calls this
    while it builds its DAG.  ``ConfigError`` for more shards than particles.
    """
    n = particles if isinstance(particles, int) else count_particles(particles)
    if particles_per_shard < 1:
        raise ConfigError("prepare.particles_per_shard",
                          f"must be ≥ 1, got {particles_per_shard}")
    count = int(shards) or max(1, -(-n // int(particles_per_shard)))
    shard_rows(n, count)            # the check
    return count


@timer("prepare")
def prepare_shard(particles: str | os.PathLike, shard_path: str | os.PathLike, shard: int,
                  shards: int, *, max_res_A: float | None = None, box_px: int | None = None,
                  diameter_A: float | None = None, invert_contrast: bool | None = None,
                  memory_gb: float = DEFAULT_MEMORY_GB, bad_particles: str = "skip",
                  max_bad_fraction: float = MAX_BAD_FRACTION,
                  rows: tuple[int, int] | None = None) -> None:
    """Prepare shard ``shard`` of ``shards`` of ``particles`` into ``shard_path``, and list
    the particles it leaves out in ``layout.shard_rejects`` beside it.  rows: the shard's
    input rows (start, stop), when not those of :func:`shard_rows` (``live.plan_shards``).

    Images are read, cropped and normalised in batches sized from ``memory_gb`` and
    written through a temporary file renamed at the end: a failure (a stack missing
    halfway) leaves no shard.  The bytes depend on the shard's good rows only, not on the
    batch size, on other shards or on the bad rows left out.  bad_particles, max_bad_fraction:
    what a bad particle does (``class2d.faults``: ``skip`` leaves it out, ``error`` stops);
    invert_contrast: as :func:`contrast_signs`; other arguments as :func:`geometry`.
    """
    source = os.fspath(particles)
    table = io.read_particles(particles)
    a, b = rows or shard_rows(table.n, shards)[shard]
    skip = faults.check_mode(bad_particles) == "skip"
    numbers = faults.number_faults(table) if skip else faults.Faults.none()
    clean = numbers.good(np.arange(table.n))
    found = numbers.within(np.arange(a, b))
    if skip:
        found = found + faults.past_stack_faults(table, numbers.good(np.arange(a, b)))
        faults.check_share(found, table.n, max_bad_fraction, source, partial=True)
    geo = geometry(table.subset(clean), source, max_res_A, box_px, diameter_A)
    batch = prepare_batch(memory_gb, geo.box, geo.new_box)
    background = background_mask(geo.new_box, geo.radius)
    names = table.particles["rlnImageName"].astype(str).to_numpy()
    signs = np.ones(table.n, np.float32)
    signs[clean], contrast = contrast_signs(table.subset(clean), invert_contrast)
    logger.info("%s", contrast)
    logger.info("shard %d%s: particles %d-%d, box %d -> %d px, %.3f -> %.3f Å/px, "
                "batches of %d", shard, f" of {shards}" if shards else "", a, b - 1, geo.box,
                geo.new_box, geo.apix, geo.new_apix, batch)
    candidates = found.good(np.arange(a, b))
    if candidates.size == 0:
        raise _empty_shard(source, shard, a, b, found)
    written = 0
    with (Progress(f"prepare shard {shard}", candidates.size, logger) as progress,
          stack_writer(shard_path, candidates.size, geo.new_box, geo.new_apix) as stack):
        for start in range(0, candidates.size, batch):
            rows = candidates[start:start + batch]
            images = read_images(table, rows)
            bad = faults.image_faults(images, rows)
            if len(bad) and not skip:
                raise _image_error(source, names, images, rows, bad)
            if len(bad):                     # a copy only where images are left out
                keep = ~np.isin(rows, bad.rows)
                images, rows = images[keep], rows[keep]
            if rows.size:
                cropped = fourier_crop(images, geo.new_box) * signs[rows, None, None]
                del images
                stack.write(written, normalise(cropped, background))
                written += rows.size
            found = found + bad
            progress.advance(rows.size + len(bad))
        if written == 0:
            raise _empty_shard(source, shard, a, b, found)
        faults.check_share(found, table.n, max_bad_fraction, source, partial=True)
        stack.end_at(written)
    faults.write_faults(layout.shard_rejects(os.path.dirname(os.fspath(shard_path)), shard),
                        found)
    if len(found):
        logger.info("shard %d: left out %d of %d particles (%s)", shard, len(found), b - a,
                    found.summary())


def _empty_shard(source: str, shard: int, a: int, b: int, found) -> InputError:
    return InputError(source, f"shard {shard} (particles {a + 1}-{b}) holds no usable particle "
                              f"({found.summary()}): prepare.max_bad_fraction allows more bad "
                              f"particles than a shard holds")


def _image_error(source: str, names: np.ndarray, images: np.ndarray, rows: np.ndarray,
                 bad) -> InputError:
    """The one line of ``bad_particles: error`` for the first bad image of a batch."""
    row = int(bad.rows[0])
    image = images[int(np.flatnonzero(rows == row)[0])]
    what = ("holds NaN or Inf values" if bad.reasons[0] == faults.NON_FINITE
            else f"is constant ({image.flat[0]:g} everywhere: no particle)")
    return InputError(source, f"image {names[row]} {what} (particle {row + 1}; {len(bad)} "
                              f"bad image(s) in this batch; prepare.bad_particles is error)")


@timer("prepare")
def finish_prepare(particles: str | os.PathLike, out_dir: str | os.PathLike, shards: int, *,
                   max_res_A: float | None = None, box_px: int | None = None,
                   diameter_A: float | None = None, invert_contrast: bool | None = None,
                   max_bad_fraction: float = MAX_BAD_FRACTION,
                   rows: list[tuple[int, int]] | None = None) -> PreparedStack:
    """Write ``particles.star`` (the good particles, in their input order), ``ctf.npz``,
    ``rejected.star`` and ``rejected.cs`` (the particles the shards left out, with their
    reasons: ``class2d.faults``) and (last) ``prepared.yaml`` beside the prepared shards.

    Every shard must be in ``out_dir`` with its rows and box, and its list of rejects
    (``InputError`` otherwise); so must be no more than ``max_bad_fraction`` of the
    particles bad.  rows: every shard's input rows (start, stop), when not those of
    :func:`shard_rows`; rows past the last shard (appended since) are left for later.
    """
    source = os.fspath(particles)
    table = io.read_particles(particles)
    if rows and rows[-1][1] < table.n:
        table = table.subset(np.arange(rows[-1][1]))
    ranges = tuple(tuple(r) for r in rows) if rows else shard_rows(table.n, shards)
    out_dir = os.fspath(out_dir)
    headers = [read_header(layout.stack_path(out_dir, s)) for s in range(shards)]
    found = sum((faults.read_faults(layout.shard_rejects(out_dir, s)) for s in range(shards)),
                faults.Faults.none())
    faults.check_share(found, table.n, max_bad_fraction, source)
    good = found.good(np.arange(table.n))
    kept = table.subset(good)
    geo = geometry(kept, source, max_res_A, box_px, diameter_A)
    edges = np.searchsorted(good, [a for a, _ in ranges] + [table.n])
    rows = tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))
    for s, (header, (a, b)) in enumerate(zip(headers, rows)):
        if (header.n, header.nx) != (b - a, geo.new_box):
            raise InputError(header.path, f"holds {header.n} images of {header.nx} px, shard {s} "
                             f"needs {b - a} of {geo.new_box} px: prepare it again")
    signs = contrast_signs(kept, invert_contrast)[0]
    io.write_particles(kept.with_columns(**{io.SIGN_COLUMN: signs}),
                       layout.prepared_particles(out_dir))
    write_npz(layout.prepared_ctf(out_dir), kept.ctf_params()._asdict())
    io.write_particle_set(faults.rejected_table(table, found), out_dir, layout.REJECTED,
                          template=faults.rejected_table(table, faults.Faults.of([0], "")),
                          warn_empty=False)
    if len(found):
        logger.warning("left out %d of %d particles (%s): listed in %s", len(found), table.n,
                       found.summary(), layout.rejected_particles(out_dir, "star"))
    meta = {"box": geo.new_box, "apix": geo.new_apix, "original_box": geo.box,
            "original_apix": geo.apix, "shard_rows": [list(r) for r in rows],
            "source": os.path.abspath(source), "n": kept.n, "rejected": len(found),
            "normalisation_diameter_A": float(2 * geo.radius * geo.new_apix),
            "inverted_particles": int((signs < 0).sum())}
    with atomic_path(layout.prepared_meta(out_dir)) as tmp, open(tmp, "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=False)
    logger.info("prepared %d particles in %d shard(s): box %d -> %d px", kept.n, shards,
                geo.box, geo.new_box)
    return PreparedStack.open(out_dir)


def prepare_stack(particles: str | os.PathLike, out_dir: str | os.PathLike, *,
                  max_res_A: float | None = None, box_px: int | None = None,
                  diameter_A: float | None = None, invert_contrast: bool | None = None,
                  shards: int = 1, memory_gb: float = DEFAULT_MEMORY_GB,
                  bad_particles: str = "skip",
                  max_bad_fraction: float = MAX_BAD_FRACTION) -> PreparedStack:
    """Prepare ``particles`` (a .star or .cs) into ``out_dir`` in one process: every shard
    (:func:`prepare_shard`), then :func:`finish_prepare`.  Returns the prepared stack."""
    settings = dict(max_res_A=max_res_A, box_px=box_px, diameter_A=diameter_A,
                    invert_contrast=invert_contrast, max_bad_fraction=max_bad_fraction)
    for s in range(shards):
        prepare_shard(particles, layout.stack_path(os.fspath(out_dir), s),
                      s, shards, memory_gb=memory_gb, bad_particles=bad_particles, **settings)
    return finish_prepare(particles, out_dir, shards, **settings)
