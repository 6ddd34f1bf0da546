#!/usr/bin/env bash
# Runs every CPU benchmark suite and writes bench-results/ (JSON, PNG, logs). Re-run on a quiet machine:
#   bash benchmarks/run_all.sh [THREADS]     (THREADS: the 2-thread pass of attention; default 2)
# The peers (vLLM CPU, llama.cpp) run where scripts/peers.sh installed them ($HELIX_PEERS_DIR), else are skipped.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset so that NumPy's OpenBLAS picks its kernel for this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
T2=${1:-2}
PY=".venv/bin/python"
run() { echo "== $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"; env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=python "$PY" -m helix bench "$@"; }
mkdir -p bench-results
run attention --threads 1 --out bench-results/attention-1t.json --png bench-results/attention-1t.png | tee bench-results/attention-1t.log
run attention-accuracy --out bench-results/attention_accuracy.json | tee bench-results/attention_accuracy.log
run ops --threads 1 --out bench-results/ops-1t.json --png bench-results/ops-1t.png | tee bench-results/ops-1t.log
run helix | tee bench-results/helix_step.log
run decode | tee bench-results/decode.log
run prefill | tee bench-results/prefill.log
run peer --threads 1,"$T2" | tee bench-results/peer.log
run serve --out bench-results/serve | tee bench-results/serve.log
run attention --threads "$T2" --out bench-results/attention-${T2}t.json --png bench-results/attention-${T2}t.png | tee bench-results/attention-${T2}t.log
