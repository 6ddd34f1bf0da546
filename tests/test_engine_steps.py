"""A failed step loses nothing (DESIGN.md §4), on one rank: every bad input of tests/failed_steps.py raises
its error before any layer runs (or, for non-finite values, is taken back after the layers), the KV
bookkeeping is unchanged, and the next valid step gives bitwise the logits of an engine that never saw a
bad step. The CPU engine always; the CUDA engine where a device is visible (the SIMT emulator in the
sanitizer stage of scripts/test.sh). The same under mpiexec: tests/test_mpi_failed_steps.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from failed_steps import BAD_STEPS, VALID, make_engine, make_model, prefill, snapshot, try_bad_steps
from helix import _core

SELF = _core.self_communicator()
gpu = pytest.mark.skipif(_core.cuda.device_count() == 0, reason="no CUDA GPU visible")
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("failed_steps") / "model")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_steps_change_nothing_and_the_next_step_is_exact(model, device):
    engine = make_engine(model, SELF, device=device)
    prefill(engine)
    seen = try_bad_steps(engine)
    assert [name for name, _, _ in seen] == [name for name, *_ in BAD_STEPS]
    got = engine.step(*VALID.arrays())
    fresh = make_engine(model, SELF, device=device)
    prefill(fresh)
    np.testing.assert_array_equal(got, fresh.step(*VALID.arrays()))
    assert snapshot(engine) == snapshot(fresh)


@pytest.mark.parametrize("device", DEVICES)
def test_the_issue_case_retries(model, device):
    """The reported failure: a step whose second sequence re-uses a position used to leave layer 0 holding
    the first sequence's new position (layers 1+ not), and the corrected retry failed for good."""
    engine = make_engine(model, SELF, device=device)
    prefill(engine)
    bad = VALID.arrays()
    bad[1] = np.array([6, 2], np.int64)  # sequence 1 re-uses position 2
    with pytest.raises(_core.ArgumentError, match="already held for sequence 1"):
        engine.step(*bad)
    assert engine.block_table.held_positions(0).tolist() == list(range(6))
    engine.step(*VALID.arrays())  # the retry
    assert engine.block_table.held_positions(0).tolist() == list(range(7))
    assert engine.block_table.held_positions(1).tolist() == list(range(4))


@gpu
def test_cuda_and_cpu_engines_refuse_alike(model):
    """Same error types and messages from both engines for every bad step."""
    seen = {}
    for device in ("cpu", "cuda"):
        engine = make_engine(model, SELF, device=device)
        prefill(engine)
        seen[device] = try_bad_steps(engine)
    assert seen["cuda"] == seen["cpu"]


@pytest.mark.parametrize("device", DEVICES)
def test_fill_sequence_random_is_a_step_of_its_own(model, device):
    """The benchmark fill holds positions [0, n) like a prefill (every CP rank's view), refuses a sequence
    that is not empty, and a step after it continues at position n."""
    engine = make_engine(model, SELF, device=device)
    engine.add_sequence(5)
    engine._engine.fill_sequence_random(5, 9, seed=1, scale=1.0)
    assert engine.block_table.held_positions(5).tolist() == list(range(9))
    assert engine.block_table.free_blocks == [engine.num_kv_blocks - 5]
    with pytest.raises(_core.ArgumentError, match="sequence 5 is not empty"):
        engine._engine.fill_sequence_random(5, 3)
    logits = engine.step(*[np.array(v, np.int64) for v in ([3], [9], [5], [0], [0])])
    assert np.isfinite(logits).all()
