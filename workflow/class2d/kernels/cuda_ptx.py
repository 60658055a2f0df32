"""Compile every CUDA kernel for a GPU architecture, without a GPU.

The simulator runs the kernels as Python, so it cannot see what Numba's CUDA compiler
rejects (typing and lowering differ from the CPU target).  This compiles each kernel, with
the production tunables and the argument types the drivers pass, to PTX through NVVM, and
assembles it with ``ptxas`` when that is installed (registers, shared memory, spills), and
lists float64 instructions that no kernel asked for (``hidden_float64``).

    >>> ptx = compile_all((9, 0))                  # {kernel: PTX text}; needs libNVVM

    $ NUMBA_ENABLE_CUDASIM=0 python -m class2d.kernels.cuda_ptx 9.0
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
from numba import cuda, typeof

from class2d.kernels import cuda_insert, cuda_resident, cuda_score

#: exit status of the command line when it cannot run here (no NVVM, or the simulator)
CANNOT_RUN = 3
#: kernels whose float64 is meant: the atomic sums of back-insertion and residuals
FLOAT64_SUMS = ("backproject", "noise")
#: libdevice's sinf/cosf reduce huge arguments (|x| > 10⁵) in float64 with this constant
_SLOW_PATH = "0d3BF921FB54442D19"


def _array(ndim: int, dtype) -> object:
    return typeof(np.zeros((1,) * ndim, dtype))


def signatures() -> dict[str, tuple[object, tuple]]:
    """{name: (kernel, argument types)} as the drivers launch them."""
    f32, c64, i32 = np.float32, np.complex64, np.int32
    scalar_f32, integer = typeof(np.float32(1)), typeof(1)
    k = cuda_score.kernels(*cuda_score.tunables())
    scored = (_array(2, f32), _array(3, c64), _array(2, c64), _array(2, f32), _array(1, f32),
              scalar_f32)
    parts = (_array(3, f32), _array(3, i32), _array(2, f32), _array(2, i32))
    pairs = (_array(1, i32), _array(1, i32))
    outputs = (_array(3, f32), _array(3, i32), _array(2, f32), _array(2, i32))
    entries = (_array(1, np.int64), _array(1, np.int64)) + (_array(1, f32),) * 4
    particles = (_array(2, c64), _array(2, f32), _array(1, f32))
    return {
        "norm": (cuda_score._norm_kernel, (_array(2, f32), _array(3, f32)) + pairs
                 + (_array(2, f32),)),
        "fill": (cuda_score._fill_kernel, outputs + (_array(3, f32), _array(2, f32))),
        "power": (cuda_resident._power_kernel, (_array(3, c64), _array(3, f32))),
        "partials": (k.partials, scored + (integer, scalar_f32, _array(1, i32))
                     + (_array(1, i32),) * 3 + parts),
        "merge": (k.merge, (scalar_f32,) + pairs + parts + outputs + (
            _array(1, f32), _array(2, np.uint8))),
        "refine": (k.refine, scored + (integer,) + pairs + (
            _array(3, f32), _array(3, i32), _array(3, f32), _array(2, f32))),
        "recount": (k.recount, scored + (integer,) + pairs + (
            _array(1, i32), _array(2, i32), _array(1, f32), _array(2, i32))),
        "rotate": (cuda_insert._rotate_kernel, (_array(3, c64),) + (_array(1, f32),) * 3 + (
            integer, _array(3, c64))),
        "backproject": (cuda_insert._backproject_kernel, (
            _array(3, np.float64), _array(3, np.float64)) + entries + particles
            + (_array(1, f32),) * 4 + (integer, integer)),
        "zero": (cuda_insert._zero_kernel, (_array(1, np.uint64),)),
        "noise": (cuda_insert._noise_kernel, (_array(3, c64),) + entries + particles
                  + (_array(1, f32),) * 3 + (_array(1, np.int64), integer, integer,
                                               _array(2, np.float64))),
    }


@contextlib.contextmanager
def _target(cc: tuple[int, int]):
    """Device functions ask the current device for its compute capability: answer ``cc``."""
    from numba.cuda import dispatcher

    current = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = current


def compile_all(cc: tuple[int, int]) -> dict[str, str]:
    """PTX of every kernel for compute capability ``cc``."""
    if not hasattr(cuda, "compile_ptx") or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise RuntimeError("compiling needs Numba's CUDA target, not the simulator")
    with _target(cc):
        return {name: cuda.compile_ptx(kernel.py_func, args, cc=cc)[0]
                for name, (kernel, args) in signatures().items()}


def ptxas_report(ptx: dict[str, str], cc: tuple[int, int]) -> dict[str, str] | None:
    """``ptxas -v`` resource lines per kernel, or None without ptxas; raises on errors."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    ptxas = shutil.which("ptxas") or os.path.join(home, "bin", "ptxas")
    if not os.path.isfile(ptxas):
        return None
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in ptx.items():
            path = os.path.join(tmp, f"{name}.ptx")
            with open(path, "w") as handle:
                handle.write(text)
            done = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", path, "-o",
                                   os.devnull], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"ptxas rejected {name}: {done.stderr}")
            lines = [line.split(":", 1)[-1].strip() for line in done.stderr.splitlines()
                     if "Used" in line or "spill" in line]
            report[name] = "; ".join(lines[:2])
    return report


def hidden_float64(ptx: dict[str, str]) -> dict[str, list[str]]:
    """{kernel: float64 instructions nobody asked for} (empty lists: none).

    Not counted: libdevice's float64 reduction of huge sin/cos arguments (a branch no
    argument here takes), and in FLOAT64_SUMS kernels the float64 atomic adds and the
    conversions of their float32 terms."""
    found = {}
    for name, text in ptx.items():
        ops = []
        for line in text.splitlines():
            line = line.strip()
            if ".f64" not in line or line.startswith((".", "//")) or _SLOW_PATH in line:
                continue
            op = line.split()[0]
            if op in ("cvt.rn.f64.s64", "cvt.rn.f32.f64"):        # the slow path's ends
                continue
            if name in FLOAT64_SUMS and (op.startswith(("atom.", "red.")) or op == "cvt.f64.f32"):
                continue
            ops.append(op)
        found[name] = ops
    return found


def main(argv: list[str]) -> int:
    cc = tuple(int(part) for part in (argv[0] if argv else "9.0").split("."))
    from numba.cuda.cudadrv import nvvm

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not nvvm.is_available():
        print("cannot compile here: needs libNVVM (CUDA toolkit) and NUMBA_ENABLE_CUDASIM unset")
        return CANNOT_RUN
    ptx = compile_all(cc)
    report = ptxas_report(ptx, cc) or {}
    for name in ptx:
        print(f"{name:12s} sm_{cc[0]}{cc[1]}  {report.get(name, 'PTX ok (no ptxas)')}")
    hidden = {name: ops for name, ops in hidden_float64(ptx).items() if ops}
    if hidden:
        print(f"hidden float64: {hidden}")
        return 1
    print("hidden float64: none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
