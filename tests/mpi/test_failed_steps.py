"""A failed step loses nothing, under mpiexec: the scenario of tests/failed_steps.py on every rank.

Launched by tests/test_mpi_failed_steps.py (the CPU engine, cp2 and tp2cp2) and
tests/test_mpi_cuda_emulator.py (the CUDA engine on the SIMT emulator) as
``mpiexec -n tp*cp python -m pytest tests/mpi/test_failed_steps.py``
with HELIX_FAILED_STEPS_SPEC naming a JSON file {"model", "tp", "cp", "device", "cuda_comm"}.

Checked on every rank: each bad step raises its error and changes nothing (tests/failed_steps.py); every rank
raised the same error types and messages (the non-finite check names its rank: that part is left out); every
rank keeps the same global view (held positions, free and unreserved blocks of every CP rank); the next valid
step gives, on every rank, bitwise the logits of a fresh engine that never saw a bad step. Before this
engine-level guarantee a KV cache full on one CP rank only made that rank raise while the others waited in
the all-to-all: the job hung (the launcher's timeout fails the test then).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from failed_steps import VALID, make_engine, prefill, snapshot, try_bad_steps
from helix.comm import world


def _spec() -> dict:
    path = os.environ.get("HELIX_FAILED_STEPS_SPEC")
    if not path:
        pytest.fail("HELIX_FAILED_STEPS_SPEC is not set (launched by tests/test_mpi_failed_steps.py)")
    return json.loads(Path(path).read_text())


def _same_on_every_rank(comm, value, what: str) -> None:
    """Compares a JSON-able value across ranks by its digest; the differing rank prints its value."""
    text = json.dumps(value, sort_keys=True)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()
    gathered = comm.all_gather(digest)
    differs = [r for r in range(comm.size) if not np.array_equal(gathered[r], gathered[0])]
    if differs:
        print(f"[rank {comm.rank}] {what}: {text}", file=sys.stderr, flush=True)
    assert not differs, f"{what}: ranks {differs} differ from rank 0"


def test_failed_steps() -> None:
    spec = _spec()
    if spec["device"] == "cuda":
        # The emulator has one device per process: every rank plays a node of its own.
        os.environ["MPI_LOCALRANKID"] = "0"
    comm = world()
    assert comm.size == spec["tp"] * spec["cp"]
    layout = {k: spec[k] for k in ("tp", "cp", "device", "cuda_comm")}
    engine = make_engine(Path(spec["model"]), comm, **layout)
    prefill(engine)
    seen = try_bad_steps(engine)
    _same_on_every_rank(comm, [(n, k, re.sub(r" on rank \d+", "", m)) for n, k, m in seen], "errors")
    table = engine.block_table
    global_view = {f"held by {s}": table.held_positions(s).tolist() for s in table.sequence_ids()}
    global_view |= {"free": table.free_blocks, "unreserved": table.unreserved_blocks}
    _same_on_every_rank(comm, global_view, "global view")

    got = engine.step(*VALID.arrays())
    fresh = make_engine(Path(spec["model"]), comm, **layout)
    prefill(fresh)
    np.testing.assert_array_equal(got, fresh.step(*VALID.arrays()))
    assert snapshot(engine) == snapshot(fresh)
    _same_on_every_rank(comm, got.tobytes().hex(), "logits")
    comm.barrier()
