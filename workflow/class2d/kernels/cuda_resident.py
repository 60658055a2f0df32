"""Class references kept on the card between calls: the grids of a pass and their rotations.

    >>> d_grids = device_grids(grids)             # uploaded the first time this object is seen
    >>> hit = find_rotations(grids, fx, fy, psi, pad)            # a Rotations, or None
    >>> d_arot, d_power = device_rotations(arot)  # the card's copy of a returned arot, or upload

A pass scores every batch against one grids object (``mstep.reference_grids`` makes a new
one per pass), at two frequency sets (the prepass and the full one) and the same rotations:
so the grids go to the card once per pass, are rotated there once per frequency set, and
``score_classes`` finds the rotations already there when it is handed the host array that
``rotate_references`` returned.

Objects are matched by identity, so nothing may change them in place while they are kept:
the grids kept here (arrays that own their memory) are made read-only until they are dropped
(then made writeable again), and the rotations returned are read-only.  An in-place write
therefore raises instead of being scored against a stale copy.  Grids that are views of
another array are not kept (uploaded each call).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numba import cuda

from class2d.kernels import cuda_device as dev

#: grids objects kept on the card (the current pass's; the older one goes first)
GRIDS_KEPT = 1
#: rotation sets kept per grids (prepass and full, for new and seen particles)
ROTATIONS_KEPT = 4


@dataclasses.dataclass
class Rotations:
    """One rotation set: host (K, R, F) complex64 (read-only), its device copy, and
    |A|² on the card transposed to (K, F, R) float32 (the norm kernel's layout)."""

    host: np.ndarray
    device: object
    power: object
    key: tuple


@dataclasses.dataclass
class _Kept:
    grids: np.ndarray
    device: object
    made_read_only: bool
    rotations: list


_kept: list[_Kept] = []


@cuda.jit
def _power_kernel(arot, power):
    """power[k, f, r] = |arot[k, r, f]|².  arot: (K, R, F) complex64;  power: (K, F, R)."""
    n_class, n_rot, n_freq = arot.shape
    for item in range(cuda.grid(1), n_class * n_rot * n_freq, cuda.gridsize(1)):
        r = item % n_rot
        f = (item // n_rot) % n_freq
        k = item // (n_rot * n_freq)
        value = arot[k, r, f]
        power[k, f, r] = value.real * value.real + value.imag * value.imag


def power_of(d_arot, name: str | None = None) -> object:
    """|A|² of device rotations (K, R, F), as (K, F, R) float32: a new array, or the pooled
    buffer ``name``."""
    k_count, n_rot, n_freq = d_arot.shape
    shape = (k_count, n_freq, n_rot)
    power = (cuda.device_array(shape, np.float32) if name is None
             else dev.buffer(name, shape, np.float32))
    if power.size:
        _power_kernel[dev.blocks(power.size), dev.THREADS, dev.stream()](d_arot, power)
    return power


def _find(grids: np.ndarray) -> _Kept | None:
    return next((kept for kept in _kept if kept.grids is grids), None)


def _drop(kept: _Kept) -> None:
    _kept.remove(kept)
    if kept.made_read_only:
        kept.grids.flags.writeable = True


def keeps(grids: np.ndarray) -> bool:
    """Whether ``grids`` can be kept on the card (it owns its memory, complex64, C order)."""
    return (grids.base is None and grids.dtype == np.complex64
            and grids.flags.c_contiguous)


def device_grids(grids: np.ndarray) -> object:
    """The card's copy of ``grids`` (K, G, G) complex64: kept from an earlier call, kept from
    now on (see the module doc), or, for grids that cannot be kept, the pooled buffer."""
    kept = _find(grids)
    if kept is not None:
        return kept.device
    if not keeps(grids):
        return dev.to_device("grids", grids, np.complex64)
    while len(_kept) >= GRIDS_KEPT:
        _drop(_kept[0])
    d_grids = dev.upload(grids, np.complex64, "grids")
    made_read_only = grids.flags.writeable
    grids.flags.writeable = False
    _kept.append(_Kept(grids, d_grids, made_read_only, []))
    return d_grids


def _key(fx, fy, psi, pad) -> tuple:
    return (int(pad),) + tuple(np.asarray(a, np.float32).tobytes() for a in (fx, fy, psi))


def find_rotations(grids, fx, fy, psi, pad) -> Rotations | None:
    """The rotation set of these grids at these frequencies and angles, if kept."""
    kept = _find(grids)
    if kept is None:
        return None
    key = _key(fx, fy, psi, pad)
    return next((rot for rot in kept.rotations if rot.key == key), None)


def add_rotations(grids, fx, fy, psi, pad, d_arot) -> np.ndarray:
    """Keep device rotations ``d_arot`` of ``grids`` (already kept) and return their host
    copy, read-only."""
    kept = _find(grids)
    power = power_of(d_arot)
    host = d_arot.copy_to_host(stream=dev.stream())
    dev.sync()
    dev.count("to_host", "rotations", host.nbytes)
    host.flags.writeable = False
    if len(kept.rotations) >= ROTATIONS_KEPT:
        kept.rotations.pop(0)
    kept.rotations.append(Rotations(host, d_arot, power, _key(fx, fy, psi, pad)))
    return host


def device_rotations(arot: np.ndarray) -> tuple[object, object]:
    """(rotations (K, R, F) complex64, |A|² (K, F, R) float32) on the card: the kept copy
    when ``arot`` is an array ``rotate_references`` returned, else uploaded to the pool."""
    for kept in _kept:
        for rot in kept.rotations:
            if rot.host is arot:
                return rot.device, rot.power
    d_arot = dev.to_device("arot", arot, np.complex64)
    return d_arot, power_of(d_arot, "power")


def forget() -> None:
    """Drop every kept grids and rotation set (their host grids become writeable again)."""
    while _kept:
        _drop(_kept[0])
