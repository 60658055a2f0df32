"""CUDA kernels (Numba CUDA): the GPU twin of ``class2d.kernels.cpu``.

    >>> from class2d.kernels import get_backend
    >>> backend = get_backend("cuda")                     # this module; RuntimeError without a GPU
    >>> arot = backend.rotate_references(grids, fx, fy, psi, pad)         # (K, R, F) complex64
    >>> top_s, top_i, lse, nsig, refine, ratio = backend.score_classes(p_stack, ctf2, arot,
    ...                                                                 phase, alpha, 1.0, side,
    ...                                                                 6.9, 8)

Every public function has the signature and the semantics of its CPU twin (shapes and
meanings are documented once, in ``cpu.py``): inputs are host NumPy arrays, outputs host
arrays, and ``InsertionSums`` keeps a pass's class sums (on the card while they fit, read
back once by ``collect``), so the E- and M-step code swaps backends freely.  Device memory
is sized from the inputs; where a call would not fit in the free device memory it runs in
chunks of pairs, entries or classes.  Buffers are
pooled and reused across calls, copies are pinned and asynchronous on one stream
(``cuda_device``); the class grids and their rotations stay on the card while a pass uses
the same grids object (``cuda_resident``, which makes them read-only meanwhile).

Where the work happens:
- ``cuda_score``: the fused, tiled scoring kernel and its reduction over poses;
  tunables TILE_N, TILE_Q, TILE_F, MICRO_N, MICRO_Q, MERGE_THREADS;
- ``cuda_insert``: rotation of references, back-insertion (float64 atomics) into the
  pass's class sums, residuals;
- ``cuda_resident``: the grids and rotations kept on the card between calls;
- ``cuda_device``: scalar maths of ``scalar.py`` compiled for the device, THREADS,
  MAX_BLOCKS, MEMORY_FRACTION; the buffer pool, the stream, the transfer counters;
- ``cuda_ptx``: compiles every kernel for a GPU architecture without a GPU (the simulator
  cannot catch CUDA compile errors): ``python -m class2d.kernels.cuda_ptx 9.0``.
"""

from __future__ import annotations

from class2d.kernels import cuda_insert, cuda_score


def rotate_references(grids, fx, fy, psi, pad):
    """Every class at every rotation: (K, R, F) complex64, out[k, r, f] = A_k(R(−ψ_r) f).

    grids: (K, G, G) complex64;  fx, fy: (F,) float32 Fourier px;  psi: (R,) rad;  pad: G/d
    """
    return cuda_insert.rotate_references(grids, fx, fy, psi, pad)


def score_classes(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log, n_top,
                  candidates=None):
    """Score every class at every pose q = r·side² + t and reduce over poses per particle.

    p_stack: (N, 2F) float32 [Re P | Im P];  ctf2: (N, F) float32;  arot: (K, R, F) complex64
    phase: (side², F) complex64;  alpha: (N,) float32;  inv_temp: 1/τ
    candidates: (N, K) bool or None (all): class k only for the particles where it is true
    returns (top_s (N, K, P) float32, top_i (N, K, P) int64, lse (N, K) float32,
    nsig (N, K) int32, refine (N, K, 3) float32, ratio (N, K) float32), P = n_top.
    All classes in one launch per kernel, over the (class, candidate particle) pairs; an
    ``arot`` that ``rotate_references`` returned is already on the card.
    """
    return cuda_score.score_classes(p_stack, ctf2, arot, phase, alpha, inv_temp, side, sig_log,
                                    n_top, candidates)


InsertionSums = cuda_insert.InsertionSums


def noise_residuals(grids, classes, rows, psi, tx, ty, weight,
                    x, ctf, alpha, fx, fy, wf, shell, pad, box, n_shells):
    """(E, S) float64: per entry and resolution shell, Σ w·|X − α·CTF·S_t R_ψ A|².

    grids: (K, G, G) complex64;  classes, rows, psi, tx, ty, weight: (E,);  shell: (F,) int
    """
    return cuda_insert.noise_residuals(grids, classes, rows, psi, tx, ty, weight,
                                       x, ctf, alpha, fx, fy, wf, shell, pad, box, n_shells)
