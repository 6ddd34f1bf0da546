"""Speculative decoding's runtime parts under mpiexec, on every rank: the MTP layer against the float64
reference (tests/mtp_steps.py), then greedy speculative decoding through the scheduler against plain greedy
decoding with forced acceptance, rejection and a mix, k = 1..3 (tests/speculative_runs.py: every rank's
held positions checked after every step, every block free at the end).

Launched by tests/test_mpi_speculative.py as
``mpiexec -n tp*cp python -m pytest tests/mpi/test_speculative.py`` with HELIX_SPECULATIVE_SPEC naming a
JSON file {"model", "tp", "cp"}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helix.comm import world
from mtp_steps import make_mtp_engine, run_mtp_case
from speculative_runs import check_all_modes


@pytest.fixture(scope="module")
def spec() -> dict:
    path = os.environ.get("HELIX_SPECULATIVE_SPEC")
    if not path:
        pytest.fail("HELIX_SPECULATIVE_SPEC is not set (launched by tests/test_mpi_speculative.py)")
    return json.loads(Path(path).read_text())


def _engine(spec: dict):
    comm = world()
    assert comm.size == spec["tp"] * spec["cp"]
    return make_mtp_engine(Path(spec["model"]), comm, tp=spec["tp"], cp=spec["cp"])


def test_mtp_engine(spec: dict) -> None:
    run_mtp_case(_engine(spec), Path(spec["model"]))


def test_greedy_speculative_equals_greedy(spec: dict) -> None:
    check_all_modes(_engine(spec))
    world().barrier()
