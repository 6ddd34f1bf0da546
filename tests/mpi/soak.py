"""Soak program (run under mpiexec by tests/test_soak.py): streams many random requests through helix.LLM's
incremental API, as a server loop would, and checks that nothing is lost.

Requests arrive while others run: before every LLM.step a random number of new requests is added with
LLM.add_request: Poisson arrivals whose rate is redrawn every 16 steps between 0 and 2 * --arrival per
step (idle spells and steady load), plus, with probability --burst per step, 5-19 requests at once (they
queue for KV blocks). Now and then (--abort-rate per step) a random unfinished request is aborted.
Prompt lengths are random, a few longer than one rank's pool allows (refused with a reason);
max_new_tokens and the sampling settings (greedy or temperature / top-k / top-p, ignore_eos) are random.
Every rank draws the same requests and the same arrival times from the same seed, so every rank makes the
same calls in the same order (the API's contract under MPI).

Checked on every rank: after every step, the KV blocks this rank holds are within what the scheduler
reserved on its CP rank; whenever no request is unfinished (and at the end), every KV block is free in the
engine and in the scheduler's reservations; every request finished (eos / length, with a consistent token
count), was refused with a reason exactly when it cannot fit, or was aborted (and never reported by step).
At the end: every rank generated the same tokens (a checksum, all-gathered); every greedy request (the
first --max-replay), run again alone, gives the same tokens; resident memory (VmRSS) after the last request
has not grown by more than --rss-bound-mib over its value after the first 100 requests. Any failed check
raises, which aborts the whole job (helix.comm.abort_on_exception). Rank 0 prints one JSON summary line,
prefixed with "SOAK ".
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import helix
import numpy as np
from helix.comm import abort_on_exception, world
from helix.generate import SamplingParams


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def random_request(rng: np.random.Generator, long_len: int, vocab: int) -> tuple[list[int], SamplingParams]:
    kind = rng.random()
    if kind < 0.08:
        length = int(rng.integers(long_len, long_len + 64))  # longer than one rank's pool: refused
    elif kind < 0.25:
        length = int(rng.integers(48, long_len // 2))
    else:
        length = int(rng.integers(1, 48))
    prompt = rng.integers(2, vocab, size=length).tolist()
    greedy = rng.random() < 0.5
    params = helix.SamplingParams(
        max_new_tokens=int(rng.integers(1, 17)),
        temperature=0.0 if greedy else float(rng.uniform(0.3, 1.5)),
        top_k=0 if greedy else int(rng.choice([0, 1, 5, 50])),
        top_p=1.0 if greedy else float(rng.choice([1.0, 0.9, 0.5])),
        seed=int(rng.integers(0, 2**31)),
        ignore_eos=bool(rng.random() < 0.3),
    )
    return prompt, params


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--arrival", type=float, default=0.3, help="mean new requests per step")
    ap.add_argument("--burst", type=float, default=0.01, help="chance per step of 5-19 requests at once")
    ap.add_argument("--abort-rate", type=float, default=0.02, help="chance per step of aborting one request")
    ap.add_argument("--tokens-per-block", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-bound-mib", type=float, default=4.0)
    ap.add_argument(
        "--max-replay", type=int, default=150, help="greedy requests re-run alone (the first ones)"
    )
    args = ap.parse_args()
    abort_on_exception()
    summary = soak(world(), **{k.replace("-", "_"): v for k, v in vars(args).items()})
    if summary is not None:
        print("SOAK " + json.dumps(summary), flush=True)
    return 0


def blocks_per_cp_rank(num_tokens: int, tokens_per_block: int, cp: int) -> list[int]:
    """KV blocks each CP rank holds for positions [0, num_tokens): the ownership rule, independently."""
    nblocks = -(-num_tokens // tokens_per_block)
    return [len(range(c, nblocks, cp)) for c in range(cp)]


def check_finished(out: helix.RequestOutput, params: helix.SamplingParams, fits: bool, eos: set[int]) -> None:
    """A request step() reported finished: refused exactly when it cannot fit, else a consistent ending."""
    if out.finish_reason == "refused":
        assert not fits and out.error and "KV blocks" in out.error, (len(out.prompt_token_ids), params, out)
        assert out.token_ids == []
        return
    n = len(out.prompt_token_ids)
    assert fits, f"a request of {n} + {params.max_new_tokens} tokens was not refused"
    assert out.finish_reason in ("eos", "length"), out.finish_reason
    assert 1 <= len(out.token_ids) <= params.max_new_tokens
    if out.finish_reason == "length":
        assert len(out.token_ids) == params.max_new_tokens
        assert params.ignore_eos or not (set(out.token_ids) & eos)
    else:
        assert out.token_ids[-1] in eos and not params.ignore_eos
        assert not (set(out.token_ids[:-1]) & eos)


def soak(
    comm,
    model: str,
    tp: int = 1,
    cp: int = 2,
    requests: int = 300,
    arrival: float = 0.3,
    burst: float = 0.01,
    abort_rate: float = 0.02,
    tokens_per_block: int = 4,
    max_tokens: int = 256,
    seed: int = 0,
    rss_bound_mib: float = 4.0,
    max_replay: int = 150,
) -> dict | None:
    """Runs the soak on `comm`'s ranks; returns the summary on rank 0 (None elsewhere). Raises on failure."""
    pc = helix.ParallelConfig(
        tensor_parallel_size=tp, context_parallel_size=cp, tokens_per_block=tokens_per_block,
        max_tokens=max_tokens,
    )  # fmt: skip
    llm = helix.LLM(model, pc, comm=comm, progress=False, max_batch_tokens=128)
    eng, sched = llm.engine, llm.scheduler
    pool, tpb, cp_rank = eng.num_kv_blocks, eng.tokens_per_block, comm.rank % cp
    eos = set(eng.eos_token_ids)
    rng = np.random.default_rng(seed)
    vocab = eng.config.vocab_size

    def all_free(where: str) -> None:
        leaked = pool - eng.num_free_blocks
        assert leaked == 0, f"rank {comm.rank}: {leaked} KV blocks leaked {where}"
        unreserved = eng.block_table.unreserved_blocks
        assert unreserved == [pool] * cp, f"rank {comm.rank}: reservations leaked {where}: {unreserved}"

    t_start = time.perf_counter()
    rss_after: list[tuple[int, int]] = []  # (requests done, VmRSS KiB), every 20 requests
    pending: dict[int, tuple[list[int], helix.SamplingParams]] = {}  # unfinished requests by id
    submitted = done = refused = aborted = tokens = steps = idle = joined = 0
    max_running = max_waiting = 0
    checksum = 0
    rate = 0.0
    greedy: list[tuple[list[int], helix.SamplingParams, list[int]]] = []
    while submitted < requests or llm.has_unfinished_requests():
        if steps % 16 == 0:
            rate = float(rng.uniform(0, 2 * arrival))
        arriving = int(rng.poisson(rate)) + (int(rng.integers(5, 20)) if rng.random() < burst else 0)
        for _ in range(min(arriving, requests - submitted)):
            prompt, params = random_request(rng, max_tokens, vocab)
            joined += sched.num_running > 0  # arrives while others decode
            pending[llm.add_request(prompt, params)] = (prompt, params)
            submitted += 1
        if pending and rng.random() < abort_rate:
            victim = sorted(pending)[int(rng.integers(len(pending)))]
            out = llm.abort_request(victim)
            if out is not None:  # None: refused at add, reported by the next step
                _, params = pending.pop(victim)
                assert out.finish_reason == "aborted" and len(out.token_ids) < params.max_new_tokens
                aborted += 1
                done += 1
        outs = llm.step()
        steps += 1
        if steps % 500 == 0:  # as a server scrapes its metrics: the per-step timings would grow forever
            scraped = llm.reset_stats()
            assert len(scraped.step_ms) <= 500 and llm.stats.step_ms == []
        table = eng.block_table
        free, unreserved = table.free_blocks, table.unreserved_blocks
        assert free[cp_rank] == eng.num_free_blocks, f"rank {comm.rank}: global view {free} != its free list"
        beyond = any(f < u for f, u in zip(free, unreserved, strict=True))
        assert not beyond, f"rank {comm.rank}: blocks held beyond the reservations: {free} < {unreserved}"
        max_running = max(max_running, sched.num_running)
        max_waiting = max(max_waiting, sched.num_waiting)
        for out in outs:
            assert out.request_id in pending, f"step() reported request {out.request_id}, not unfinished"
            if not out.finished:
                continue
            prompt, params = pending.pop(out.request_id)
            assert out.prompt_token_ids == prompt
            fits = max(blocks_per_cp_rank(len(prompt) + params.max_new_tokens, tpb, cp)) <= pool
            check_finished(out, params, fits, eos)
            refused += out.finish_reason == "refused"
            tokens += len(out.token_ids)
            checksum = zlib.crc32(np.asarray([out.request_id, *out.token_ids], np.int64).tobytes(), checksum)
            if params.temperature == 0.0 and out.token_ids and len(greedy) < max_replay:
                greedy.append((prompt, params, list(out.token_ids)))
            done += 1
            if done % 20 == 0:
                rss_after.append((done, rss_kib()))
        if not llm.has_unfinished_requests():
            assert not pending, f"requests {sorted(pending)[:5]} were never reported"
            all_free(f"with no request unfinished after step {steps}")
            idle += 1
    assert done == submitted == requests, (done, submitted, requests)
    rss_after.append((done, rss_kib()))
    all_free("at the end")
    soak_s = time.perf_counter() - t_start

    # Every rank made the same decisions: the same tokens for every request.
    if comm.size > 1:
        sums = comm.all_gather(np.array([checksum], np.int64)).ravel().tolist()
        assert len(set(sums)) == 1, f"ranks generated different tokens (checksums {sums})"

    # Greedy requests alone: the same tokens as when they were batched with others.
    t0 = time.perf_counter()
    mismatches = []
    for prompt, p, tokens_batched in greedy:
        alone = llm.generate([prompt], [p])[0].token_ids
        if alone != tokens_batched:
            mismatches.append((len(prompt), p.max_new_tokens, tokens_batched, alone))
    assert not mismatches, f"{len(mismatches)} greedy requests differ alone vs batched, e.g. {mismatches[:3]}"
    all_free("after the replays")
    replay_s = time.perf_counter() - t0

    # RSS after the first 100 requests (warm-up: allocator pools, lazily loaded code) vs after the last.
    first_done, first_kib = next(((d, r) for d, r in rss_after if d >= min(100, done)), rss_after[0])
    last_kib = rss_after[-1][1]
    growth_mib = (last_kib - first_kib) / 1024
    assert growth_mib <= rss_bound_mib, (
        f"rank {comm.rank}: VmRSS grew {growth_mib:.1f} MiB from {first_done} to {rss_after[-1][0]} requests "
        f"(bound {rss_bound_mib} MiB): {rss_after}"
    )
    growth = (
        comm.all_gather(np.array([last_kib - first_kib], np.int64)).ravel().tolist()
        if comm.size > 1
        else [last_kib - first_kib]
    )
    if comm.rank != 0:
        return None
    return {
        "ranks": comm.size, "tp": tp, "cp": cp, "requests": done, "refused": refused, "aborted": aborted,
        "completed": done - refused - aborted, "generated_tokens": tokens, "steps": steps,
        "joined_running_batch": joined, "idle_points": idle, "max_running": max_running,
        "max_waiting": max_waiting,
        "greedy_replayed": len(greedy), "kv_blocks_per_rank": pool, "soak_s": round(soak_s, 2),
        "replay_s": round(replay_s, 2), "rss_first_kib": first_kib, "rss_last_kib": last_kib,
        "rss_growth_kib_per_rank": growth,
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
