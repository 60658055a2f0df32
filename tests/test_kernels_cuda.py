"""CUDA kernels against their CPU twins on fresh random inputs; backend selection.

The kernels run on a GPU when numba finds one, otherwise on Numba's CUDA simulator.  The
``gpu`` fixture switches the simulator on (NUMBA_ENABLE_CUDASIM=1 before ``numba.cuda`` is
imported) for this module only and puts the previous ``numba.cuda`` back afterwards, so that
``get_backend("auto")`` in other test modules never picks the simulator.  The tunables are
patched to tiny values, so that block edges, multi-block grids, grid-stride loops and
chunking all run on small inputs.  Set NUMBA_ENABLE_CUDASIM=1 in the environment to force
the simulator on a machine with a GPU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from class2d.em.grids import FrequencySet
from class2d.kernels import cpu
from kernel_inputs import backproject_inputs, random_complex, random_entries, random_particles

SIG_LOG = np.float32(np.log(1000.0))
#: the brief's tolerance: relative error in float32
RTOL = 1e-4


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
        yield types.SimpleNamespace(backend=backend, device=cuda_device, insert=cuda_insert,
                                    score=cuda_score)
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
        yield modules


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

    def spy(flags, tile_n):
        recounted.append(int(flags.sum()))
        return original(flags, tile_n)

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
        splits = _small_memory(monkeypatch, tiny, 20 * 20 * 8 + 5 * freqs.size * 8 + 1000)
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
    if chunked:                                     # one class, then two entries per chunk
        splits = _small_memory(monkeypatch, tiny,
                               20 * 20 * 24 + 16 * freqs.size + entry_bytes, 2 * entry_bytes)
    tiny.backend.backproject(num, den, *args)
    cpu.backproject(want_num, want_den, *args)
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


def test_get_backend_cuda_raises_and_auto_falls_back_without_gpu():
    """A real process where numba finds no GPU (NUMBA_DISABLE_CUDA=1 hides any there is)."""
    script = ("import class2d.kernels as k\n"
              "assert k.get_backend('auto').__name__ == 'class2d.kernels.cpu'\n"
              "try:\n    k.get_backend('cuda')\n"
              "except RuntimeError as err:\n    print('RuntimeError:', err)\n")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", NUMBA_DISABLE_CUDA="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RuntimeError: backend: cuda was asked for" in done.stdout


@pytest.mark.parametrize("failure", ["no device", "driver error"])
def test_get_backend_without_cuda_device(monkeypatch, caplog, failure):
    from numba import cuda

    from class2d.kernels import get_backend

    def is_available():
        if failure == "driver error":
            raise OSError("libcuda.so: cannot open shared object file")
        return False

    monkeypatch.setattr(cuda, "is_available", is_available)
    with pytest.raises(RuntimeError, match="cuda was asked for"):
        get_backend("cuda")
    with caplog.at_level("INFO", logger="class2d.kernels"):
        assert get_backend("auto") is cpu
    assert "using the CPU because" in caplog.text


def test_cuda_kernels_compile_for_a_gpu_target():
    """Numba's CUDA compiler, not the simulator, accepts every kernel (sm_90: H100/H200).

    The simulator runs kernels as Python and cannot see CUDA typing or lowering errors; this
    needs libNVVM from a CUDA toolkit but no GPU, and skips (saying why) without it.
    """
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    done = subprocess.run([sys.executable, "-m", "class2d.kernels.cuda_ptx", "9.0"], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode == 3:                        # cuda_ptx.CANNOT_RUN
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "partials" in done.stdout and "backproject" in done.stdout


@pytest.mark.slow
def test_cuda_and_cpu_backends_classify_alike(gpu, tmp_path):
    """A whole small classification on both backends: the same classes (Rand index ≥ 0.99)."""
    from class2d.em import online
    from class2d.metrics import adjusted_rand
    from class2d.em.params import ClassifyParams
    from class2d.prepare import prepare_stack
    from class2d.simulate import simulate, write_dataset

    data = simulate(24, box=16, apix=8.0, snr=2.0, n_objects=2, junk_fraction=0.0,
                    duplicate_fraction=0.0, seed=4)
    stack = prepare_stack(write_dataset(data, tmp_path / "data"), tmp_path / "prep")
    params = ClassifyParams(n_classes=2, max_res_A=24.0, online_iterations=1,
                            batch_per_class=12, psi_step_deg=45.0, shift_range_A=8.0,
                            local_shift_steps=1, seed=1)
    labels = []
    for backend in (cpu, gpu.backend):
        state = online.init_classes(stack, params, backend)
        for _ in range(params.online_iterations):
            state = online.online_iteration(stack, state, params, backend)
        part = online.full_pass_shard(stack, state, params, backend, 0, last=True)
        _, out = online.gather_full_pass(stack, state, [part], params, backend)
        labels.append(out["best_class"])
    assert adjusted_rand(labels[0], labels[1]) >= 0.99
