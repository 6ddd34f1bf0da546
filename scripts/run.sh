#!/usr/bin/env bash
# The main job on the embedded default, after setting everything up:
#   1. the attention demo: DeepSeek-V3-shaped attention over a 32K context, sharded, merged, checked;
#   2. the embedded tiny DeepSeek-V3-architecture model, decoded with Helix on 2 MPI ranks (cp = 2).
# Extra arguments go to `helix generate` (e.g. --max-new-tokens 64 --json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export MPIR_CVAR_ENABLE_HEAVY_YIELD=${MPIR_CVAR_ENABLE_HEAVY_YIELD:-1}  # yield the core while waiting
NP=${HELIX_NP:-2}

echo "== helix demo: sharded vs unsharded attention =="
timeout 300 python -m helix demo

MODEL=build/tiny-model
[ -f "$MODEL/config.json" ] || python -m helix make-tiny-model "$MODEL" --seed 0
echo "== helix generate: $MODEL on $NP MPI ranks (cp=$NP) =="
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout 600 mpiexec -n "$NP" python -m helix generate --model "$MODEL" --cp "$NP" --tokens-per-block 8 \
  --prompt-token-ids 1,17,42,7,99,3 --prompt-token-ids 5,6,7 --max-new-tokens 24 "$@"
