"""Soak program (run under mpiexec by tests/test_soak.py): streams many random requests through helix.LLM
and checks that nothing is lost.

Requests come in waves of random size (1 to 2 * --wave): each wave is one LLM.generate call whose requests
queue in the scheduler and are admitted as KV blocks free up (continuous batching: requests arrive while
others decode).
Prompt lengths are random, a few longer than one rank's pool allows (refused with a reason); max_new_tokens
and the sampling settings (greedy or temperature / top-k / top-p, ignore_eos) are random. Every rank draws
the same requests from the same seed.

Checked on every rank after every wave: every KV block is free in the engine and in the scheduler's
reservations; every request finished (eos / length, with a consistent token count) or was refused with a
reason, and refused exactly when it cannot fit. At the end: every greedy request (the first --max-replay),
run again alone, gives the same tokens; resident memory (VmRSS) after the last request has not grown by
more than --rss-bound-mib over its value after the first 100 requests. Any failed check raises, which
aborts the whole job (helix.comm.abort_on_exception). Rank 0 prints one JSON summary line, prefixed with
"SOAK ".
"""

from __future__ import annotations

import argparse
import json
import time

import helix
import numpy as np
from helix.comm import abort_on_exception, world
from helix.generate import blocks_per_cp_rank


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def random_requests(rng: np.random.Generator, n: int, long_len: int, vocab: int):
    prompts, params = [], []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.08:
            length = int(rng.integers(long_len, long_len + 64))  # longer than one rank's pool: refused
        elif kind < 0.25:
            length = int(rng.integers(48, long_len // 2))
        else:
            length = int(rng.integers(1, 48))
        prompts.append(rng.integers(2, vocab, size=length).tolist())
        greedy = rng.random() < 0.5
        params.append(
            helix.SamplingParams(
                max_new_tokens=int(rng.integers(1, 17)),
                temperature=0.0 if greedy else float(rng.uniform(0.3, 1.5)),
                top_k=0 if greedy else int(rng.choice([0, 1, 5, 50])),
                top_p=1.0 if greedy else float(rng.choice([1.0, 0.9, 0.5])),
                seed=int(rng.integers(0, 2**31)),
                ignore_eos=bool(rng.random() < 0.3),
            )
        )
    return prompts, params


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--wave", type=int, default=50)
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


def soak(
    comm,
    model: str,
    tp: int = 1,
    cp: int = 2,
    requests: int = 300,
    wave: int = 50,
    tokens_per_block: int = 4,
    max_tokens: int = 256,
    seed: int = 0,
    rss_bound_mib: float = 4.0,
    max_replay: int = 150,
) -> dict | None:
    """Runs the soak on `comm`'s ranks; returns the summary on rank 0 (None elsewhere). Raises on failure."""
    args = argparse.Namespace(
        model=model,
        tp=tp,
        cp=cp,
        requests=requests,
        wave=wave,
        tokens_per_block=tokens_per_block,
        max_tokens=max_tokens,
        seed=seed,
        rss_bound_mib=rss_bound_mib,
        max_replay=max_replay,
    )
    pc = helix.ParallelConfig(
        tensor_parallel_size=args.tp, context_parallel_size=args.cp,
        tokens_per_block=args.tokens_per_block, max_tokens=args.max_tokens,
    )  # fmt: skip
    llm = helix.LLM(args.model, pc, comm=comm, progress=False, max_batch_tokens=128)
    eng, sched = llm.engine, llm.scheduler
    pool, tpb, cp = eng.num_kv_blocks, eng.tokens_per_block, eng.cp
    eos = set(eng.eos_token_ids)
    rng = np.random.default_rng(args.seed)
    vocab = eng.config.vocab_size

    t_start = time.perf_counter()
    rss_after: list[tuple[int, int]] = []  # (requests done, VmRSS KiB)
    done, refused, tokens = 0, 0, 0
    greedy: list[tuple[list[int], helix.SamplingParams, list[int]]] = []
    while done < args.requests:
        n = min(int(rng.integers(1, 2 * args.wave)), args.requests - done)  # waves of random size
        prompts, params = random_requests(rng, n, args.max_tokens, vocab)
        outs = llm.generate(prompts, params)
        assert len(outs) == n
        for prompt, p, out in zip(prompts, params, outs, strict=True):
            fits = max(blocks_per_cp_rank(len(prompt) + p.max_new_tokens, tpb, cp)) <= pool
            if out.finish_reason == "refused":
                assert not fits and out.error and "KV blocks" in out.error, (len(prompt), p, out)
                assert out.token_ids == []
                refused += 1
            else:
                assert fits, f"a request of {len(prompt)} + {p.max_new_tokens} tokens fits no pool of {pool}"
                assert out.finish_reason in ("eos", "length"), out.finish_reason
                assert 1 <= len(out.token_ids) <= p.max_new_tokens
                if out.finish_reason == "length":
                    assert len(out.token_ids) == p.max_new_tokens
                    assert p.ignore_eos or not (set(out.token_ids) & eos)
                else:
                    assert out.token_ids[-1] in eos and not p.ignore_eos
                    assert not (set(out.token_ids[:-1]) & eos)
                tokens += len(out.token_ids)
                if p.temperature == 0.0 and len(greedy) < args.max_replay:
                    greedy.append((prompt, p, list(out.token_ids)))
        assert eng.num_free_blocks == pool, f"rank {comm.rank}: {pool - eng.num_free_blocks} KV blocks leaked"
        assert sched.free == [pool] * cp, f"rank {comm.rank}: scheduler reservations leaked: {sched.free}"
        done += n
        rss_after.append((done, rss_kib()))
    soak_s = time.perf_counter() - t_start

    # Greedy requests alone: the same tokens as when they were batched with others.
    t0 = time.perf_counter()
    mismatches = []
    for prompt, p, tokens_batched in greedy:
        alone = llm.generate([prompt], [p])[0].token_ids
        if alone != tokens_batched:
            mismatches.append((len(prompt), p.max_new_tokens, tokens_batched, alone))
    assert not mismatches, f"{len(mismatches)} greedy requests differ alone vs batched, e.g. {mismatches[:3]}"
    assert eng.num_free_blocks == pool
    replay_s = time.perf_counter() - t0

    # RSS after the first 100 requests (warm-up: allocator pools, lazily loaded code) vs after the last.
    first_done, first_kib = next(((d, r) for d, r in rss_after if d >= min(100, done)), rss_after[0])
    last_kib = rss_after[-1][1]
    growth_mib = (last_kib - first_kib) / 1024
    assert growth_mib <= args.rss_bound_mib, (
        f"rank {comm.rank}: VmRSS grew {growth_mib:.1f} MiB from {first_done} to {rss_after[-1][0]} requests "
        f"(bound {args.rss_bound_mib} MiB): {rss_after}"
    )
    growth = (
        comm.all_gather(np.array([last_kib - first_kib], np.int64)).ravel().tolist()
        if comm.size > 1
        else [last_kib - first_kib]
    )
    if comm.rank != 0:
        return None
    return {
        "ranks": comm.size, "tp": args.tp, "cp": cp, "requests": done, "refused": refused,
        "completed": done - refused, "generated_tokens": tokens, "greedy_replayed": len(greedy),
        "kv_blocks_per_rank": pool, "soak_s": round(soak_s, 2), "replay_s": round(replay_s, 2),
        "rss_first_kib": first_kib, "rss_last_kib": last_kib, "rss_growth_kib_per_rank": growth,
    }  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
