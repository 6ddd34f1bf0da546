"""The two engine additions speculative decoding needs (docs/speculative.md §4), on one rank, CPU engine and
the CUDA engine where a device is visible (the SIMT emulator in the sanitizer stage of scripts/test.sh):
`step(..., hidden_rows=...)` returns those rows' final hidden states (after the model's norm) next to the
logits, and `truncate` releases the rows of rejected drafts so that the next step sees exactly the
kept positions. Both against the float64 reference model. Under mpiexec: tests/test_mpi_speculative.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from failed_steps import MODEL, make_engine
from helix import _core
from helix.reference_model import ReferenceModel
from helix.tiny import make_tiny_model
from tolerances import tol

SELF = _core.self_communicator()
gpu = pytest.mark.skipif(_core.cuda.device_count() == 0, reason="no CUDA GPU visible")
DEVICES = ["cpu", pytest.param("cuda", marks=gpu)]
PROMPT = [5, 17, 42, 99, 3]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("truncate") / "model"
    make_tiny_model(path, seed=4, **MODEL)
    return path


def chunk(tokens: list[int], first: int, seq_id: int = 0) -> list[np.ndarray]:
    """One sequence's tokens at positions first.., every row a logit row."""
    T = len(tokens)
    return [np.asarray(v, np.int64) for v in (tokens, range(first, first + T), [seq_id], [0] * T, range(T))]


@pytest.mark.parametrize("device", DEVICES)
def test_hidden_rows_are_the_final_hidden_states(model, device):
    engine = make_engine(model, SELF, device=device)
    ref = ReferenceModel.from_pretrained(model)
    engine.add_sequence(0)
    args = chunk(PROMPT, 0)
    args[-1] = np.array([4], np.int64)  # one logit row, other hidden rows (any order)
    bad = np.array([1, 5], np.int64)
    with pytest.raises(_core.ArgumentError, match=r"^argument 'hidden_rows'\[1\] = 5 is outside \[0, 5\)$"):
        engine.step(*args, hidden_rows=bad)
    assert engine.block_table.held_positions(0).tolist() == []  # the bad step changed nothing
    logits, hidden = engine.step(*args, hidden_rows=np.array([3, 0, 2, 3], np.int64))
    expect = ref.forward_hidden(PROMPT)
    np.testing.assert_allclose(hidden, expect[[3, 0, 2, 3]], **tol("model_logits", "float32"))
    np.testing.assert_allclose(
        logits, expect[4:] @ ref.w["lm_head.weight"].T, **tol("model_logits", "float32")
    )
    assert engine.step(*chunk([7], 5)).shape == (1, ref.config.vocab_size)  # without: logits alone


@pytest.mark.parametrize("device", DEVICES)
def test_truncate_releases_rejected_rows(model, device):
    """A verify chunk of 4 tokens crossing two blocks (tokens_per_block 2) is cut back to its first two; the
    next step (a different token at the first released position) sees exactly the kept positions."""
    engine = make_engine(model, SELF, device=device)
    ref = ReferenceModel.from_pretrained(model)
    engine.add_sequence(0)
    engine.step(*chunk(PROMPT, 0))
    free_before = engine.block_table.free_blocks
    engine.step(*chunk([11, 12, 13, 14], 5))
    engine.truncate(0, 7)
    assert engine.block_table.held_positions(0).tolist() == list(range(7))
    assert engine.block_table.free_blocks == [free_before[0] - 1]  # positions 0-6: 4 blocks of 2
    got = engine.step(*chunk([200], 7))
    expect = ref.forward(PROMPT + [11, 12, 200])[-1:]
    np.testing.assert_allclose(got, expect, **tol("model_logits", "float32"))
    engine.truncate(0, 0)
    assert engine.block_table.free_blocks == [engine.num_kv_blocks]
    with pytest.raises(_core.ArgumentError, match=r"argument 'num_tokens' must be in \[0, 0\]"):
        engine.truncate(0, 1)
    with pytest.raises(_core.ArgumentError, match="unknown sequence 9"):
        engine.truncate(9, 0)
    engine.free_sequence(0)
