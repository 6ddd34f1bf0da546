"""The MTP layer on the engine (mtp_step, its own KV pool and block table, truncate_mtp) against the float64
reference, on one rank: the CPU engine, and the CUDA engine where a device is visible (the SIMT emulator in
the sanitizer stage of scripts/test.sh). The scenario: tests/mtp_steps.py; under mpiexec:
tests/test_mpi_speculative.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from failed_steps import make_model
from helix import _core
from helix.checkpoint import CheckpointError
from mtp_steps import make_mtp_engine, make_mtp_model, run_mtp_case

SELF = _core.self_communicator()
gpu = pytest.mark.skipif(_core.cuda.device_count() == 0, reason="no CUDA GPU visible")
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_mtp_model(tmp_path_factory.mktemp("mtp_engine") / "model")


@pytest.mark.parametrize("device", DEVICES)
def test_mtp_step_matches_the_reference(model, device):
    run_mtp_case(make_mtp_engine(model, SELF, device=device), model)


def test_mtp_step_refuses_bad_arguments(model):
    engine = make_mtp_engine(model, SELF)
    engine.add_sequence(0)
    D = engine.config.hidden_size
    args = [np.asarray(v, np.int64) for v in ([3, 4], [0, 1], [0], [0, 0], [1])]
    with pytest.raises(
        _core.ArgumentError,
        match=r"^argument 'hidden' has shape \[3, 64\]: dimension 0 must equal the number of tokens",
    ):
        engine.mtp_step(np.zeros((3, D), np.float32), *args)
    with pytest.raises(_core.ArgumentError, match=r"^argument 'next_tokens'\[1\] = 9999 is outside"):
        engine.mtp_step(np.zeros((2, D), np.float32), np.array([3, 9999]), *args[1:])
    assert engine.mtp_block_table.held_positions(0).tolist() == []
    with pytest.raises(_core.ArgumentError, match=r"argument 'num_tokens' must be in \[0, 0\]"):
        engine.truncate_mtp(0, 1)


def test_an_engine_without_mtp_refuses_mtp_calls(tmp_path):
    from failed_steps import make_engine

    plain = make_model(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers = 0"):
        make_mtp_engine(plain, SELF)
    engine = make_engine(plain, SELF)
    engine.add_sequence(0)
    with pytest.raises(_core.ArgumentError, match="no MTP layer"):
        engine.mtp_step(np.zeros((1, 64), np.float32), *[np.zeros(1, np.int64)] * 4, np.zeros(0, np.int64))
    with pytest.raises(_core.ArgumentError, match="no MTP layer"):
        engine.truncate_mtp(0, 0)
    with pytest.raises(_core.ArgumentError, match="no MTP layer"):
        engine._engine.fill_mtp_sequence_random(0, 1)


@pytest.mark.parametrize("device", DEVICES)
def test_fill_mtp_sequence_random_fills_the_mtp_cache_only(model, device):
    """The benchmark fill of the MTP cache: rows [0, n) held in its own table, the model's cache untouched,
    the values read by the next mtp_step (another seed, other draft logits); an MTP cache that is not empty
    is refused."""
    engine = make_mtp_engine(model, SELF, device=device)
    n, D = 9, engine.config.hidden_size
    row = [np.asarray(v, np.int64) for v in ([3], [n], [0], [0], [0])]  # MTP row n of sequence 0
    logits = []
    for seed in (1, 2):
        engine.add_sequence(0)
        engine._engine.fill_sequence_random(0, n + 1, seed=7, scale=1.0)
        model_rows = engine.read_kv(0)[1]
        engine._engine.fill_mtp_sequence_random(0, n, seed=seed, scale=1.0)
        assert engine.mtp_block_table.held_positions(0).tolist() == list(range(n))
        assert engine.block_table.held_positions(0).tolist() == list(range(n + 1))
        np.testing.assert_array_equal(engine.read_kv(0)[1], model_rows)
        logits.append(engine.mtp_step(np.ones((1, D), np.float32), *row)[1])
        with pytest.raises(_core.ArgumentError, match="fill_mtp_sequence_random: sequence 0 is not empty"):
            engine._engine.fill_mtp_sequence_random(0, 2)
        engine.free_sequence(0)
    assert np.isfinite(logits[0]).all() and not np.array_equal(logits[0], logits[1])
