"""Benchmark of the Helix attention step across MPI ranks (issue 3.6): bytes exchanged per rank per step,
and the time of the all-to-all against the time of the partial attention, for DeepSeek-V3 attention dims
(128 heads, latent 512 + rope 64, bf16 cache) at 1, 2 and 4 ranks (cp = N, tp = 1).

For each rank count the suite launches itself under mpiexec (one OpenMP thread per rank). Each rank holds
the positions it owns of a sequence of `context` tokens (block rule, 32 tokens per block) and times:

- step: helix._core.helix_attention (append of the T new rows + partial attention + one all-to-all +
  merge); every timed call starts right after an (untimed) barrier so that all ranks start together;
- attention: helix.ops.paged_mla_attention over the same local shard (the partial-attention share);
- all-to-all: Communicator.all_to_all of a float32 buffer of the step's message size
  ([cp, T * H/cp * (R + 1)]: o and lse per head of each destination chunk).

Bytes per rank per step: the formula helix_exchange_bytes(cp, T, H, R) and the measured message size
(cp - 1)/cp of the send buffer. Times are medians over the calls (per rank; the table shows the slowest
rank). With 4 ranks on a 2-core machine the ranks are oversubscribed: read those times as an upper
bound, not as what 4 cores would give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from helix.bench.common import (
    machine_info,
    plot_lines,
    progress,
    run_mpi_worker,
    worker_communicator,
    write_json,
)

__all__ = ["Row", "main", "run_worker"]

H, R, P, TPB = 128, 512, 64, 32
D = R + P
DEFAULT_RANKS = (1, 2, 4)
DEFAULT_CONTEXTS = (4096, 16384, 32768)
DEFAULT_BATCHES = (1, 8)


@dataclass(frozen=True)
class Row:
    ranks: int
    context: int
    T: int
    bytes_formula: int
    bytes_measured: int
    step_ms: float
    attention_ms: float
    all_to_all_ms: float
    oversubscribed: bool

    def __post_init__(self) -> None:
        if self.ranks < 1 or self.context < 1 or self.T < 1 or self.step_ms <= 0:
            raise ValueError(f"bad row {self}")

    @property
    def exchange_share(self) -> float:
        return self.all_to_all_ms / self.step_ms


def _timed_after_barrier(comm, fn, repeats: int) -> float:
    """Median seconds of fn() on this rank; every call starts right after a barrier (not timed)."""
    fn()
    times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _point(comm, rng: np.random.Generator, context: int, T: int, repeats: int) -> Row:
    """One (context, T) point on this rank; times are the slowest rank's medians."""
    import ml_dtypes

    from helix import _core

    cp, rank = comm.size, comm.rank
    scale = D**-0.5
    blocks = -(-(context + (repeats + 2) * T + 4 * TPB) // TPB) // cp + 2
    cache = _core.PagedKVCache(blocks, TPB, D, "bfloat16", rank, cp)
    cache.add_sequence(0)
    owned = np.arange(context, dtype=np.int64)
    owned = owned[(owned // TPB) % cp == rank]
    if len(owned):
        cache.append(
            0, owned, rng.standard_normal((len(owned), D), dtype=np.float32).astype(ml_dtypes.bfloat16)
        )
    q = rng.standard_normal((T, H, D), dtype=np.float32)
    new_kv = rng.standard_normal((T, D), dtype=np.float32).astype(ml_dtypes.bfloat16)
    seq_ids, q_index = np.zeros(1, np.int64), np.zeros(T, np.int64)
    next_pos = [context]  # each step appends T new tokens at the next positions

    def step() -> None:
        pos = np.arange(next_pos[0], next_pos[0] + T, dtype=np.int64)
        next_pos[0] += T
        _core.helix_attention(comm, cache, q, new_kv, pos, seq_ids, q_index, scale, R)

    def attention() -> None:
        view = cache.paged_view(seq_ids)  # views of the cache (no copy) and its block table
        _core.ops.paged_mla_attention(q, np.full(T, next_pos[0], np.int64), q_index, *view, scale, R)

    send = np.ones((cp, T * (H // cp) * (R + 1)), np.float32)
    mine = np.array(
        [
            _timed_after_barrier(comm, step, repeats),
            _timed_after_barrier(comm, attention, repeats),
            _timed_after_barrier(comm, lambda: comm.all_to_all(send), max(repeats, 20)),
        ],
        np.float64,
    )
    worst = comm.all_gather(mine.view(np.float32)).view(np.float64).reshape(cp, 3).max(axis=0)
    return Row(
        ranks=cp,
        context=context,
        T=T,
        bytes_formula=int(_core.helix_exchange_bytes(cp, T, H, R)),
        bytes_measured=int(send.nbytes * (cp - 1) // cp),
        step_ms=float(worst[0] * 1e3),
        attention_ms=float(worst[1] * 1e3),
        all_to_all_ms=float(worst[2] * 1e3),
        oversubscribed=cp > (os.cpu_count() or 1),
    )


def run_worker(contexts: list[int], batches: list[int], repeats: int, out: str) -> None:
    """One rank of the job: every (context, T) point; rank 0 writes the rows."""
    comm = worker_communicator()
    rng = np.random.default_rng(comm.rank)
    points = [(c, t) for c in contexts for t in batches]
    rows = [
        asdict(_point(comm, rng, c, t, repeats))
        for c, t in progress(points, f"helix step cp={comm.size}", enabled=comm.rank == 0)
    ]
    if comm.rank == 0:
        write_json(out, {"rows": rows})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench helix", description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)), help="MPI rank counts (cp)")
    parser.add_argument(
        "--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)), help="total context tokens"
    )
    parser.add_argument(
        "--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="query tokens T per step"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point (median)")
    parser.add_argument("--out", default="bench-results/helix_step.json")
    parser.add_argument("--png", default="bench-results/helix_step.png")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mpiexec launch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    ranks = [int(n) for n in args.ranks.split(",")]
    if any(H % n for n in ranks) or min(contexts + batches + ranks) < 1 or args.repeats < 1:
        parser.error(f"ranks must divide {H} heads; contexts, batches, ranks and repeats must be positive")
    if args.worker:
        run_worker(contexts, batches, args.repeats, args.out)
        return 0

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in ranks:
            part = str(Path(tmp) / f"cp{n}.json")
            run_mpi_worker(
                n,
                "helix.bench.helix_step",
                [
                    "--worker",
                    "--contexts",
                    args.contexts,
                    "--batches",
                    args.batches,
                    "--repeats",
                    str(args.repeats),
                    "--out",
                    part,
                ],
                threads=1,
                timeout=args.timeout,
            )
            rows += [Row(**r) for r in json.loads(Path(part).read_text())["rows"]]

    meta = {
        **machine_info(1),
        "shape": {"H": H, "R": R, "P": P, "tokens_per_block": TPB, "kv": "bfloat16"},
        "timing": "median per rank over the calls, slowest rank",
        "threads_per_rank": 1,
        "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1",
    }
    print(
        f"Helix attention step, H={H} R={R} P={P} bf16 KV, 1 thread per rank; {meta['cpu']}, "
        f"{meta['cores']} cores, load {meta['loadavg_1_5_15'][0]:.2f}"
    )
    print(
        f"{'ranks':>5} {'context':>7} {'T':>3} {'bytes/rank':>10} {'measured':>9} {'step ms':>8} "
        f"{'attn ms':>8} {'a2a ms':>7} {'a2a/step':>8}"
    )
    for r in rows:
        flag = " (oversubscribed)" if r.oversubscribed else ""
        print(
            f"{r.ranks:>5} {r.context:>7} {r.T:>3} {r.bytes_formula:>10} {r.bytes_measured:>9} "
            f"{r.step_ms:8.2f} {r.attention_ms:8.2f} {r.all_to_all_ms:7.3f} {r.exchange_share:8.3f}{flag}"
        )
    out = write_json(
        args.out, {"meta": meta, "rows": [asdict(r) | {"exchange_share": r.exchange_share} for r in rows]}
    )
    series = {}
    for n in ranks:
        for T in batches:
            pts = [r for r in rows if r.ranks == n and r.T == T]
            series[f"cp={n} T={T} step"] = ([r.context for r in pts], [r.step_ms for r in pts])
            if n > 1:
                series[f"cp={n} T={T} all-to-all"] = (
                    [r.context for r in pts],
                    [r.all_to_all_ms for r in pts],
                )
    png = plot_lines(
        args.png,
        series,
        xlabel="context (tokens, total)",
        ylabel="ms (slowest rank)",
        title="Helix attention step vs its all-to-all (H=128, bf16 KV)",
        logy=True,
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
