"""Greedy speculative decoding through the scheduler equals greedy decoding token for token: the scenario
shared by tests/test_speculative_generate.py (one rank) and tests/mpi/test_speculative.py (under
mpiexec, launched by tests/test_mpi_speculative.py).

Three prompts of different lengths decode together on the tiny MTP model (tests/mtp_steps.py),
tokens_per_block 2 and max_batch_tokens 8 so that prompt chunks and verify chunks cross block and CP-owner
boundaries. Draft
modes (random weights make the MTP layer's own drafts nearly always wrong):
  - "natural": the MTP layer's drafts;
  - "accept": every draft replaced by the known greedy token (all accepted);
  - "reject": every draft replaced by a token that is not the greedy one (all rejected);
  - "mixed": per draft, a seeded coin picks one of the two.
After every step every running request's main cache holds exactly positions [0, computed) and its MTP cache
[0, mtp_rows) on every rank (the global view); after the run every block of both tables is free.
"""

from __future__ import annotations

import numpy as np
from helix.generate import SamplingParams, Scheduler

PROMPTS = [[5, 17, 42, 99, 3, 250, 7], [9, 8], [100, 101, 102, 103, 104]]
MAX_NEW_TOKENS = 9
MAX_BATCH_TOKENS = 8


def run(engine, k: int = 0, mode: str = "natural", greedy: list[list[int]] | None = None):
    """(token ids per prompt, the scheduler's stats) of one greedy run; `greedy` (the plain run's tokens)
    feeds the forced modes."""
    vocab = engine.config.vocab_size
    coin = np.random.default_rng(7)

    def hook(rid: int, position: int, draft: int) -> int:
        i = position - len(PROMPTS[rid])
        right = greedy[rid][i] if i < len(greedy[rid]) else draft
        accept = {"accept": True, "reject": False, "mixed": bool(coin.random() < 0.5)}[mode]
        return right if accept else (right + 1) % vocab

    sched = Scheduler(
        engine,
        engine.eos_token_ids,
        max_batch_tokens=MAX_BATCH_TOKENS,
        speculative_tokens=k,
        draft_hook=None if mode == "natural" else hook,
    )
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    outs = {sched.add(p, params, seed=0): None for p in PROMPTS}
    while sched.has_unfinished():
        for out in sched.step():
            outs[out.request_id] = out
        check_held_positions(engine, sched)
    for table in [engine.block_table] + ([engine.mtp_block_table] if engine.mtp else []):
        assert table.free_blocks == [engine.num_kv_blocks] * engine.cp
        assert table.sequence_ids() == []
    return [outs[r].token_ids for r in sorted(outs)], sched.stats


def check_held_positions(engine, sched: Scheduler) -> None:
    for req in sched._running:
        assert engine.block_table.held_positions(req.seq_id).tolist() == list(range(req.computed))
        if sched.speculative is not None:
            held = engine.mtp_block_table.held_positions(req.seq_id).tolist()
            assert held == list(range(req.mtp_rows))


def check_all_modes(engine, ks=(1, 2, 3)) -> None:
    """Every mode and k gives the plain greedy tokens; the forced modes' statistics are exact."""
    greedy, _ = run(engine)
    assert all(len(t) == MAX_NEW_TOKENS for t in greedy)
    for k in ks:
        for mode in ("natural", "accept", "reject", "mixed"):
            tokens, stats = run(engine, k, mode, greedy)
            assert tokens == greedy, f"k={k} mode={mode}"
            s = stats.speculative
            assert s.emitted == sum(map(len, tokens)) - len(PROMPTS)  # the prompts' first tokens aside
            if mode == "accept":
                assert s.acceptance_rate == 1.0 and s.steps < s.emitted, (k, s)
            if mode == "reject":
                assert s.accepted == 0 and s.steps == s.emitted, (k, s)
