#!/usr/bin/env bash
# The whole test suite: sets everything up, then runs the C++ tests (ctest) and the Python tests
# (pytest, which also launches the MPI tests under mpiexec), then the sanitizer stage: a second build
# with AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/ whose CUDA backend is the SIMT
# emulator (cuda/ compiled as C++ and run on the CPU, docs/cuda.md: ASan then also sees out-of-bounds
# device accesses), its C++ tests with LeakSanitizer on, and the Python tests that drive the runtime in
# one process against the sanitized module, the GPU tests included (docs/reliability.md).
# HELIX_SANITIZE_TESTS=0 skips that stage. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
echo "== lint (ruff check, ruff format --check, clang-format --dry-run) =="
ruff check python tests cuda/emulator
ruff format --check python tests cuda/emulator
find cpp cuda python/src tests \( -name '*.cpp' -o -name '*.hpp' -o -name '*.cu' -o -name '*.cuh' \
  -o -name '*.h' -o -name '*.inc' \) -print0 | xargs -0 clang-format --dry-run --Werror
echo "== C++ tests (ctest) =="
ctest --test-dir build --output-on-failure -j 2 --timeout 300
echo "== Python and MPI tests (pytest) =="
python -m pytest tests -q -p no:cacheprovider "$@"

[ "${HELIX_SANITIZE_TESTS:-1}" = 0 ] && exit 0
echo "== sanitizers: ASan + UBSan build with the emulated CUDA backend (build-asan/) =="
if [ ! -f build-asan/build.ninja ] || ! grep -q "^HELIX_ENABLE_CUDA:STRING=EMULATOR$" build-asan/CMakeCache.txt; then
  cmake -S . -B build-asan -G Ninja -DPython_EXECUTABLE="$ROOT/.venv/bin/python" -DHELIX_BUILD_TESTS=ON \
    -DHELIX_SANITIZE=ON -DHELIX_ENABLE_CUDA=EMULATOR -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
if ! cmake --build build-asan -- -j "${HELIX_BUILD_JOBS:-$(nproc)}" >build-asan/last-build.log 2>&1; then
  cat build-asan/last-build.log >&2
  echo "[test] sanitizer build failed (log: build-asan/last-build.log)" >&2
  exit 1
fi
# -fno-sanitize-recover: the first UBSan report aborts, like every ASan report, so a report fails the run.
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
echo "== sanitizers: C++ tests (ctest; ASan, UBSan, LeakSanitizer) =="
ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:check_initialization_order=1 \
  ctest --test-dir build-asan --output-on-failure -j 2 --timeout 600
echo "== sanitizers: Python runtime tests against the sanitized module (ASan, UBSan; no leak check) =="
# CPython is not built with ASan: libasan must be loaded first (LD_PRELOAD), and libstdc++ with it so
# that ASan's __cxa_throw interceptor finds the real one (C++ exceptions cross into Python). CPython's
# own allocations are never freed at exit, so LeakSanitizer is off here (it is on for ctest above).
# build-asan/python/helix/__init__.py loads the sanitized _core and every other module from python/.
san_tests=(tests/test_kv_cache.py tests/test_layers.py tests/test_merge_states.py tests/test_mla_attention.py
  tests/test_paged_mla_attention.py tests/test_moe.py tests/test_rope.py tests/test_comm_self.py
  tests/test_faults.py tests/test_soak_local.py tests/test_disagg_kv.py
  tests/test_cuda_ops.py tests/test_op_twins.py tests/test_cuda_engine.py tests/test_simt_emulator.py
  tests/test_mtp_engine.py)
for f in tests/test_engine*.py tests/test_llm*.py tests/test_generate*.py; do [ -f "$f" ] && san_tests+=("$f"); done
san_env=(env LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
  ASAN_OPTIONS=detect_leaks=0 HELIX_SANITIZED=1 OMP_NUM_THREADS=2 HELIX_EXPECT_CUDA=1
  PYTHONPATH="$ROOT/build-asan/python")
core=$("${san_env[@]}" python -c "import helix._core as c; print(c.__file__)")
case "$core" in "$ROOT/build-asan/"*) ;; *) echo "[test] sanitized run imported $core" >&2; exit 1 ;; esac
log=build-asan/last-pytest.log
"${san_env[@]}" python -m pytest "${san_tests[@]}" -q -p no:cacheprovider -m "not mpi and not oracle and not slow" 2>&1 | tee "$log"
echo "== sanitizers: the emulated CUDA engine tests again with an H100's 132 SMs (HELIX_SIMT_SMS) =="
# The split-KV plan sizes its splits from the SM count (the default 4 never splits a prompt chunk; 132
# does). tests/test_simt_emulator.py drives the engine to the plan's 256 splits with a long context.
"${san_env[@]}" HELIX_SIMT_SMS=132 python -m pytest tests/test_cuda_engine.py -q -p no:cacheprovider \
  -m "not mpi and not oracle and not slow" 2>&1 | tee -a "$log"
echo "== sanitizers: the emulated CUDA engine and fake NCCL under mpiexec (cp2, tp2cp2) =="
# A sanitizer report in a rank aborts it, so the job (and the test) fails.
"${san_env[@]}" python -m pytest tests/test_mpi_cuda_emulator.py -q -p no:cacheprovider 2>&1 | tee -a "$log"
if grep -q -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$log"; then
  echo "[test] sanitizer reports in $log" >&2
  exit 1
fi
echo "== sanitizers: no reports =="
