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


def test_forced_acceptance_draws_the_acceptance_rate(model):
    """The benchmark mode: each draft accepted with probability alpha until the first rejection, so a step
    accepts sum_i alpha^i drafts on average (k = 3, alpha = 0.8: 1.952) and draft i with alpha^(i+1)."""
    from helix.engine import HelixEngine
    from helix.generate import SamplingParams

    engine = HelixEngine(str(model), comm=SELF, tokens_per_block=2, max_tokens=512, progress=False, mtp=True)
    sched = Scheduler(engine, (), speculative_tokens=3, forced_acceptance=0.8)
    sched.add([5, 17, 42], SamplingParams(max_new_tokens=400, ignore_eos=True), seed=1)
    while sched.has_unfinished():
        sched.step()
    s = sched.stats.speculative
    assert s.steps > 100 and s.emitted == 399
    assert abs(s.mean_accepted_tokens - 1.952) < 0.45  # 4 standard errors over >100 steps
    assert abs(s.draft_acceptance[0] - 0.8) < 0.16
    with pytest.raises(ValueError, match=r"forced_acceptance must be in \[0, 1\]"):
        Scheduler(engine, (), speculative_tokens=1, forced_acceptance=1.5)


def test_add_filled_decodes_from_a_filled_context(model):
    """The benchmark's request (Scheduler.add_filled): the context's positions in the model's cache, all but
    the last in the MTP layer's, then speculative steps extend both to exactly the accepted positions; a
    request whose blocks are not free is refused and leaves nothing behind."""
    from helix.generate import SamplingParams

    engine = make_mtp_engine(model, SELF)  # 16 blocks of 2 tokens
    sched = Scheduler(engine, (), speculative_tokens=2, forced_acceptance=0.8)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    rid = sched.add_filled([9] * 11, 4, params, seed=3)
    assert engine.block_table.held_positions(0).tolist() == list(range(11))
    assert engine.mtp_block_table.held_positions(0).tolist() == list(range(10))
    with pytest.raises(_core.KVCacheFullError):
        sched.add_filled([9] * 11, 4, params, seed=4)
    assert sched.num_running == 1 and not engine.block_table.has_sequence(1)
    (out,) = sched.step()  # drafts from MTP row 10, verify at positions 11..13
    assert engine.block_table.held_positions(0).tolist() == list(range(10 + len(out.token_ids)))
    assert engine.mtp_block_table.held_positions(0).tolist() == list(range(11))
    while sched.has_unfinished():
        (out,) = sched.step()
    assert out.request_id == rid and len(out.token_ids) == 6 and out.token_ids[0] == 4
    assert engine.num_free_blocks == engine.num_kv_blocks
