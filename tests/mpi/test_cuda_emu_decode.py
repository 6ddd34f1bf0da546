"""The CUDA engine on the SIMT emulator, NCCL being the fake NCCL over MPI, against the CPU engine.

Launched by tests/test_mpi_cuda_emulator.py as ``mpiexec -n tp*cp python -m pytest
tests/mpi/test_cuda_emu_decode.py`` with HELIX_CUDA_EMU_SPEC naming a JSON file {"model", "tp", "cp",
"prompts", "max_new_tokens": [per prompt], "tokens_per_block", "max_batch_tokens"}. Every rank decodes the
prompts greedily in one batch (chunked prefill, KV ownership rotating over the CP ranks) with device="cpu"
and then device="cuda" over the world communicator, and checks: the same tokens, logits within the
cuda_engine_logits tolerance, the CUDA logits bitwise identical on every rank, every KV block free again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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
        pytest.fail("HELIX_CUDA_EMU_SPEC is not set (this program is launched by tests/test_mpi_cuda_emulator.py)")
    return json.loads(Path(path).read_text())


def _decode(spec: dict, device: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
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
    )
    prompts = spec["prompts"]
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in spec["max_new_tokens"]]
    logits: list[list[np.ndarray]] = [[] for _ in prompts]
    outputs = llm.generate(prompts, params, on_logits=lambda i, row: logits[i].append(row.copy()))
    assert llm.engine.num_free_blocks == llm.engine.num_kv_blocks, f"{device}: KV blocks leaked after generate"
    tokens = [np.asarray(o.token_ids, np.int64) for o in outputs]
    return tokens, [np.stack(rows).astype(np.float32) for rows in logits]


def test_cuda_engine_on_emulator_matches_cpu() -> None:
    assert _core.cuda.emulated(), "this program checks the SIMT-emulator build"
    spec = _spec()
    comm = world()
    assert comm.size == spec["tp"] * spec["cp"], (comm.size, spec["tp"], spec["cp"])
    cpu_tokens, cpu_logits = _decode(spec, "cpu")
    cuda_tokens, cuda_logits = _decode(spec, "cuda")
    for i, (got, want) in enumerate(zip(cuda_tokens, cpu_tokens, strict=True)):
        np.testing.assert_array_equal(got, want, err_msg=f"request {i}: greedy tokens differ from the CPU engine's")
        assert len(got) == spec["max_new_tokens"][i]
    for i, (got, want) in enumerate(zip(cuda_logits, cpu_logits, strict=True)):
        np.testing.assert_allclose(got, want, **tol("cuda_engine_logits", "float32"), err_msg=f"request {i} logits")
        gathered = comm.all_gather(np.ascontiguousarray(got))
        for r in range(1, comm.size):
            np.testing.assert_array_equal(gathered[r], gathered[0], err_msg=f"request {i}: rank {r} differs")
    comm.barrier()
