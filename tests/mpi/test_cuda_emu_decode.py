"""The CUDA engine on the SIMT emulator, NCCL being the fake NCCL over MPI, against the CPU engine.

Launched by tests/test_mpi_cuda_emulator.py as ``mpiexec -n tp*cp python -m pytest
tests/mpi/test_cuda_emu_decode.py`` with HELIX_CUDA_EMU_SPEC naming a JSON file {"model", "tp", "cp",
"prompts", "max_new_tokens": [per prompt], "tokens_per_block", "max_batch_tokens", optional
"expert_tensor_parallel"}. Every rank decodes the
prompts greedily in one batch (chunked prefill, KV ownership rotating over the CP ranks) with device="cpu"
and then device="cuda" with cuda_comm "nccl" (the fake NCCL) and "host" (MPI through host memory), and
checks each: the same tokens, logits within the cuda_engine_logits tolerance, the CUDA logits bitwise
identical on every rank, every KV block free again.
Before that, helix's NCCL host communicator (_core.cuda.nccl_communicator) against the MPI one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helix import _core
from helix.comm import world
from helix.generate import SamplingParams
from helix.llm import LLM
from helix.parallel_config import ParallelConfig
from tolerances import tol

# The emulator has one device per process and helix puts local rank k on GPU k: every rank here plays a
# node of its own (set before helix.device reads it; hydra sets this variable per rank at launch).
os.environ["MPI_LOCALRANKID"] = "0"


def _spec() -> dict:
    path = os.environ.get("HELIX_CUDA_EMU_SPEC")
    if not path:
        pytest.fail(
            "HELIX_CUDA_EMU_SPEC is not set (this program is launched by tests/test_mpi_cuda_emulator.py)"
        )
    return json.loads(Path(path).read_text())


def _decode(spec: dict, device: str, cuda_comm: str = "nccl") -> tuple[list[np.ndarray], list[np.ndarray]]:
    comm = world()
    pc = ParallelConfig(
        tensor_parallel_size=spec["tp"],
        context_parallel_size=spec["cp"],
        tokens_per_block=spec["tokens_per_block"],
    )
    llm = LLM(
        spec["model"],
        pc,
        comm=comm,
        max_batch_tokens=spec["max_batch_tokens"],
        progress=False,
        device=device,
        cuda_comm=cuda_comm,
        expert_tensor_parallel=spec.get("expert_tensor_parallel", False),
    )
    prompts = spec["prompts"]
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in spec["max_new_tokens"]]
    logits: list[list[np.ndarray]] = [[] for _ in prompts]
    outputs = llm.generate(prompts, params, on_logits=lambda i, row: logits[i].append(row.copy()))
    assert llm.engine.num_free_blocks == llm.engine.num_kv_blocks, (
        f"{device}: KV blocks leaked after generate"
    )
    tokens = [np.asarray(o.token_ids, np.int64) for o in outputs]
    return tokens, [np.stack(rows).astype(np.float32) for rows in logits]


def test_nccl_host_communicator_matches_mpi() -> None:
    """Every collective of cuda/nccl_comm.cpp's host communicator, including a split, on all ranks."""
    assert _core.cuda.emulated(), "this program checks the SIMT-emulator build"
    mpi = world()
    nccl = _core.cuda.nccl_communicator(mpi, 0)
    assert (nccl.rank, nccl.size) == (mpi.rank, mpi.size)
    n, r = mpi.size, mpi.rank
    # Integer-valued float32: exact in any summation order, so NCCL and MPI must agree bitwise.
    x = (np.arange(37, dtype=np.float32) * (r + 1) - 5 * r).reshape(37)
    np.testing.assert_array_equal(nccl.all_reduce_sum(x), mpi.all_reduce_sum(x))
    np.testing.assert_array_equal(nccl.all_gather(x), mpi.all_gather(x))
    blocks = np.arange(n * 11, dtype=np.float32).reshape(n, 11) + 100 * r
    np.testing.assert_array_equal(nccl.all_to_all(blocks), mpi.all_to_all(blocks))
    for root in range(n):
        np.testing.assert_array_equal(nccl.broadcast(x, root), mpi.broadcast(x, root))
    # bfloat16 is summed in bf16 per step in rank order (NCCL), not in float32 and rounded once (MPI).
    contributions = [
        (np.linspace(-3, 3, 64, dtype=np.float32) * (k + 1.37)).astype(ml_dtypes.bfloat16) for k in range(n)
    ]
    expect = contributions[0]
    for k in range(1, n):
        expect = (expect.astype(np.float32) + contributions[k].astype(np.float32)).astype(ml_dtypes.bfloat16)
    got = nccl.all_reduce_sum(contributions[r])
    np.testing.assert_array_equal(got.view(np.uint16), expect.view(np.uint16))
    sub_nccl, sub_mpi = nccl.split(r % 2, -r), mpi.split(r % 2, -r)
    assert (sub_nccl.rank, sub_nccl.size) == (sub_mpi.rank, sub_mpi.size)
    np.testing.assert_array_equal(sub_nccl.all_reduce_sum(x), sub_mpi.all_reduce_sum(x))
    np.testing.assert_array_equal(sub_nccl.all_gather(x), sub_mpi.all_gather(x))
    nccl.barrier()


def test_cuda_engine_on_emulator_matches_cpu() -> None:
    assert _core.cuda.emulated(), "this program checks the SIMT-emulator build"
    spec = _spec()
    comm = world()
    assert comm.size == spec["tp"] * spec["cp"], (comm.size, spec["tp"], spec["cp"])
    cpu_tokens, cpu_logits = _decode(spec, "cpu")
    for cuda_comm in ("nccl", "host"):
        _check_against_cpu(comm, spec, cpu_tokens, cpu_logits, *_decode(spec, "cuda", cuda_comm), cuda_comm)
    comm.barrier()


def _check_against_cpu(comm, spec, cpu_tokens, cpu_logits, cuda_tokens, cuda_logits, cuda_comm: str) -> None:
    for i, (got, want) in enumerate(zip(cuda_tokens, cpu_tokens, strict=True)):
        np.testing.assert_array_equal(
            got, want, err_msg=f"request {i} ({cuda_comm}): greedy tokens differ from the CPU engine's"
        )
        assert len(got) == spec["max_new_tokens"][i]
    for i, (got, want) in enumerate(zip(cuda_logits, cpu_logits, strict=True)):
        np.testing.assert_allclose(
            got, want, **tol("cuda_engine_logits", "float32"), err_msg=f"request {i} logits ({cuda_comm})"
        )
        gathered = comm.all_gather(np.ascontiguousarray(got))
        for r in range(1, comm.size):
            np.testing.assert_array_equal(gathered[r], gathered[0], err_msg=f"request {i}: rank {r} differs")
