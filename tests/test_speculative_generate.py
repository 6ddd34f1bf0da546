"""Greedy speculative decoding (helix.speculative_step through the Scheduler) equals plain greedy decoding
token for token, for k = 1..3 and forced acceptance, rejection and a mix, on one rank (the scenario:
tests/speculative_runs.py; under mpiexec: tests/test_mpi_speculative.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helix import _core
from helix.generate import Scheduler
from mtp_steps import make_mtp_engine, make_mtp_model
from speculative_runs import check_all_modes

SELF = _core.self_communicator()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_mtp_model(tmp_path_factory.mktemp("speculative") / "model")


def test_greedy_speculative_equals_greedy(model):
    check_all_modes(make_mtp_engine(model, SELF))


def test_an_importing_scheduler_refuses_speculation(model):
    from helix.generate import SamplingParams

    sched = Scheduler(make_mtp_engine(model, SELF), (), speculative_tokens=1)
    with pytest.raises(ValueError, match="carries no MTP-layer cache"):
        sched.begin_import([1, 2], [3], SamplingParams(max_new_tokens=4), seed=0)


def test_llm_speculative_tokens(model, tmp_path):
    """helix.LLM(speculative_tokens=k) decodes like LLM() and reports its statistics; a k outside 0..3 or a
    checkpoint without an MTP layer is refused before anything is built."""
    from failed_steps import make_model
    from helix.checkpoint import CheckpointError
    from helix.generate import SamplingParams
    from helix.llm import LLM
    from helix.parallel_config import ParallelConfig

    pc = ParallelConfig(tokens_per_block=2, max_tokens=32)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    plain = LLM(model, pc, comm=SELF, progress=False).generate([[5, 17, 42]], params)
    llm = LLM(model, pc, comm=SELF, progress=False, speculative_tokens=3)
    assert llm.generate([[5, 17, 42]], params)[0].token_ids == plain[0].token_ids
    assert llm.last_stats.speculative.k == 3 and llm.last_stats.speculative.emitted == 5
    with pytest.raises(ValueError, match=r"speculative_tokens must be an integer in \[0, 3\]"):
        LLM(model, pc, comm=SELF, progress=False, speculative_tokens=4)
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers = 0"):
        LLM(make_model(tmp_path / "plain"), pc, comm=SELF, progress=False, speculative_tokens=1)
