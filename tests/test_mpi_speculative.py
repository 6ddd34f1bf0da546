"""Speculative decoding under mpiexec (the CPU engine; tests/mpi/test_speculative.py on every rank): the MTP
layer against the float64 reference, and greedy speculative == greedy through the scheduler for k = 1..3
with forced acceptance and rejection, at cp2, cp4 and tp2cp2 (tokens_per_block 2: draft and verify chunks
cross block and CP-owner boundaries; both caches hold exactly the accepted positions on every rank)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mpi_launch import run_mpi
from mtp_steps import make_mtp_model

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_mtp_model(tmp_path_factory.mktemp("speculative_mpi") / "model")


@pytest.mark.parametrize(("tp", "cp"), [(1, 2), (1, 4), (2, 2)], ids=["cp2", "cp4", "tp2cp2"])
def test_speculative_under_mpiexec(model: Path, tmp_path: Path, tp: int, cp: int) -> None:
    spec = tmp_path / "speculative.json"
    spec.write_text(json.dumps({"model": str(model), "tp": tp, "cp": cp}))
    result = run_mpi(
        tp * cp,
        ["-m", "pytest", "tests/mpi/test_speculative.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=240,
        env={"HELIX_SPECULATIVE_SPEC": str(spec)},
    )
    assert not result.timed_out, "timed out (a rank waiting in a collective?)\n" + result.describe()
    assert result.returncode == 0, result.describe()


def _generate(model: Path, n: int, *extra: str) -> dict:
    args = ["--cp", str(n), "--tokens-per-block", "2", "--max-new-tokens", "7", "--ignore-eos", "--json"]
    prompts = ["--prompt-token-ids", "5,17,42,99,3", "--prompt-token-ids", "9,8"]
    result = run_mpi(
        n, ["-m", "helix", "generate", "--model", str(model), *args, *prompts, *extra], timeout=120
    )
    assert result.returncode == 0, result.describe()
    return json.loads(next(line for line in result.output.splitlines() if line.startswith("{")))


def test_helix_generate_speculative_tokens_under_mpiexec(model: Path) -> None:
    """helix generate --cp 2 --speculative-tokens 2 gives the greedy tokens of a plain run and reports its
    acceptance (the MTP layer's own drafts: random weights accept next to none)."""
    plain = _generate(model, 2)
    spec = _generate(model, 2, "--speculative-tokens", "2")
    assert [o["token_ids"] for o in spec["outputs"]] == [o["token_ids"] for o in plain["outputs"]]
    assert plain["speculative"] is None
    stats = spec["speculative"]
    assert stats["k"] == 2 and stats["steps"] > 0 and len(stats["draft_acceptance"]) == 2
    assert stats["emitted"] == 2 * 6  # every token after each prompt's first came from a verify step
