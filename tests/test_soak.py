"""Soak under mpiexec: hundreds of random requests arriving one by one through helix.LLM's incremental API
(add_request between steps, some aborted) on cp=2 (2 ranks) and tp2cp2 (4 ranks) lose no KV block, finish
or are refused with a reason, decode identically on every rank, reproduce greedily, and do not grow
resident memory.
The program and its checks: tests/mpi/soak.py. HELIX_SLOW=1 adds a long variant (5000 requests)."""

from __future__ import annotations

import json

import pytest
from helix.tiny import make_tiny_model
from mpi_launch import run_mpi

pytestmark = pytest.mark.mpi

# A model small enough that a few hundred requests take seconds on 2 shared cores, with every feature of
# the architecture (q_lora, YaRN, a dense layer then an MoE layer with a shared expert, grouped routing).
SOAK_MODEL = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
    qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def soak_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("soak-model")
    make_tiny_model(path, seed=3, **SOAK_MODEL)
    return path


def _soak(
    model, n: int, tp: int, cp: int, requests: int, timeout: float, extra: list[str] | None = None
) -> dict:
    args = ["tests/mpi/soak.py", "--model", str(model), "--tp", str(tp), "--cp", str(cp),
            "--requests", str(requests), *(extra or [])]  # fmt: skip
    result = run_mpi(n, args, timeout=timeout)
    assert result.returncode == 0, result.describe()
    lines = [line for line in result.output.splitlines() if line.startswith("SOAK ")]
    assert len(lines) == 1, result.describe()
    summary = json.loads(lines[0][5:])
    print(f"soak n={n}: {summary}")
    assert summary["requests"] == requests
    assert summary["refused"] > 0 and summary["completed"] > 0 and summary["aborted"] > 0  # every path taken
    assert summary["joined_running_batch"] > requests // 4  # requests really arrived while others ran
    assert summary["idle_points"] > 0 and summary["max_waiting"] > 0  # the queue both drained and built up
    assert summary["greedy_replayed"] > 0
    return summary


@pytest.mark.parametrize(("n", "tp", "cp"), [(2, 1, 2), (4, 2, 2)])
def test_soak(soak_model, n, tp, cp):
    _soak(soak_model, n, tp, cp, requests=400, timeout=150)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "tp", "cp"), [(2, 1, 2), (4, 2, 2)])
def test_soak_long(soak_model, n, tp, cp):
    _soak(soak_model, n, tp, cp, requests=5000, timeout=1200, extra=["--max-replay", "1000"])
