"""The MTP layer on the engine under mpiexec: the scenario of tests/mtp_steps.py on every rank (each compares
with the float64 reference; the draft logits are then the same on every rank within the tolerance).

Launched by tests/test_mpi_speculative.py as
``mpiexec -n tp*cp python -m pytest tests/mpi/test_mtp_engine.py`` with HELIX_MTP_SPEC naming a JSON
file {"model", "tp", "cp"}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helix.comm import world
from mtp_steps import make_mtp_engine, run_mtp_case


def test_mtp_engine() -> None:
    path = os.environ.get("HELIX_MTP_SPEC")
    if not path:
        pytest.fail("HELIX_MTP_SPEC is not set (launched by tests/test_mpi_speculative.py)")
    spec = json.loads(Path(path).read_text())
    comm = world()
    assert comm.size == spec["tp"] * spec["cp"]
    model = Path(spec["model"])
    run_mtp_case(make_mtp_engine(model, comm, tp=spec["tp"], cp=spec["cp"]), model)
    comm.barrier()
