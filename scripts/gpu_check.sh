#!/usr/bin/env bash
# GPU check (under 8 minutes on one H100/H200): builds helix from source with CUDA, runs the GPU tests
# (kernels vs CPU twins; the CUDA engine vs the CPU engine on the tiny model; the kernels' tests again under
# compute-sanitizer memcheck when the budget allows), the tiny-model greedy check
# through `helix generate --device cpu|cuda` (and with two CP ranks sharing the GPU when MPI is there),
# then benchmarks the CUDA kernels against the copy bandwidth and bf16 GEMM rate measured in the same run,
# and a DeepSeek-V3-shaped layer decode step (32K context).
# Uses the machine's Python (torch, nanobind, NCCL, cuBLAS preinstalled; no network). MPI is optional:
# without mpicc (or a carried MPICH wheel in .whl/, see scripts/gpu_wheels.sh) the build uses the no-MPI
# stub. Results: a table printed last, JSON in $OUT if set.
#   HELIX_CUDA_ARCH   CUDA architectures to build (default 90a; 100a on Blackwell)
#   HELIX_GPU_QUICK=1 shorter benchmark (contexts 8K and 32K)
#   HELIX_GPU_BUDGET_S  wall-clock budget of the whole script in seconds (default 450): every stage's
#                       timeout is cut to what is left, so a hang never eats the benchmark table
set -euo pipefail
DEADLINE=$((SECONDS + ${HELIX_GPU_BUDGET_S:-450}))
# limit WANT [KEEP]: WANT seconds, or what is left of the budget less KEEP seconds for later stages (default
# 30, the final table); at least 10.
limit() { local left=$((DEADLINE - SECONDS - ${2:-30})); ((left < 10)) && left=10; echo $(($1 < left ? $1 : left)); }
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

# MPI for the multi-rank stage: without an mpicc here, a carried MPICH wheel (scripts/gpu_wheels.sh) is
# unpacked and put first on PATH; the machine's mpi4py then loads its libmpi (MPICH ABI).
if ! command -v mpicc >/dev/null && [ ! -x "$(dirname "$PY")/mpicc" ] && compgen -G ".whl/mpich-*.whl" >/dev/null; then
  rm -rf /tmp/helix-mpich
  "$PY" -m zipfile -e "$(compgen -G ".whl/mpich-*.whl" | head -1)" /tmp/helix-mpich
  prefix=$(compgen -G "/tmp/helix-mpich/mpich-*.data/data" | head -1)
  chmod +x "$prefix"/bin/*  # zipfile drops the mode bits
  export PATH="$prefix/bin:$PATH" LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "MPI: MPICH unpacked from .whl/ into $prefix"
fi

cmake_args=(-DPython_EXECUTABLE="$PY" -DHELIX_ENABLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${HELIX_CUDA_ARCH:-90a}"
            -DCMAKE_CUDA_COMPILER="$NVCC")
command -v mpicc >/dev/null || [ -x "$(dirname "$PY")/mpicc" ] || cmake_args+=(-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
[ -f /usr/include/gtest/gtest.h ] && cmake_args+=(-DHELIX_BUILD_TESTS=ON) || cmake_args+=(-DHELIX_BUILD_TESTS=OFF)
command -v ninja >/dev/null && cmake_args+=(-G Ninja)

log "configure ($BUILD)"
cmake -S . -B "$BUILD" "${cmake_args[@]}" | sed -n '/feature summary/,$p'
log "build"
timeout "$(limit 300)" cmake --build "$BUILD" -j "$(nproc)" >"$BUILD/gpu-build.log" 2>&1 || { tail -50 "$BUILD/gpu-build.log"; exit 1; }
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
export HELIX_EXPECT_CUDA=1
# This script's numbers and verdicts are about real hardware: refuse a SIMT-emulator module.
if "$PY" -c "import sys; from helix import _core; sys.exit(1 if _core.cuda.emulated() else 0)"; then :; else
  echo "gpu_check.sh: this build is the SIMT emulator (cuda/ on the CPU); it needs a real GPU build" >&2
  exit 1
fi

status=0
if [ -f "$BUILD/CTestTestfile.cmake" ]; then
  log "C++ tests (ctest -R cuda)"
  timeout "$(limit 120 200)" ctest --test-dir "$BUILD" -R Cuda --output-on-failure || status=1
fi
# The kernels against float64 and against their CPU twins (one contract per op, helix_attention included),
# the CUDA engine against the CPU engine.
gpu_tests=(tests/test_cuda_ops.py tests/test_op_twins.py tests/test_cuda_engine.py)
log "GPU tests (pytest ${gpu_tests[*]})"
junit=()
[ -n "$OUT" ] && junit=(--junitxml "$OUT/test_cuda.xml")
timeout "$(limit 240 180)" "$PY" -m pytest "${gpu_tests[@]}" -q -p no:cacheprovider -o addopts="" \
  "${junit[@]}" -rs || status=1

# The kernels' own tests under compute-sanitizer memcheck (out-of-bounds and misaligned device accesses on
# the real hardware), when the toolkit has it and the budget allows; left out: the long module shapes and
# the deliberate out-of-memory (a failing cudaMalloc is an API error to memcheck). Only a memcheck report
# or a test failure fails the check, a time cut does not.
SANITIZER=$(command -v compute-sanitizer || echo "$(dirname "$NVCC")/compute-sanitizer")
if [ -x "$SANITIZER" ] && ((DEADLINE - SECONDS > 330)); then
  log "compute-sanitizer memcheck (tests/test_cuda_ops.py, short shapes)"
  rc=0
  timeout "$(limit 90 240)" "$SANITIZER" --tool memcheck --error-exitcode 86 --print-limit 20 \
    "$PY" -m pytest tests/test_cuda_ops.py -q -p no:cacheprovider -o addopts="" -k "not sharded and not allocation_beyond" -x || rc=$?
  case $rc in
    0) log "compute-sanitizer: no errors" ;;
    124) log "compute-sanitizer: cut short by the time budget (not a failure)" ;;
    86) echo "compute-sanitizer found device memory errors (above)" >&2; status=1 ;;
    *) echo "tests failed under compute-sanitizer (rc $rc)" >&2; status=1 ;;
  esac
else
  log "skipped: compute-sanitizer (not found, or not enough of the budget left)"
fi

# The tiny model through the CLI: the same greedy tokens (float32) on the CPU, on the GPU, and with two CP
# ranks sharing the GPU under mpiexec (--cuda-comm host: MPI through host memory; NCCL refuses two ranks
# on one device) when this build has MPI and an mpiexec is at hand.
same_tokens() {  # same_tokens CPU_JSON OTHER_JSON LABEL
  "$PY" - "$@" <<'PYEOF'
import json, sys
cpu, other = (json.load(open(p)) for p in sys.argv[1:3])
same = [a["token_ids"] == b["token_ids"] for a, b in zip(cpu["outputs"], other["outputs"])]
print(f"{sys.argv[3]}: greedy tokens equal to the CPU's per prompt: {same}; {other['tokens_per_s']:.1f} tok/s "
      f"(cpu {cpu['tokens_per_s']:.1f} tok/s)")
sys.exit(0 if all(same) and len(same) == 2 else 1)
PYEOF
}
log "tiny model: helix generate --device cpu vs --device cuda (greedy, float32)"
tiny=$(mktemp -d)
greedy=(--model "$tiny/m" --prompt-token-ids 2,3,4,5,6,7,8,9 --prompt-token-ids 0,5,17,300 --max-new-tokens 24
        --ignore-eos --tokens-per-block 4 --json)
if timeout "$(limit 60)" "$PY" -m helix make-tiny-model "$tiny/m" >/dev/null &&
   timeout "$(limit 60)" "$PY" -m helix generate "${greedy[@]}" --device cpu | tail -1 >"$tiny/cpu.json" &&
   timeout "$(limit 60)" "$PY" -m helix generate "${greedy[@]}" --device cuda | tail -1 >"$tiny/cuda.json"; then
  same_tokens "$tiny/cpu.json" "$tiny/cuda.json" "cuda, 1 rank" || status=1
  MPIEXEC=$(command -v mpiexec || echo "$(dirname "$PY")/mpiexec")
  if [ -x "$MPIEXEC" ] && grep -q "^MPI_C_LIB_NAMES:STRING=." "$BUILD/CMakeCache.txt"; then
    log "tiny model: mpiexec -n 2 helix generate --device cuda --cuda-comm host --cp 2 (one GPU)"
    if timeout "$(limit 90)" "$MPIEXEC" -n 2 "$PY" -m helix generate "${greedy[@]}" --device cuda \
         --cuda-comm host --cp 2 | tail -1 >"$tiny/cuda_cp2.json"; then
      same_tokens "$tiny/cpu.json" "$tiny/cuda_cp2.json" "cuda, cp=2 on one GPU" || status=1
    else
      echo "mpiexec -n 2 --device cuda --cuda-comm host failed" >&2
      status=1
    fi
  else
    log "skipped: two CP ranks on one GPU (no mpiexec, or this build has no MPI)"
  fi
else
  echo "tiny-model CLI check failed to run" >&2
  status=1
fi
rm -rf "$tiny"

log "benchmarks"
bench_dir=${OUT:-$(mktemp -d)}
bench_args=()
[ "${HELIX_GPU_QUICK:-0}" = 1 ] && bench_args+=(--quick)
timeout "$(limit 180 90)" "$PY" -m helix bench cuda_ops "${bench_args[@]}" --json "$bench_dir/cuda_ops.json" >/dev/null || status=1
layer_args=(--context 32768 --batch 1 8 --steps 20)
[ "${HELIX_GPU_QUICK:-0}" = 1 ] && layer_args=(--context 32768 --batch 1 --steps 10)
timeout "$(limit 150)" "$PY" -m helix bench cuda_layer "${layer_args[@]}" --json "$bench_dir/cuda_layer.json" >/dev/null ||
  status=1
log "done (status $status)"
# The short table, last.
"$PY" - "$bench_dir" <<'PYEOF' || status=1
import json, os, sys
from helix.bench import cuda_layer, cuda_ops
for name, mod in (("cuda_ops.json", cuda_ops), ("cuda_layer.json", cuda_layer)):
    path = os.path.join(sys.argv[1], name)
    print(mod.format_table(json.load(open(path))) if os.path.exists(path) else f"({name}: not produced)")
PYEOF
exit $status
