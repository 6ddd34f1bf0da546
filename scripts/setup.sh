#!/usr/bin/env bash
# Sets up everything the project needs, idempotently: the virtual environment .venv with pinned
# dependencies (requirements/*.txt), GoogleTest (Debian's libgtest-dev), and the compiled runtime
# built into build/ (the module lands in python/helix/). Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
quiet() {  # run quietly, show the log on failure
  local out
  out=$(mktemp)
  if ! "$@" >"$out" 2>&1; then cat "$out"; rm -f "$out"; return 1; fi
  rm -f "$out"
}

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

reqs=(requirements/build.txt requirements/runtime.txt requirements/test.txt requirements/disagg.txt)
NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)
[ -n "$NVCC" ] && reqs+=(requirements/cuda.txt)
stamp=".venv/.helix-requirements-$(cat "${reqs[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing pinned Python dependencies (${reqs[*]})"
  args=()
  for r in "${reqs[@]}"; do args+=(-r "$r"); done
  quiet .venv/bin/python -m pip install --disable-pip-version-check "${args[@]}"
  rm -f .venv/.helix-requirements-*
  touch "$stamp"
fi

if [ ! -f /usr/include/gtest/gtest.h ]; then
  log "installing GoogleTest (libgtest-dev)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  quiet $SUDO apt-get update
  quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgtest-dev
fi

export PATH="$ROOT/.venv/bin:$PATH"
if [ ! -f build/build.ninja ]; then
  log "configuring build/"
  cmake -S . -B build -G Ninja -DPython_EXECUTABLE="$ROOT/.venv/bin/python" -DHELIX_BUILD_TESTS=ON \
    ${HELIX_CMAKE_ARGS:-} | sed -n '/feature summary/,$p'
fi
log "building the runtime"
if ! cmake --build build -- -j "${HELIX_BUILD_JOBS:-$(nproc)}" >build/last-build.log 2>&1; then
  cat build/last-build.log >&2
  echo "[setup] build failed (log: build/last-build.log)" >&2
  exit 1
fi
export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
