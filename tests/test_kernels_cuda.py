"""CUDA kernels against their CPU twins on fresh random inputs; backend selection.

The kernels run on a GPU when numba finds one, otherwise on Numba's CUDA simulator.  The
``gpu`` fixture switches the simulator on (NUMBA_ENABLE_CUDASIM=1 before ``numba.cuda`` is
imported) for this module only and puts the previous ``numba.cuda`` back afterwards, so that
``get_backend("auto")`` in other test modules never picks the simulator.  The tunables are
patched to tiny values, so that block edges, multi-block grids, grid-stride loops and
chunking all run on small inputs.  Set NUMBA_ENABLE_CUDASIM=1 in the environment to force
the simulator on a machine with a GPU.

Production block sizes: the ``production`` tests run the twins with the real tunables on
inputs that need several blocks; those marked ``gpu_heavy`` are too slow for the simulator
and run where a GPU is found (or with CLASS2D_SIM_HEAVY=1).  CLASS2D_REQUIRE_GPU=1 makes
every test that would use the simulator (or skip for want of a GPU or of NVVM) FAIL, so a
run meant for a GPU cannot pass without one.
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from class2d.em.grids import FrequencySet
from class2d.kernels import cpu
from kernel_inputs import (backproject, backproject_inputs, kernel_posteriors, oracle_posteriors,
                           random_complex, random_entries, random_particles, realistic_scoring)

SIG_LOG = np.float32(np.log(1000.0))
#: the brief's tolerance: relative error in float32
RTOL = 1e-4
#: set to 1 where these tests must run on a real GPU (bench/gpu_check.sh does)
REQUIRE_GPU = os.environ.get("CLASS2D_REQUIRE_GPU") == "1"


def _forget(prefixes: tuple[str, ...]) -> dict:
    """Take modules under ``prefixes`` out of sys.modules and their parents' attributes."""
    gone = {name: sys.modules.pop(name) for name in list(sys.modules)
            if any(name == p or name.startswith(p + ".") or name.startswith(p + "_")
                   for p in prefixes)}
    for name, module in gone.items():
        parent, _, child = name.rpartition(".")
        if getattr(sys.modules.get(parent), child, None) is module:
            delattr(sys.modules[parent], child)
    return gone


def _restore(gone: dict) -> None:
    sys.modules.update(gone)
    for name, module in gone.items():
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def _atomic_shared_arrays():
    """Make the simulator's shared-array get-or-create atomic; returns the original method.

    numba's FakeCUDAShared.array (numba/cuda/simulator/kernelapi.py) looks an allocation up
    by (file, line) and, if absent, creates it with np.empty and stores it: an unlocked
    check-then-set.  A thread switch between the two (likelier under setswitchinterval(1e-4))
    lets two threads of the first block create different arrays: each then misses the
    other's writes and reads np.empty garbage, e.g. the −inf of a padded pose in ``ss``
    (partials), or a pose index in ``poses`` (merge).  Same lookup key, under a lock.
    """
    import threading

    from numba.core import types as nb_types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    original = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:                          # dynamic shared memory: one buffer, no race
            return original(self, shape, dtype)
        if isinstance(dtype, nb_types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = array
    return original


@contextlib.contextmanager
def _cuda_modules():
    """class2d's CUDA modules on the GPU, or on the simulator where there is none."""
    from numba import cuda
    from numba.core import config

    simulate = not cuda.is_available()              # else a GPU, or the simulator already on
    prefixes = ("numba.cuda", "class2d.kernels.cuda")
    env = os.environ.get("NUMBA_ENABLE_CUDASIM")
    switch = sys.getswitchinterval()
    if simulate:
        saved = _forget(prefixes)
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        config.reload_config()
    shared_array = None
    if config.ENABLE_CUDASIM:
        sys.setswitchinterval(1e-4)   # the simulator polls its threads; this makes it ~4× faster
    try:
        from class2d.kernels import cuda as backend, cuda_device, cuda_insert, cuda_score
        if config.ENABLE_CUDASIM:
            shared_array = _atomic_shared_arrays()
        from class2d.kernels import cuda_resident
        yield types.SimpleNamespace(backend=backend, device=cuda_device, insert=cuda_insert,
                                    score=cuda_score, resident=cuda_resident,
                                    simulated=bool(config.ENABLE_CUDASIM))
    finally:
        sys.setswitchinterval(switch)
        if shared_array is not None:
            from numba.cuda.simulator import kernelapi
            kernelapi.FakeCUDAShared.array = shared_array
        if simulate:
            _forget(prefixes)
            _restore(saved)
            if env is None:
                os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
            else:
                os.environ["NUMBA_ENABLE_CUDASIM"] = env
            config.reload_config()


@pytest.fixture(scope="module")
def gpu():
    with _cuda_modules() as modules:
        if REQUIRE_GPU and modules.simulated:
            pytest.fail("CLASS2D_REQUIRE_GPU=1 but the kernels would run on the simulator "
                        "(no GPU found, or NUMBA_ENABLE_CUDASIM=1)")
        yield modules


@pytest.fixture(autouse=True)
def _heavy(request):
    """``gpu_heavy`` tests need a GPU (or CLASS2D_SIM_HEAVY=1 to wait for the simulator)."""
    if request.node.get_closest_marker("gpu_heavy") is None:
        return
    modules = request.getfixturevalue("gpu")
    if modules.simulated and os.environ.get("CLASS2D_SIM_HEAVY") != "1":
        pytest.skip("too slow for the simulator: runs on a GPU (or with CLASS2D_SIM_HEAVY=1)")


@pytest.fixture
def production(gpu):
    """The real tunables (not shrunk): pooled buffers and kept references dropped first."""
    gpu.resident.forget()
    gpu.device.release_buffers()
    return gpu


@pytest.fixture
def tiny(gpu, monkeypatch):
    """Tunables small enough that every kernel needs several blocks on the test inputs."""
    for name, value in dict(TILE_N=4, TILE_Q=4, TILE_F=3, MICRO_N=2, MICRO_Q=2,
                            MERGE_THREADS=4).items():
        monkeypatch.setattr(gpu.score, name, value)
    monkeypatch.setattr(gpu.device, "THREADS", 8)
    monkeypatch.setattr(gpu.device, "MAX_BLOCKS", 3)
    return gpu


def _small_memory(monkeypatch, gpu, *n_bytes: int) -> list:
    """Pretend the device has ``n_bytes[j]`` free at the j-th look (the last value from then
    on), so that calls run in chunks; returns the (items, items per chunk) of each split."""
    looks = list(n_bytes)
    splits = []
    chunk_size = gpu.device.chunk_size

    def spy(count, fixed_bytes, item_bytes, what):
        splits.append((count, chunk_size(count, fixed_bytes, item_bytes, what)))
        return splits[-1][1]

    monkeypatch.setattr(gpu.device, "free_bytes", lambda: looks.pop(0) if len(looks) > 1
                        else looks[0])
    monkeypatch.setattr(gpu.device, "MEMORY_FRACTION", 1.0)
    monkeypatch.setattr(gpu.device, "chunk_size", spy)
    return splits


def _close(got, want, rtol=RTOL):
    """Relative error ≤ rtol, relative to the largest magnitude of ``want``."""
    magnitude = np.abs(want)
    scale = max(float(np.max(magnitude[np.isfinite(magnitude)], initial=0.0)), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


def _freqs(box=10, r_max=4.5):
    return FrequencySet.within(box, r_max)




def _score_inputs(rng, n, n_freq, n_rot, side):
    p_stack = rng.standard_normal((n, 2 * n_freq)).astype(np.float32)
    ctf2 = rng.uniform(0.1, 1.0, (n, n_freq)).astype(np.float32)
    arot = random_complex(rng, (n_rot, n_freq))
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, (side * side, n_freq))).astype(np.complex64)
    alpha = rng.uniform(0.5, 1.5, n).astype(np.float32)
    return p_stack, ctf2, arot, phase, alpha


def _one_class(backend, inputs, inv_temp, side, n_top):
    """``backend.score_classes`` on the one class of ``inputs``, without the class axis."""
    p_stack, ctf2, arot, phase, alpha = inputs
    out = backend.score_classes(p_stack, ctf2, arot[None], phase, alpha, inv_temp, side, SIG_LOG,
                                n_top)
    return tuple(value[:, 0] for value in out)


def _all_scores(p_stack, ctf2, arot, phase, alpha, inv_temp):
    """(N, R·T) float64 scores of every pose, for judging near-ties."""
    n_freq = arot.shape[1]
    poses = (arot[:, None, :].astype(np.complex128) * phase[None]).reshape(-1, n_freq)
    p = p_stack[:, :n_freq].astype(np.float64) + 1j * p_stack[:, n_freq:]
    cross = (np.conj(p) @ poses.T).real
    norm = ctf2.astype(np.float64) @ (np.abs(arot.astype(np.complex128)) ** 2).T
    a = alpha[:, None].astype(np.float64)
    return (2 * a * cross - a * a * np.repeat(norm, phase.shape[0], axis=1)) * inv_temp


def _assert_same_reduction(got, want, scores):
    """GPU and CPU reductions agree; indices and counts may differ only at near-ties."""
    top_s, top_i, lse, nsig, refine, ratio = got
    tol = 10 * RTOL * max(1.0, float(np.max(np.abs(scores))))
    _close(top_s, want[0])
    _close(lse, want[2])
    rows, cols = np.nonzero(top_i != want[1])
    assert np.all(top_i[rows, cols] >= 0)
    np.testing.assert_allclose(scores[rows, top_i[rows, cols]], want[0][rows, cols], atol=tol)
    threshold = want[0][:, :1].astype(np.float64) - SIG_LOG
    near = np.sum(np.abs(scores - threshold) < tol, axis=1)
    assert np.all(np.abs(nsig.astype(int) - want[3]) <= near)
    same = top_i[:, 0] == want[1][:, 0]
    np.testing.assert_allclose(refine[same], want[4][same], atol=RTOL)
    _close(ratio[same], want[5][same])


@pytest.mark.parametrize("inv_temp, n_top, chunked", [
    (1.0, 3, False),      # sharp: the best tile decides the count
    (0.02, 1, False),     # flat: many significant poses, recounted tiles
    (0.2, 6, True),       # n_top above the poses of a tile; particles in chunks
])
def test_cuda_score_class_matches_cpu(tiny, monkeypatch, inv_temp, n_top, chunked):
    rng = np.random.default_rng([7, n_top])
    inputs = _score_inputs(rng, n=10, n_freq=7, n_rot=3, side=3)     # 27 poses: 7 tiles of 4
    recounted = []                                  # flagged pairs of every chunk
    original = tiny.score.recount_blocks

    def spy(flags, tile_n, classes=None):
        recounted.append(int(flags.sum()))
        return original(flags, tile_n, classes)

    monkeypatch.setattr(tiny.score, "recount_blocks", spy)
    splits = _small_memory(monkeypatch, tiny, 4 * 1024) if chunked else []
    got = _one_class(tiny.backend, inputs, inv_temp, 3, n_top)
    want = _one_class(cpu, inputs, inv_temp, 3, n_top)
    assert [a.dtype for a in got] == [a.dtype for a in want]
    assert [a.shape for a in got] == [a.shape for a in want]
    _assert_same_reduction(got, want, _all_scores(*inputs, inv_temp))
    assert len(recounted) == (-(-10 // splits[0][1]) if chunked else 1)
    assert not chunked or splits[0][1] < 10
    if inv_temp < 0.1:
        assert sum(recounted) > 0, "the flat case should exercise the recount kernel"


def test_cuda_score_classes_with_candidates_matches_cpu(tiny):
    """Each class scored only on its candidate particles (the last on none): the CUDA
    backend's per-class path against the CPU one's worker threads."""
    rng = np.random.default_rng(12)
    p_stack, ctf2, _, phase, alpha = _score_inputs(rng, n=8, n_freq=7, n_rot=3, side=3)
    arot = random_complex(rng, (3, 3, 7))
    candidates = rng.random((8, 3)) < 0.5
    candidates[:, 2] = False
    candidates[0, :2] = True
    got = tiny.backend.score_classes(p_stack, ctf2, arot, phase, alpha, 0.5, 3, SIG_LOG, 4,
                                     candidates)
    want = cpu.score_classes(p_stack, ctf2, arot, phase, alpha, 0.5, 3, SIG_LOG, 4, candidates)
    for k in range(3):
        rows = candidates[:, k]
        for value, fill in zip(got, (-np.inf, -1, -np.inf, 0, 0.0, 1.0)):
            assert np.all(value[~rows, k] == fill)
        if rows.any():
            scores = _all_scores(p_stack[rows], ctf2[rows], arot[k], phase, alpha[rows], 0.5)
            _assert_same_reduction([value[rows, k] for value in got],
                                   [value[rows, k] for value in want], scores)


def test_cuda_posteriors_at_a_realistic_frequency_count_match_float64(gpu, monkeypatch):
    """~10³ frequencies in 32 slices of TILE_F, best scores
    2·10³–5·10³, near-duplicate classes: class and top-pose posteriors agree with a float64
    oracle to 2e-3 (CPU measured ≤ 4e-4, test_kernels_cpu.py), and the best pose is its.
    Checked: the scoring kernel's frequency loop stopped at 512 fails here and in no other
    scoring test of this module."""
    for name, value in dict(TILE_N=4, TILE_Q=8, TILE_F=32, MICRO_N=2, MICRO_Q=2).items():
        monkeypatch.setattr(gpu.score, name, value)     # few threads: the simulator's cost
    inputs = realistic_scoring(np.random.default_rng(20), n=4)
    p_stack, ctf2, arot, phase, alpha, _ = inputs
    assert arot.shape[2] > 30 * gpu.score.TILE_F
    out = gpu.backend.score_classes(p_stack, ctf2, arot, phase, alpha, 1.0, 3, SIG_LOG, 4)
    by_max, marginal, poses = oracle_posteriors(*inputs[:5], 1.0)
    got = kernel_posteriors(out)
    assert ((by_max > 0.1) & (by_max < 0.9)).sum() >= 2            # soft where it matters
    np.testing.assert_allclose(got[0], by_max, atol=2e-3)
    np.testing.assert_allclose(got[1], marginal, atol=2e-3)
    np.testing.assert_allclose(got[2], np.take_along_axis(poses, out[1], axis=2), atol=2e-3)
    np.testing.assert_array_equal(out[1][:, :, 0], poses.argmax(axis=2))


def test_cuda_score_class_fewer_poses_than_n_top(tiny):
    rng = np.random.default_rng(11)
    inputs = _score_inputs(rng, n=5, n_freq=4, n_rot=2, side=1)       # 2 poses, no neighbours
    got = _one_class(tiny.backend, inputs, 1.0, 1, 3)
    want = _one_class(cpu, inputs, 1.0, 1, 3)
    np.testing.assert_array_equal(got[1][:, 2], -1)
    np.testing.assert_array_equal(got[4], 0.0)
    _assert_same_reduction(got, want, _all_scores(*inputs, 1.0))


def test_cuda_recount_blocks_groups_pairs_by_tile(gpu):
    flags = np.zeros((7, 3), np.uint8)
    flags[[0, 2, 3, 5, 6], 1] = 1
    flags[4, 2] = 1
    tiles, rows = gpu.score.recount_blocks(flags, 2)
    np.testing.assert_array_equal(tiles, [1, 1, 1, 2])
    np.testing.assert_array_equal(rows, [[0, 2], [3, 5], [6, -1], [4, -1]])
    assert gpu.score.recount_blocks(np.zeros((3, 2), np.uint8), 2)[0].size == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_cuda_rotate_references_matches_cpu(tiny, monkeypatch, chunked):
    rng = np.random.default_rng([3, chunked])
    freqs = _freqs()
    grids = random_complex(rng, (3, 20, 20))
    psi = rng.uniform(0, 2 * np.pi, 5).astype(np.float32)
    if chunked:                                     # one class per chunk
        splits = _small_memory(monkeypatch, tiny, 20 * 20 * 8 + 5 * freqs.size * 12 + 1000)
    got = tiny.backend.rotate_references(grids, freqs.fx, freqs.fy, psi, 2)
    want = cpu.rotate_references(grids, freqs.fx, freqs.fy, psi, 2)
    assert got.dtype == want.dtype and got.shape == want.shape
    _close(got, want)
    assert not chunked or splits == [(3, 1)]






@pytest.mark.parametrize("chunked", [False, True])
def test_cuda_backproject_matches_cpu(tiny, monkeypatch, chunked):
    num, den, args, freqs = backproject_inputs(np.random.default_rng([5, chunked]))
    want_num, want_den = num.copy(), den.copy()
    entry_bytes = 60 + 12 * freqs.size
    if chunked:      # sums on the host, one class, then two entries per chunk
        one_class = 20 * 20 * 24 + 16 * freqs.size + entry_bytes
        splits = _small_memory(monkeypatch, tiny, one_class, one_class, 2 * entry_bytes)
    backproject(tiny.backend, num, den, *args)
    backproject(cpu, want_num, want_den, *args)
    _close(num, want_num)
    _close(den, want_den)
    assert not chunked or (splits[0] == (4, 1) and any(n > 2 for n, _ in splits[1:])
                           and all(step == min(n, 2) for n, step in splits[1:]))


@pytest.mark.parametrize("chunked", [False, True])
def test_cuda_noise_residuals_matches_cpu(tiny, monkeypatch, chunked):
    rng = np.random.default_rng([9, chunked])
    freqs = _freqs()
    n_shells = freqs.box // 2 + 1
    classes, _, rows, (psi, tx, ty, weight) = random_entries(rng, 3, 7, 6)
    rng.shuffle(classes)
    x, ctf, alpha = random_particles(rng, 6, freqs.size)
    grids = random_complex(rng, (3, 20, 20))
    if chunked:                                     # three entries per chunk
        splits = _small_memory(monkeypatch, tiny, 3 * (8 * n_shells + 36 + 12 * freqs.size))
    args = (grids, classes, rows, psi, tx, ty, weight, x, ctf, alpha, freqs.fx, freqs.fy,
            freqs.wf, freqs.shell, 2, freqs.box, n_shells)
    got = tiny.backend.noise_residuals(*args)
    want = cpu.noise_residuals(*args)
    assert got.dtype == want.dtype and got.shape == want.shape
    _close(got, want)
    assert not chunked or splits == [(7, 3)]


def test_cuda_device_memory_too_small_raises(tiny, monkeypatch):
    _small_memory(monkeypatch, tiny, 100)
    rng = np.random.default_rng(1)
    with pytest.raises(MemoryError, match="too little free memory"):
        _one_class(tiny.backend, _score_inputs(rng, 3, 5, 2, 1), 1.0, 1, 1)


#: run in a fresh interpreter: which backend auto picks, and what asking for cuda says
_BACKEND_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import class2d.kernels as k
print("auto:", k.get_backend("auto").__name__)
from class2d.runner import run_step
run_step(k.get_backend, "cuda")
"""


def test_get_backend_without_a_gpu_in_a_clean_process():
    """A fresh process without the simulator (NUMBA_ENABLE_CUDASIM unset) that sees no GPU
    (CUDA_VISIBLE_DEVICES empty hides any the driver has): auto takes the CPU through the
    real "no GPU found" path (the log says why, and it is not the simulator), and cuda ends
    the step with one line naming the ``backend`` key, no traceback."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_ENABLE_CUDASIM", "NUMBA_DISABLE_CUDA")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", _BACKEND_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "auto: class2d.kernels.cpu" in done.stdout, done.stdout + done.stderr
    assert "using the CPU because numba.cuda.is_available() is False" in done.stdout
    assert "simulator" not in done.stdout
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [("error: config backend: cuda was asked for, but "
                       "numba.cuda.is_available() is False (no GPU or no driver)")], done.stderr


@pytest.mark.parametrize("failure", ["no device", "driver error"])
def test_get_backend_without_cuda_device(monkeypatch, caplog, failure):
    """In this process (the simulator switched off for the call): no device, or a driver
    that raises, gives the CPU for auto with the reason, and a ConfigError for cuda."""
    from class2d.errors import ConfigError
    from class2d.kernels import get_backend
    from numba import cuda

    def is_available():
        if failure == "driver error":
            raise OSError("libcuda.so: cannot open shared object file")
        return False

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(cuda, "is_available", is_available)
    with pytest.raises(ConfigError, match="config backend: cuda was asked for"):
        get_backend("cuda")
    with caplog.at_level("INFO", logger="class2d.kernels"):
        assert get_backend("auto") is cpu
    reason = "the CUDA driver failed" if failure == "driver error" else "is_available() is False"
    assert "using the CPU because" in caplog.text and reason in caplog.text
    assert "simulator" not in caplog.text


def test_cuda_kernels_compile_for_a_gpu_target():
    """Numba's CUDA compiler, not the simulator, accepts every kernel (sm_90: H100/H200).

    The simulator runs kernels as Python and cannot see CUDA typing or lowering errors; this
    needs libNVVM from a CUDA toolkit but no GPU, and skips (saying why) without it.  The
    PTX must hold no float64 instruction that no kernel asked for (``hidden_float64``).
    """
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run([sys.executable, "-m", "class2d.kernels.cuda_ptx", "9.0"], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode == 3 and not REQUIRE_GPU:    # cuda_ptx.CANNOT_RUN
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "partials" in done.stdout and "backproject" in done.stdout
    assert "hidden float64: none" in done.stdout


@pytest.mark.slow
def test_cuda_and_cpu_backends_classify_alike(gpu, monkeypatch, tmp_path):
    """A whole classification on both backends (``classify_all``: two online iterations
    and a full pass) at SNR 0.7, where posteriors over poses are soft, so that every
    reduction and weighted insertion counts: the two agree on every particle's class
    (adjusted Rand ≥ 0.99), on ψ (≤ 1°) and origin (≤ 1 Å) for ≥ 90 % of the particles,
    and on every class average (correlation ≥ 0.999; the simulator gives 1 − 1e-12).
    (40 particles of 2 objects: the simulator's speed bounds the size; 3 objects need more
    particles than it can carry to classify at all.)

    Checked, each alone: the CUDA insertion without its Hermitian mirror (classes: ARI
    0.11), the CUDA scoring kernel without the imaginary-part product (poses: 2.5 % agree),
    the CUDA insertion with sin ψ negated (ARI 0.81) all fail this.
    """
    import mrcfile

    from class2d import io
    from class2d.classify import classify_all
    from class2d.metrics import adjusted_rand
    from class2d.prepare import prepare_stack
    from class2d.simulate import simulate, write_dataset

    # few threads per block and few blocks: the simulator runs one Python thread each
    for name, value in dict(TILE_N=8, TILE_Q=8, TILE_F=32, MICRO_N=2, MICRO_Q=2).items():
        monkeypatch.setattr(gpu.score, name, value)
    monkeypatch.setattr(gpu.device, "THREADS", 8)
    monkeypatch.setattr(gpu.device, "MAX_BLOCKS", 4)
    data = simulate(40, box=16, apix=8.0, snr=0.7, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    prepared = tmp_path / "prep"
    prepare_stack(write_dataset(data, tmp_path / "data"), prepared)
    # 40 particles in 2 iterations sort only marginalised over poses (force max: ARI 0.29)
    config = dict(n_classes=2, max_res_A=24.0, online_iterations=2, batch_per_class=12,
                  psi_step_deg=30.0, shift_range_A=8.0, local_shift_steps=1,
                  sort_classes=False, force_max=False)
    particles, averages = [], []
    for backend in ("cpu", "cuda"):
        classify_all(str(prepared), str(tmp_path / backend), config, seed=1, backend=backend)
        particles.append(io.read_particles(tmp_path / backend / "particles.star").particles)
        with mrcfile.open(tmp_path / backend / "classes.mrcs") as mrc:
            averages.append(np.array(mrc.data, np.float64))
    ours, theirs = particles
    classes = ours["rlnClassNumber"].to_numpy()
    assert adjusted_rand(classes, theirs["rlnClassNumber"].to_numpy()) >= 0.99
    assert adjusted_rand(data.truth["true_class"].to_numpy(), classes) >= 0.8
    same = classes == theirs["rlnClassNumber"].to_numpy()
    turn = np.mod(ours["rlnAnglePsi"] - theirs["rlnAnglePsi"] + 180, 360) - 180
    moved = np.hypot(ours["rlnOriginXAngst"] - theirs["rlnOriginXAngst"],
                     ours["rlnOriginYAngst"] - theirs["rlnOriginYAngst"])
    agree = same & (np.abs(turn.to_numpy()) <= 1.0) & (moved.to_numpy() <= 1.0)
    assert agree.mean() >= 0.9, agree.mean()
    for a, b in zip(*averages):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_gpu_was_used_when_required(gpu):
    """Under CLASS2D_REQUIRE_GPU=1 the kernels ran on a real device (the fixture fails
    first otherwise)."""
    if not REQUIRE_GPU:
        pytest.skip("CLASS2D_REQUIRE_GPU is not set")
    from numba import cuda

    assert not gpu.simulated and cuda.is_available()
    assert gpu.device.device_limit("MAX_THREADS_PER_BLOCK") >= 256


def _pair_inputs(rng, n, n_class, n_freq, n_rot, side, share=0.6):
    """Score inputs for ``n_class`` classes and candidates: each class on about ``share`` of
    the particles (one class on none, particle 0 on every class)."""
    p_stack, ctf2, _, phase, alpha = _score_inputs(rng, n, n_freq, n_rot, side)
    arot = random_complex(rng, (n_class, n_rot, n_freq))
    candidates = rng.random((n, n_class)) < share
    candidates[:, -1] = False
    candidates[0, :-1] = True
    return p_stack, ctf2, arot, phase, alpha, candidates


def _assert_classes_match(got, want, inputs, inv_temp):
    """Every (particle, class) scored on both backends agrees; the others are unscored."""
    p_stack, ctf2, arot, phase, alpha, candidates = inputs
    for k in range(arot.shape[0]):
        rows = candidates[:, k]
        for value, fill in zip(got, (-np.inf, -1, -np.inf, 0, 0.0, 1.0)):
            assert np.all(value[~rows, k] == fill)
        if rows.any():
            scores = _all_scores(p_stack[rows], ctf2[rows], arot[k], phase, alpha[rows],
                                 inv_temp)
            _assert_same_reduction([value[rows, k] for value in got],
                                   [value[rows, k] for value in want], scores)


def test_cuda_score_production_tunables_matches_cpu(production):
    """Real tunables (256 threads, 64 × 64 tiles, 16-frequency slices, 128 merge threads):
    70 particles need two particle tiles, 150 poses three pose tiles, 20 frequencies two
    slices; two classes on candidate subsets and one on none."""
    gpu = production
    assert (gpu.score.TILE_N, gpu.score.TILE_Q, gpu.score.TILE_F) == (64, 64, 16)
    rng = np.random.default_rng(21)
    inputs = _pair_inputs(rng, n=70, n_class=3, n_freq=20, n_rot=6, side=5, share=0.95)
    args = inputs[:5] + (0.3, 5, SIG_LOG, 4, inputs[5])
    got = gpu.backend.score_classes(*args)
    want = cpu.score_classes(*args)
    blocks = gpu.score.pair_blocks(np.nonzero(inputs[5].T)[0], gpu.score.TILE_N)[0].size
    assert blocks >= 3
    _assert_classes_match(got, want, inputs, 0.3)


@pytest.mark.gpu_heavy
@pytest.mark.parametrize("inv_temp, n_top", [(1.0, 8), (0.02, 1)])
def test_cuda_score_production_size_matches_cpu(production, inv_temp, n_top):
    """Real tunables at a batch's shape: 600 particles × 12 classes (candidates), 360 poses
    (6 tiles), 300 frequencies."""
    rng = np.random.default_rng([22, n_top])
    inputs = _pair_inputs(rng, n=600, n_class=12, n_freq=300, n_rot=40, side=3)
    args = inputs[:5] + (inv_temp, 3, SIG_LOG, n_top, inputs[5])
    got = production.backend.score_classes(*args)
    want = cpu.score_classes(*args)
    _assert_classes_match(got, want, inputs, inv_temp)


@pytest.mark.parametrize("heavy", [pytest.param(False),
                                   pytest.param(True, marks=pytest.mark.gpu_heavy)])
def test_cuda_insert_kernels_production_tunables_match_cpu(production, heavy):
    """Rotation, insertion and residuals with 256 threads per block, on enough items for
    several blocks (heavy: a batch's worth, up to the grid-stride limit)."""
    gpu = production
    assert gpu.device.THREADS == 256
    rng = np.random.default_rng([23, heavy])
    freqs = _freqs(box=24 if heavy else 10, r_max=11.0 if heavy else 4.5)
    n_class, size, n_entry = (8, 48, 3000) if heavy else (3, 20, 20)
    grids = random_complex(rng, (n_class, size, size))
    psi = rng.uniform(0, 2 * np.pi, 36 if heavy else 5).astype(np.float32)
    got = gpu.backend.rotate_references(grids, freqs.fx, freqs.fy, psi, 2)
    assert got.size > 2 * gpu.device.THREADS
    _close(got, cpu.rotate_references(grids, freqs.fx, freqs.fy, psi, 2))
    classes, offsets, rows, (psi_e, tx, ty, weight) = random_entries(rng, n_class, n_entry, 40)
    x, ctf, alpha = random_particles(rng, 40, freqs.size)
    assert n_entry * freqs.size > 2 * gpu.device.THREADS
    n_shells = freqs.box // 2 + 1
    args = (grids, classes, rows, psi_e, tx, ty, weight, x, ctf, alpha, freqs.fx, freqs.fy,
            freqs.wf, freqs.shell, 2, freqs.box, n_shells)
    _close(gpu.backend.noise_residuals(*args), cpu.noise_residuals(*args))
    num = random_complex(rng, (n_class, size, size)).astype(np.complex128)
    den = rng.uniform(0, 1, (n_class, size, size))
    want_num, want_den = num.copy(), den.copy()
    inv_sigma2 = rng.uniform(0.5, 2.0, freqs.size).astype(np.float32)
    insert = (offsets, rows, psi_e, tx, ty, weight, x, ctf, alpha, inv_sigma2, freqs.fx,
              freqs.fy, freqs.wf, 2, freqs.box)
    backproject(gpu.backend, num, den, *insert)
    backproject(cpu, want_num, want_den, *insert)
    _close(num, want_num)
    _close(den, want_den)


def test_cuda_tunables_checked_against_device_limits(gpu, monkeypatch):
    """Overrides the device cannot launch raise a ValueError naming the limit."""
    check = gpu.score.check_tunables
    threads = gpu.device.device_limit("MAX_THREADS_PER_BLOCK")
    shared = gpu.device.device_limit("MAX_SHARED_MEMORY_PER_BLOCK")
    assert check(64, 64, 16, 4, 4, 128) == 256
    assert gpu.score.shared_bytes(64, 64, 16) == 34176 <= shared    # ptxas: 34176 bytes smem
    with pytest.raises(ValueError, match=f"threads per block, more than this device's {threads}"):
        check(64, 128, 16, 1, 1, 128)
    with pytest.raises(ValueError, match="MERGE_THREADS"):
        check(64, 64, 16, 4, 4, 2 * threads)
    with pytest.raises(ValueError, match="MERGE_THREADS = 96 must be a power of two"):
        check(64, 64, 16, 4, 4, 96)
    with pytest.raises(ValueError, match=f"shared memory per block, more than this device's {shared}"):
        check(64, 64, 128, 4, 4, 128)
    with pytest.raises(ValueError, match="multiples of MICRO_N"):
        check(64, 64, 16, 3, 4, 128)
    with pytest.raises(ValueError, match="TILE_F must be a positive integer"):
        check(64, 64, 0, 4, 4, 128)
    monkeypatch.setattr(gpu.device, "THREADS", 2 * threads)
    with pytest.raises(ValueError, match="cuda_device.THREADS"):
        check(64, 64, 16, 4, 4, 128)
    monkeypatch.setattr(gpu.device, "THREADS", 256)
    monkeypatch.setattr(gpu.score, "TILE_F", 128)                 # an override, as bench_gpu's
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="shared memory"):
        _one_class(gpu.backend, _score_inputs(rng, 3, 5, 2, 1), 1.0, 1, 1)


def test_cuda_pair_blocks_hold_one_class(gpu):
    start, count, block_class = gpu.score.pair_blocks(np.array([0, 0, 0, 2, 2, 5]), 2)
    np.testing.assert_array_equal(start, [0, 2, 3, 5])
    np.testing.assert_array_equal(count, [2, 1, 2, 1])
    np.testing.assert_array_equal(block_class, [0, 0, 2, 5])
    flags = np.zeros((6, 2), np.uint8)
    flags[[0, 1, 2, 3], 1] = 1
    tiles, pairs = gpu.score.recount_blocks(flags, 4, np.array([0, 0, 0, 2, 2, 5]))
    np.testing.assert_array_equal(tiles, [1, 1])
    np.testing.assert_array_equal(pairs, [[0, 1, 2, -1], [3, -1, -1, -1]])


def test_cuda_references_stay_on_the_card_and_buffers_are_reused(tiny, monkeypatch):
    """The same grids at the same frequencies and angles: rotated once, the rotations not
    uploaded again for scoring, no device or pinned allocation when a batch of the same
    sizes comes again, and the grids read-only while kept (writeable again once dropped)."""
    from numba import cuda

    gpu = tiny
    gpu.resident.forget()
    rng = np.random.default_rng(31)
    freqs = _freqs()
    grids = random_complex(rng, (3, 20, 20))
    psi = rng.uniform(0, 2 * np.pi, 4).astype(np.float32)
    side = 2
    phase = np.exp(1j * rng.uniform(0, 2 * np.pi, (side * side, freqs.size))).astype(np.complex64)

    def batch(seed):
        local = np.random.default_rng(seed)
        arot = gpu.backend.rotate_references(grids, freqs.fx, freqs.fy, psi, 2)
        p_stack, ctf2, _, _, alpha = _score_inputs(local, 9, freqs.size, 4, side)
        candidates = local.random((9, 3)) < 0.7
        return arot, gpu.backend.score_classes(p_stack, ctf2, arot, phase, alpha, 0.5, side,
                                               SIG_LOG, 2, candidates)

    first, _ = batch(1)
    assert not grids.flags.writeable and not first.flags.writeable
    allocations, uploaded = [], []
    to_device = gpu.device.to_device
    with monkeypatch.context() as spies:
        for name in ("device_array", "pinned_array", "to_device"):
            original = getattr(cuda, name)
            spies.setattr(cuda, name, lambda *a, _f=original, _n=name, **k:
                          allocations.append(_n) or _f(*a, **k))
        spies.setattr(gpu.device, "to_device", lambda name, *a: uploaded.append(name)
                      or to_device(name, *a))
        spies.setattr(gpu.device, "upload", None)       # what keeps grids: must not run
        second, _ = batch(1)                  # the same sizes (another batch may grow a buffer)
    assert second is first
    assert allocations == []
    assert {"p_stack", "ctf2", "alpha", "phase", "pair_row"} <= set(uploaded)
    assert not {"arot", "grids"} & set(uploaded)
    _close(first, cpu.rotate_references(grids, freqs.fx, freqs.fy, psi, 2))
    with pytest.raises(ValueError, match="read-only"):
        grids[0, 0, 0] = 0
    gpu.backend.rotate_references(random_complex(rng, (3, 20, 20)), freqs.fx, freqs.fy, psi, 2)
    assert grids.flags.writeable                # dropped: another pass's grids came
    gpu.resident.forget()


def _insert_batches(rng, n_batches, n_class, freqs):
    """``InsertionSums.insert`` arguments of ``n_batches`` batches of random entries (12 of
    5 particles each, class 1 left empty, footprints to the grid's edge)."""
    batches = []
    for _ in range(n_batches):
        _, offsets, rows, poses = random_entries(rng, n_class, 12, 5)
        x, ctf, alpha = random_particles(rng, 5, freqs.size)
        inv_sigma2 = rng.uniform(0.5, 2.0, freqs.size).astype(np.float32)
        batches.append((offsets, rows, *poses, x, ctf, alpha, inv_sigma2, freqs.fx, freqs.fy,
                        freqs.wf, 2, freqs.box))
    return batches


@pytest.mark.parametrize("case", ["tiny", "production", "host"])
def test_cuda_insertion_sums_over_batches_match_cpu(request, monkeypatch, case):
    """Three batches into one ``InsertionSums``, CUDA against CPU: on the card with tiny
    tunables and with the real ones (256 threads: several blocks per batch), read back once
    (sums bytes to the host once, none to the card); and on a card too small for them
    (host sums, one class per chunk, each going there and back every batch)."""
    gpu = request.getfixturevalue("production" if case == "production" else "tiny")
    rng = np.random.default_rng([41, len(case)])
    freqs = FrequencySet.within(10, 5.0)
    n_class, size = 4, 20
    batches = _insert_batches(rng, 3, n_class, freqs)
    assert case != "production" or 12 * freqs.size > 2 * gpu.device.THREADS
    entry_bytes = 60 + 12 * freqs.size
    if case == "host":                  # the sums do not fit; then one class per chunk
        one_class = size * size * 24 + 16 * freqs.size + entry_bytes
        splits = _small_memory(monkeypatch, gpu, one_class)
    before = collections.Counter(gpu.device.TRANSFERS_BY_NAME)
    sums, want = gpu.backend.InsertionSums(n_class, size), cpu.InsertionSums(n_class, size)
    for batch in batches:
        sums.insert(*batch)
        want.insert(*batch)
    num, den = sums.collect()
    want_num, want_den = want.collect()
    assert (num.dtype, den.dtype, num.shape) == (np.complex128, np.float64, want_num.shape)
    _close(num, want_num)
    _close(den, want_den)
    np.testing.assert_array_equal(num[1], 0)                    # the class without entries
    moved = gpu.device.TRANSFERS_BY_NAME - before            # the bytes of these calls
    sums_bytes = n_class * size * size * 24
    if case == "host":
        assert not sums.resident
        assert splits[0] == (n_class, 1)
        chunks = sum(int(np.count_nonzero(np.diff(batch[0]))) for batch in batches)
        assert chunks >= 6                      # classes with entries, summed over batches
        assert moved[("to_device", "bp_num")] == moved[("to_host", "bp_num")] == (
            chunks * size * size * 16)
    else:
        assert sums.resident
        assert moved[("to_host", "sums")] == sums_bytes
        assert not {key for key in moved if key[1] in ("bp_num", "bp_den")}


def test_cuda_pass_sums_go_to_the_host_once(tiny, monkeypatch, tmp_path):
    """``score_rows`` over three chunks on both backends: the CUDA statistics match the
    CPU's, and the class sums crossed the bus once, to the host (before, every chunk sent
    zeros to the card and brought them back: 3× their bytes each way; this fails then)."""
    from class2d.em import online
    from class2d.em.params import ClassifyParams
    from class2d.em.passes import make_context, score_rows
    from class2d.prepare import prepare_stack
    from class2d.simulate import simulate, write_dataset

    for name, value in dict(TILE_N=8, TILE_Q=8, TILE_F=32).items():
        monkeypatch.setattr(tiny.score, name, value)
    data = simulate(48, box=16, apix=8.0, snr=0.7, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    stack = prepare_stack(write_dataset(data, tmp_path / "data"), tmp_path / "prep")
    params = ClassifyParams.from_config(dict(n_classes=2, max_res_A=32.0, zeropad=4,
                                             batch_size=16, psi_step_deg=45.0, max_poses=2,
                                             shift_range_A=8.0, local_shift_steps=1), 1)
    state = online.init_classes(stack, params, cpu)
    ctx = make_context(stack, params, params.align_res_A, full=True)
    rows = np.arange(stack.n)
    want, want_out = score_rows(stack, state, params, cpu, ctx, rows, 1.0, hard=False)
    before = dict(tiny.device.TRANSFERS)
    named = collections.Counter(tiny.device.TRANSFERS_BY_NAME)
    got, out = score_rows(stack, state, params, tiny.backend, ctx, rows, 1.0, hard=False)
    moved = {key: tiny.device.TRANSFERS[key] - before[key] for key in before}
    sums_bytes = want.num.nbytes + want.den.nbytes
    assert -(-rows.size // params.estep_batch(stack.box)) == 3          # chunks
    assert moved["to_host"] < 2 * sums_bytes and moved["to_device"] < sums_bytes, (
        moved, sums_bytes)
    assert (tiny.device.TRANSFERS_BY_NAME - named)["to_host", "sums"] == sums_bytes
    np.testing.assert_array_equal(out["best_class"], want_out["best_class"])
    for field in ("num", "den", "counts", "noise_sum"):
        _close(getattr(got, field), getattr(want, field))
    np.testing.assert_array_equal(got.noise_count, want.noise_count)
