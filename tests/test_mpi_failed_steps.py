"""A failed step loses nothing under mpiexec (cp2, tp2cp2; the CPU engine): every rank raises the same error
for every bad input, nothing changes on any rank, the next valid step is exact. The program:
tests/mpi/test_failed_steps.py; the CUDA engine's run: tests/test_mpi_cuda_emulator.py. And `helix generate`
ends the job non-zero when a request is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from failed_steps import make_model, run_failed_steps
from mpi_launch import run_mpi

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("failed_steps_mpi") / "model")


@pytest.mark.parametrize(("tp", "cp"), [(1, 2), (2, 2)], ids=["cp2", "tp2cp2"])
def test_failed_steps_under_mpiexec(model: Path, tmp_path: Path, tp: int, cp: int) -> None:
    result = run_failed_steps(model, tmp_path, tp, cp, "cpu")
    assert not result.timed_out, "timed out (a rank waiting in a collective?)\n" + result.describe()
    assert result.returncode == 0, result.describe()


def test_generate_exits_non_zero_when_a_request_is_refused(model: Path) -> None:
    """helix generate --cp 2: the request that can never fit is refused, the other completes, every rank
    exits 1 (so mpiexec does), the reason is on stderr and in the JSON line."""
    args = [
        "--cp",
        "2",
        "--tokens-per-block",
        "4",
        "--max-tokens",
        "16",
        "--max-new-tokens",
        "12",
        "--ignore-eos",
    ]
    prompts = ["--prompt-token-ids", ",".join(["3"] * 10), "--prompt-token-ids", "1,2"]
    result = run_mpi(
        2, ["-m", "helix", "generate", "--model", str(model), *args, *prompts, "--json"], timeout=120
    )
    assert result.returncode == 1, result.describe()
    # The JSON line, wherever rank 0's stderr line fell in the combined output.
    obj = json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))
    refused, done = obj["outputs"]
    assert refused["finish_reason"] == "refused" and done["finish_reason"] == "length"
    reason = "request 0 refused: request 0 needs 3 KV blocks on one CP rank"
    assert obj["error"].startswith(reason), obj["error"]
    assert f"helix generate: error: {reason}" in result.output, result.describe()
