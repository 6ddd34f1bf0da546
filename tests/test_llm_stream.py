"""The incremental request API of helix.LLM (add_request / step / has_unfinished_requests / abort_request)
on the embedded tiny model, one rank: requests joining a running batch, abort, refusal, stats, and
generate() built on the same path. The soak (tests/mpi/soak.py) drives the same API under mpiexec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helix.generate import SamplingParams
from helix.llm import LLM
from helix.parallel_config import ParallelConfig
from helix.tiny import make_tiny_model

PROMPTS = [list(range(2, 15)), [0, 5, 17, 300, 499, 42], [7, 8]]
GREEDY = SamplingParams(max_new_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "tiny"
    make_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def llm(model) -> LLM:
    return LLM(model, ParallelConfig(tokens_per_block=4), max_batch_tokens=8, progress=False)


@pytest.fixture(scope="module")
def solo(llm) -> list[list[int]]:
    """Each prompt decoded alone (greedy, 16 tokens, EOS ignored): what joining a batch must not change."""
    return [llm.generate([p], GREEDY)[0].token_ids for p in PROMPTS]


def drain(llm: LLM, log: list[tuple[int, list[int]]] | None = None, max_steps: int = 1000) -> None:
    """Steps until no request is unfinished; log gets (step number, ids that got a token) per step."""
    for n in range(max_steps):
        if not llm.has_unfinished_requests():
            return
        outs = llm.step()
        if log is not None:
            log.append((n, [o.request_id for o in outs]))
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def assert_all_free(llm: LLM) -> None:
    eng = llm.engine
    assert eng.num_free_blocks == eng.num_kv_blocks
    assert eng.block_table.unreserved_blocks == [eng.num_kv_blocks] * eng.cp


def test_requests_added_between_steps_join_and_decode_as_alone(llm, solo):
    """A request is running; two more arrive after 5 and 9 steps, join its batch (tokens for several
    requests in one step) and each decodes exactly the greedy tokens it gets alone. Every output returned
    by step() has one more token than the last time (the same object, updated in place)."""
    first = llm.add_request(PROMPTS[0], GREEDY)
    seen: dict[int, int] = {}
    outputs = {}
    together = 0
    for n in range(200):
        if n == 5:
            second = llm.add_request(PROMPTS[1], GREEDY)
        if n == 9:
            third = llm.add_request(PROMPTS[2], SamplingParams(max_new_tokens=6, ignore_eos=True))
        if n > 9 and not llm.has_unfinished_requests():
            break
        outs = llm.step()
        together += len(outs) >= 2
        for out in outs:
            assert len(out.token_ids) == seen.get(out.request_id, 0) + 1
            seen[out.request_id] = len(out.token_ids)
            assert outputs.setdefault(out.request_id, out) is out
    assert len({first, second, third}) == 3
    assert outputs[first].token_ids == solo[0] and outputs[first].finish_reason == "length"
    assert outputs[second].token_ids == solo[1]
    assert outputs[third].token_ids == solo[2][:6] and outputs[third].finished
    assert outputs[second].prompt_token_ids == PROMPTS[1]
    assert together >= 5  # the late requests really decoded alongside the first one
    assert_all_free(llm)


def test_seeded_sampling_does_not_depend_on_arrival(llm):
    """A seeded sampled request gives the same tokens alone (generate) and added mid-run to a batch."""
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=40, seed=11, ignore_eos=True)
    alone = llm.generate([PROMPTS[1]], params)[0].token_ids
    llm.add_request(PROMPTS[0], GREEDY)
    for _ in range(3):
        llm.step()
    rid = llm.add_request(PROMPTS[1], params)
    done = {}
    while llm.has_unfinished_requests():
        done.update({o.request_id: o for o in llm.step() if o.finished})
    assert done[rid].token_ids == alone


def test_step_with_nothing_to_do(llm):
    assert not llm.has_unfinished_requests()
    before = len(llm.stats.step_ms)
    assert llm.step() == [] and llm.step() == []
    assert len(llm.stats.step_ms) == before  # no engine step ran


def test_abort_frees_blocks(model, solo):
    """A pool of 8 blocks of 4 tokens: two requests of 5 blocks never run together. Aborting the running one
    frees its blocks at once and lets the waiting one in; aborting a waiting one drops it unrun; neither
    is reported by step(); the survivor decodes as alone."""
    small = LLM(model, ParallelConfig(tokens_per_block=4, max_tokens=32), max_batch_tokens=8, progress=False)
    eng = small.engine
    assert eng.num_kv_blocks == 8
    a = small.add_request(PROMPTS[1], GREEDY)  # 6 + 16 tokens: 6 blocks
    b = small.add_request(PROMPTS[0], SamplingParams(max_new_tokens=4, ignore_eos=True))  # 17: 5 blocks
    c = small.add_request(PROMPTS[2], GREEDY)  # 18 tokens: 5 blocks
    for _ in range(4):
        assert [o.request_id for o in small.step()] == [a]
    assert eng.block_table.unreserved_blocks == [2] and eng.num_free_blocks < 8
    out = small.abort_request(a)
    assert out.finish_reason == "aborted" and out.finished and out.token_ids == solo[1][:4]
    assert_all_free(small)
    assert small.abort_request(a) is None  # already finished
    with pytest.raises(KeyError, match="no request 99"):
        small.abort_request(99)
    reported = []
    first = small.step()  # b is admitted (c waits behind it)
    assert eng.block_table.unreserved_blocks == [3]
    aborted_c = small.abort_request(c)
    assert aborted_c.finish_reason == "aborted" and aborted_c.token_ids == []
    reported += first
    while small.has_unfinished_requests():
        reported += small.step()
    assert {o.request_id for o in reported} == {b}
    assert reported[-1].token_ids == solo[0][:4]
    assert_all_free(small)


def test_refusal_reasons(model, solo):
    """Refused at add_request, reported by the next step() with the reason, alongside running requests;
    invalid input raises at add_request and queues nothing."""
    small = LLM(model, ParallelConfig(tokens_per_block=4, max_tokens=24), max_batch_tokens=8, progress=False)
    ok = small.add_request(PROMPTS[2], SamplingParams(max_new_tokens=3, ignore_eos=True))
    empty = small.add_request([], GREEDY)
    long = small.add_request(PROMPTS[0], SamplingParams(max_new_tokens=20))  # 33 tokens: 9 blocks > 6
    assert small.has_unfinished_requests()
    outs = {o.request_id: o for o in small.step()}
    assert set(outs) == {ok, empty, long}
    assert outs[empty].finish_reason == "refused" and outs[empty].error == "empty prompt"
    err = outs[long].error
    assert outs[long].finish_reason == "refused" and outs[long].token_ids == []
    assert f"request {long} needs 9 KV blocks" in err and "6 blocks of 4 tokens" in err
    assert "max_tokens" in err
    assert not outs[ok].finished and outs[ok].token_ids == solo[2][:1]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        small.add_request([1, 5000])
    with pytest.raises(ValueError, match="no tokenizer.json"):
        small.add_request("some text")
    with pytest.raises(TypeError, match="expected helix.SamplingParams"):
        small.add_request([1, 2], {"max_new_tokens": 3})
    drain(small)
    assert outs[ok].token_ids == solo[2][:3]
    assert_all_free(small)


def test_generate_is_add_and_step(llm, solo):
    """generate() needs no requests of add_request in flight; its stats are last_stats, and llm.stats
    starts over after it; on_logits gets the prompt index."""
    rid = llm.add_request(PROMPTS[0], GREEDY)
    with pytest.raises(RuntimeError, match="requests added with add_request are unfinished"):
        llm.generate([PROMPTS[1]], GREEDY)
    llm.abort_request(rid)
    rows: list[tuple[int, int]] = []
    outs = llm.generate(PROMPTS, GREEDY, on_logits=lambda i, row: rows.append((i, int(np.argmax(row)))))
    assert [o.token_ids for o in outs] == solo
    assert sorted(rows) == sorted((i, t) for i, s in enumerate(solo) for t in s)
    stats = llm.last_stats
    assert stats.generated_tokens == 48 and len(stats.step_ms) >= 16 and stats.decode_step_ms
    assert stats.tokens_per_s > 0 and stats.peak_kv_blocks >= 3 * 5  # three requests of >= 18 tokens
    assert llm.stats.generated_tokens == 0 and llm.stats.step_ms == []


def test_incremental_stats_and_on_logits(llm, solo):
    ids = [llm.add_request(p, GREEDY) for p in PROMPTS]
    rows: dict[int, list[int]] = {}
    while llm.has_unfinished_requests():
        llm.step(on_logits=lambda rid, row: rows.setdefault(rid, []).append(int(np.argmax(row))))
    assert [rows[i] for i in ids] == solo
    assert llm.stats.generated_tokens == 48 and llm.stats.wall_s > 0 and llm.stats.peak_kv_blocks > 0
    old = llm.reset_stats()
    assert old.generated_tokens == 48 and llm.stats.generated_tokens == 0 and llm.stats.step_ms == []
