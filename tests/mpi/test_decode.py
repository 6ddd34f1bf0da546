"""Decoding under mpiexec: the runs of a spec file, each on its own sub-communicator of the world.

Launched by tests/test_mpi_decode.py as ``mpiexec -n 4 python -m pytest tests/mpi/test_decode.py`` with
HELIX_DECODE_SPEC naming a JSON file: {"out_dir": DIR, "runs": [{"name", "model", "tp", "cp", "prompts",
"max_new_tokens": [per prompt], ...options}]} (attention_form: the form the CPU attention is forced to).
Each run uses ranks [0, tp * cp) (the others wait at the next split); rank 0 writes DIR/<name>.npz with
every request's generated tokens (tokens_<i>) and the logits each was sampled from (logits_<i>, [steps,
vocab]). The outer test compares those with transformers.

Checked here, across ranks (the outer process only sees rank 0): every rank of a run generated the same
tokens from bitwise-identical logits (the scheduler's decisions depend on nothing but the gathered logits);
a seeded sampling run repeated on the same LLM gives the same tokens; every KV block is free afterwards.
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


def _spec() -> dict:
    path = os.environ.get("HELIX_DECODE_SPEC")
    if not path:
        pytest.fail("HELIX_DECODE_SPEC is not set (this program is launched by tests/test_mpi_decode.py)")
    return json.loads(Path(path).read_text())


def _same_on_all_ranks(comm, arr: np.ndarray, what: str) -> None:
    gathered = comm.all_gather(np.ascontiguousarray(arr))
    for r in range(1, comm.size):
        np.testing.assert_array_equal(
            gathered[r], gathered[0], err_msg=f"{what}: rank {r} differs from rank 0"
        )


def _run(spec: dict, run: dict) -> None:
    wc = world()
    n = run["tp"] * run.get("cp", 1)
    assert n <= wc.size, f"run {run['name']} needs {n} ranks, the job has {wc.size}"
    comm = wc.split(0 if wc.rank < n else 1, wc.rank)
    if wc.rank >= n:
        return
    pc = ParallelConfig(
        tensor_parallel_size=run["tp"],
        context_parallel_size=run.get("cp", 1),
        tokens_per_block=run.get("tokens_per_block", 4),
        max_tokens=run.get("max_tokens"),
    )
    llm = LLM(
        run["model"],
        pc,
        dtype=run.get("dtype", "float32"),
        comm=comm,
        max_batch_tokens=run.get("max_batch_tokens", 8),
        wuv_before_exchange=run.get("wuv"),  # None: the default (W_UV first at cp = 1)
        expert_tensor_parallel=run.get("etp", False),
        progress=False,
    )
    _core.set_attention_form(run.get("attention_form", "auto"))
    prompts = run["prompts"]
    sampling = run.get("sampling", {})
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True, **sampling) for m in run["max_new_tokens"]]
    logits: list[list[np.ndarray]] = [[] for _ in prompts]
    outputs = llm.generate(prompts, params, on_logits=lambda i, row: logits[i].append(row.copy()))
    result: dict[str, np.ndarray] = {}
    for i, out in enumerate(outputs):
        assert out.finish_reason == "length", (run["name"], i, out.finish_reason, out.error)
        toks = np.asarray(out.token_ids, np.int64)
        lg = np.stack(logits[i]).astype(np.float32)
        _same_on_all_ranks(comm, toks, f"{run['name']} request {i} tokens")
        _same_on_all_ranks(comm, lg, f"{run['name']} request {i} logits")
        result[f"tokens_{i}"], result[f"logits_{i}"] = toks, lg
    if run.get("repeat"):
        again = llm.generate(prompts, params)
        for i, (a, b) in enumerate(zip(outputs, again, strict=False)):
            assert a.token_ids == b.token_ids, (
                f"{run['name']} request {i}: a seeded rerun sampled other tokens"
            )
    _core.set_attention_form("auto")
    assert llm.engine.num_free_blocks == llm.engine.num_kv_blocks, "KV blocks leaked after generate"
    stats = llm.last_stats
    result["decode_step_ms"] = np.asarray(stats.decode_step_ms, np.float64)
    result["peak_kv_blocks"] = comm.all_gather(np.array([stats.peak_kv_blocks], np.int64)).ravel()
    if comm.rank == 0:
        np.savez(Path(spec["out_dir"]) / f"{run['name']}.npz", **result)


def test_runs() -> None:
    spec = _spec()
    for run in spec["runs"]:
        _run(spec, run)
    world().barrier()
