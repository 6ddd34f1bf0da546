#!/usr/bin/env bash
# The main job on the embedded default: sets everything up, then runs the Helix demo across MPI ranks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
NP=${HELIX_NP:-2}
exec timeout 600 mpiexec -n "$NP" python -m helix demo "$@"
