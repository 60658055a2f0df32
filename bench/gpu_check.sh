#!/usr/bin/env bash
# GPU check of the CUDA backend (issue 16): the kernel tests on the real card, then the GPU
# benchmark at two sizes.  Run from the repository root on a machine with an NVIDIA GPU:
#
#     OUT=/some/dir [WHEELS=/dir/of/wheels] bash bench/gpu_check.sh
#
# Writes under $OUT: env.log, pytest.log, bench_small.log, bench_large.log, summary.log.
# Python packages imported: numpy, numba (+ numba-cuda), scipy, pandas, pytest (tests),
# and, through class2d, mrcfile, starfile, threadpoolctl, PyYAML (prepare) and matplotlib
# (the gallery classify_all writes); missing ones are installed from $WHEELS when given
# (pip, no index).
# Time: each step runs under `timeout` (pytest 110 s, small 80 s, large LARGE_S, 160 s
# unless set: ≤ 6 min in all); a step that runs out leaves its partial log (output is
# unbuffered, one line per iteration).  Sizes can be changed with SMALL / LARGE (arguments
# of bench/bench_gpu.py).
set -u
OUT=${OUT:?set OUT to the folder for the logs}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
unset NUMBA_ENABLE_CUDASIM
SMALL=${SMALL:---particles 20000 --box 64 --classes 50 --base 2000 --check-particles 800}
LARGE=${LARGE:---particles 100000 --box 64 --classes 200 --online-iterations 10 --skip-check --kernel-particles 2048}
LARGE_S=${LARGE_S:-160}
WORK=${TMPDIR:-/tmp}

missing() {     # pip names of the packages that cannot be imported
    python3 - <<'EOF'
import importlib.util
names = {"numpy": "numpy", "numba": "numba", "scipy": "scipy", "pandas": "pandas",
         "pytest": "pytest", "mrcfile": "mrcfile", "starfile": "starfile",
         "threadpoolctl": "threadpoolctl", "yaml": "PyYAML", "matplotlib": "matplotlib"}
print(" ".join(pip for module, pip in names.items() if importlib.util.find_spec(module) is None))
EOF
}

{
    date -u
    nvidia-smi || echo "nvidia-smi: not found"
    python3 -c "import sys, numpy, numba; print(sys.version); print('numpy', numpy.__version__, 'numba', numba.__version__)"
    python3 -c "import importlib.metadata as m; print('numba-cuda', m.version('numba-cuda'))" 2>&1
    gone=$(missing)
    if [ -n "$gone" ] && [ -n "${WHEELS:-}" ]; then
        echo "installing from $WHEELS: $gone"
        python3 -m pip install --no-index --find-links "$WHEELS" $gone
        gone=$(missing)
    fi
    echo "missing Python packages: ${gone:-none}"
    python3 -c "from numba import cuda; print('cuda available:', cuda.is_available()); cuda.detect()"
} > "$OUT/env.log" 2>&1

step() {        # step NAME SECONDS COMMAND...: run, log, record the exit status
    local name=$1 limit=$2
    shift 2
    local tic=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - tic)) s (limit $limit s)" >> "$OUT/summary.log"
}

: > "$OUT/summary.log"
step pytest 110 env CLASS2D_REQUIRE_GPU=1 python3 -m pytest -q -rs tests/test_kernels_cuda.py
step bench_small 80 python3 bench/bench_gpu.py $SMALL --workdir "$WORK"
step bench_large "$LARGE_S" python3 bench/bench_gpu.py $LARGE --workdir "$WORK"
cat "$OUT/summary.log"
tail -n 3 "$OUT/pytest.log"
