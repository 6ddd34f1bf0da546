#!/usr/bin/env bash
# The whole test suite: sets everything up, then runs the C++ tests (ctest) and the Python tests
# (pytest, which also launches the MPI tests under mpiexec). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
echo "== C++ tests (ctest) =="
ctest --test-dir build --output-on-failure -j 2 --timeout 300
echo "== Python and MPI tests (pytest) =="
python -m pytest tests -q -p no:cacheprovider "$@"
