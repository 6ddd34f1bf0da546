"""Speculative decoding's runtime parts under mpiexec (the CPU engine): the MTP layer against the float64
reference at cp2 and tp2cp2 (tests/mpi/test_mtp_engine.py, the scenario of tests/mtp_steps.py: chunks that
cross block and CP-owner boundaries, both caches truncated to the accepted positions on every rank)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mpi_launch import run_mpi
from mtp_steps import make_mtp_model

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_mtp_model(tmp_path_factory.mktemp("mtp_mpi") / "model")


@pytest.mark.parametrize(("tp", "cp"), [(1, 2), (2, 2)], ids=["cp2", "tp2cp2"])
def test_mtp_engine_under_mpiexec(model: Path, tmp_path: Path, tp: int, cp: int) -> None:
    spec = tmp_path / "mtp.json"
    spec.write_text(json.dumps({"model": str(model), "tp": tp, "cp": cp}))
    result = run_mpi(
        tp * cp,
        ["-m", "pytest", "tests/mpi/test_mtp_engine.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=180,
        env={"HELIX_MTP_SPEC": str(spec)},
    )
    assert not result.timed_out, "timed out (a rank waiting in a collective?)\n" + result.describe()
    assert result.returncode == 0, result.describe()
