#!/usr/bin/env bash
# GPU check (under 8 minutes on one H100/H200): builds helix from source with CUDA, runs the GPU tests,
# then benchmarks the CUDA kernels against the copy bandwidth and bf16 GEMM rate measured in the same run.
# Uses the machine's Python (torch, nanobind, NCCL, cuBLAS preinstalled; no network). MPI is optional:
# without mpicc the build uses the no-MPI stub. Results: a table printed last, JSON in $OUT if set.
#   HELIX_CUDA_ARCH   CUDA architectures to build (default 90a; 100a on Blackwell)
#   HELIX_GPU_QUICK=1 shorter benchmark (contexts 8K and 32K)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-$(command -v python3)}
BUILD=${HELIX_GPU_BUILD_DIR:-build-gpu}
OUT=${OUT:-}
log() { printf '[gpu_check %(%H:%M:%S)T] %s\n' -1 "$*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$NVCC" ] || { echo "nvcc not found" >&2; exit 1; }
"$NVCC" --version | tail -1

# Python packages the tests need; a wheel folder carried along (.whl/) fills gaps offline.
for mod in numpy ml_dtypes pytest nanobind; do
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    if [ -d .whl ]; then
      log "installing $mod from .whl/"
      "$PY" -m pip install --no-index --find-links .whl "$mod" >/dev/null
    else
      echo "missing Python module $mod (carry a wheel in .whl/)" >&2
      exit 1
    fi
  fi
done

cmake_args=(-DPython_EXECUTABLE="$PY" -DHELIX_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${HELIX_CUDA_ARCH:-90a}"
            -DCMAKE_CUDA_COMPILER="$NVCC")
command -v mpicc >/dev/null || [ -x "$(dirname "$PY")/mpicc" ] || cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
[ -f /usr/include/gtest/gtest.h ] && cmake_args+=(-DHELIX_BUILD_TESTS=ON) || cmake_args+=(-DHELIX_BUILD_TESTS=OFF)
command -v ninja >/dev/null && cmake_args+=(-G Ninja)

log "configure ($BUILD)"
cmake -S . -B "$BUILD" "${cmake_args[@]}" | sed -n '/feature summary/,$p'
log "build"
timeout 300 cmake --build "$BUILD" -j "$(nproc)" >"$BUILD/gpu-build.log" 2>&1 || { tail -50 "$BUILD/gpu-build.log"; exit 1; }
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export HELIX_EXPECT_CUDA=1

status=0
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  log "C++ tests (ctest -R cuda)"
  timeout 120 ctest --test-dir "$BUILD" -R Cuda --output-on-failure || status=1
fi
log "GPU tests (pytest tests/test_cuda_ops.py)"
junit=()
[ -n "$OUT" ] && junit=(--junitxml "$OUT/test_cuda_ops.xml")
timeout 240 "$PY" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -o addopts="" "${junit[@]}" -rs || status=1

log "benchmarks"
bench_args=()
[ "${HELIX_GPU_QUICK:-0}" = 1 ] && bench_args+=(--quick)
timeout 180 "$PY" -m helix.bench.cuda_ops "${bench_args[@]}" || status=1
log "done (status $status)"
exit $status
