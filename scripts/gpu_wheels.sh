#!/usr/bin/env bash
# Run HERE (with PyPI) before a GPU check: downloads into .whl/ what the GPU machine lacks, for its
# Python 3.12 / x86-64: the MPICH wheel (mpicc, mpiexec, libmpi), which scripts/gpu_check.sh unpacks
# when the machine has no MPI, so that the build has MPI and two CP ranks can share the GPU under mpiexec.
# Then: the device tool's run with carry [".whl"] and command "bash scripts/gpu_check.sh".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
  "mpich==$(sed -n 's/^mpich==//p' requirements/runtime.txt)"
ls -l .whl
