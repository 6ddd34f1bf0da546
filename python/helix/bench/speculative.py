"""Benchmark of speculative decoding with the MTP layer (issue 16): tokens/s per user for k = 0..3 drafts per
step at forced acceptance rates alpha, against context length, for cp = 1 and cp = 2 (MPI ranks, one thread
each), batch 1.

The model: bench decode's preset (helix.bench.decode.MODEL_PRESETS) with a random MTP layer, bf16 weights and
KV. Random weights make natural acceptance meaningless (the MTP layer's drafts almost never match the main
model's choice), so acceptance is forced: each draft is accepted with probability alpha until the first
rejection (Scheduler(forced_acceptance=alpha)); the work of a step (k drafts, a verify chunk of k + 1 tokens,
the truncations) is the real one. Long contexts are not prefilled: Scheduler.add_filled writes random rows
for the context in both caches (the model's and the MTP layer's), as bench decode does for the model's.

Per point, rank 0's clock: tokens/s per user = tokens emitted by --steps decode steps / their wall time (after
one warm-up step), the measured acceptance rate and accepted drafts per step, the step's time split into
draft (mtp_step calls) and verify (step), and the speed-up over k = 0 at the same context and cp. Every
(k, alpha) of a context runs once per round, rounds interleaved; the median over --rounds is reported. The
expected speed-up (1 + alpha + ... + alpha^k) / (speculative step time / plain step time) is printed next to
the measured one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helix.bench.common import (
    ROOT,
    machine_info,
    plot_lines,
    progress,
    run_mpi_worker,
    set_threads,
    worker_communicator,
    write_json,
)
from helix.bench.decode import MODEL_PRESETS, ensure_model

__all__ = ["CONFIGS", "Row", "expected_tokens_per_step", "main", "markdown", "points", "run_worker"]

CONFIGS: dict[str, int] = {"cp1": 1, "cp2": 2}  # name -> MPI ranks (= cp), one thread each
DEFAULT_CONTEXTS = (1024, 4096, 16384)
DEFAULT_K = (0, 1, 2, 3)
DEFAULT_ALPHAS = (0.6, 0.8, 0.9)
TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class Row:
    config: str
    ranks: int
    context: int
    k: int  # drafts per step (0: plain decoding)
    alpha: float | None  # forced acceptance (None for k = 0)
    tokens_per_s: float  # per user: emitted tokens / wall time of the timed steps, median over rounds
    step_ms: float  # wall time per step, median over rounds
    draft_ms: float  # of which in the MTP layer (mtp_step calls), median
    verify_ms: float  # of which in the model's step, median
    tokens_per_step: float  # emitted, mean over every round's steps
    acceptance_rate: float  # accepted / verified drafts over every round (0 for k = 0)
    mean_accepted: float  # accepted drafts per step over every round
    rounds: int

    def __post_init__(self) -> None:
        if self.context < 1 or not self.tokens_per_s > 0 or not self.step_ms > 0 or not 0 <= self.k <= 3:
            raise ValueError(f"bad row {self}")


def expected_tokens_per_step(k: int, alpha: float | None) -> float:
    """1 + alpha + ... + alpha^k: tokens a step emits when each draft is accepted with probability alpha
    until the first rejection."""
    return float(sum((alpha or 0.0) ** i for i in range(k + 1)))


def points(ks: list[int], alphas: list[float]) -> list[tuple[int, float | None]]:
    """The (k, alpha) of one context: k = 0 once, every other k at every alpha."""
    return [(k, None) for k in ks if k == 0] + [(k, a) for k in ks if k > 0 for a in alphas]


class _TimedEngine:
    """The engine with the wall time of its mtp_step and step calls added up (draft vs verify)."""

    def __init__(self, engine: Any) -> None:
        self._inner, self.draft_s, self.verify_s = engine, 0.0, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def mtp_step(self, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._inner.mtp_step(*args)
        finally:
            self.draft_s += time.perf_counter() - t

    def step(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._inner.step(*args, **kwargs)
        finally:
            self.verify_s += time.perf_counter() - t


def _run_point(engine: Any, context: int, k: int, alpha: float | None, steps: int, seed: int) -> dict:
    """One (k, alpha) at one context: a filled request, one warm-up step, then `steps` timed steps."""
    from helix.generate import SamplingParams, Scheduler

    timed = _TimedEngine(engine)
    sched = Scheduler(timed, (), speculative_tokens=k, forced_acceptance=alpha)
    vocab = engine.config.vocab_size
    prompt = np.random.default_rng(seed).integers(2, vocab, context).tolist()
    # Greedy: the same engine work as sampling, with the least Python per token (acceptance is forced).
    params = SamplingParams(max_new_tokens=(steps + 1) * (k + 1) + 1, ignore_eos=True)
    rid = sched.add_filled(prompt, 2, params, seed)
    sched.step()  # warm-up
    sched.reset_stats()
    timed.draft_s = timed.verify_s = 0.0
    engine.comm.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        sched.step()
    wall = time.perf_counter() - t0
    stats = sched.reset_stats()
    sched.abort(rid)
    spec = stats.speculative
    return {
        "wall_s": wall,
        "emitted": stats.generated_tokens,
        "draft_s": timed.draft_s,
        "verify_s": timed.verify_s,
        "accepted": spec.accepted if spec else 0,
        "drafted": spec.drafted if spec else 0,
    }


def run_worker(
    model_dir: str,
    config: str,
    contexts: list[int],
    grid: list[tuple[int, float | None]],
    steps: int,
    rounds: int,
    out: str,
    show: bool,
) -> None:
    """One rank of one configuration: every context, every (k, alpha) once per round; rank 0 writes the
    rows."""
    from helix.engine import HelixEngine

    comm = worker_communicator()
    set_threads(1)
    max_k = max(k for k, _ in grid)
    engine = HelixEngine(
        model_dir,
        comm=comm,
        cp=comm.size,
        tokens_per_block=TOKENS_PER_BLOCK,
        max_tokens=max(contexts) + (steps + 2) * (max_k + 1) + 2 * TOKENS_PER_BLOCK,
        dtype="bfloat16",
        progress=show and comm.rank == 0,
        mtp=True,
    )
    rows: list[dict] = []
    todo = [(c, r) for c in contexts for r in range(rounds)]
    for context, r in progress(todo, f"speculative {config}", enabled=show and comm.rank == 0):
        for i, (k, alpha) in enumerate(grid):
            run = _run_point(engine, context, k, alpha, steps, seed=1000 * r + i)
            rows.append({"context": context, "round": r, "k": k, "alpha": alpha} | run)
    if comm.rank == 0:
        write_json(out, {"runs": rows})


def summarize(config: str, ranks: int, runs: list[dict], steps: int) -> list[Row]:
    """Rows of one configuration from its runs (one per context, round, k and alpha): medians over rounds."""
    rows = []
    for context, k, alpha in dict.fromkeys((x["context"], x["k"], x["alpha"]) for x in runs):
        same = [x for x in runs if (x["context"], x["k"], x["alpha"]) == (context, k, alpha)]
        drafted = sum(x["drafted"] for x in same)
        accepted = sum(x["accepted"] for x in same)
        rows.append(
            Row(
                config,
                ranks,
                context,
                k,
                alpha,
                tokens_per_s=float(np.median([x["emitted"] / x["wall_s"] for x in same])),
                step_ms=float(np.median([x["wall_s"] for x in same])) * 1e3 / steps,
                draft_ms=float(np.median([x["draft_s"] for x in same])) * 1e3 / steps,
                verify_ms=float(np.median([x["verify_s"] for x in same])) * 1e3 / steps,
                tokens_per_step=sum(x["emitted"] for x in same) / (steps * len(same)),
                acceptance_rate=accepted / drafted if drafted else 0.0,
                mean_accepted=accepted / (steps * len(same)),
                rounds=len(same),
            )
        )
    return rows


def speedups(rows: list[Row]) -> list[dict]:
    """Per row: measured speed-up over k = 0 (same config and context), the step's cost relative to a plain
    step, and the expected speed-up (1 + alpha + ... + alpha^k) / that cost."""
    plain = {(r.config, r.context): r for r in rows if r.k == 0}
    out = []
    for r in rows:
        base = plain.get((r.config, r.context))
        if base is None:
            out.append({})
            continue
        cost = r.step_ms / base.step_ms
        expected = expected_tokens_per_step(r.k, r.alpha) / cost
        out.append(
            {"speedup": r.tokens_per_s / base.tokens_per_s, "cost": cost, "expected_speedup": expected}
        )
    return out


def markdown(d: dict) -> str:
    """The table of a run's JSON ({"meta", "rows"}), as printed and as `helix bench report` renders it."""
    m = d["meta"]
    out = [
        f"_{m['cpu']}, {m['cores']} cores, load {m['loadavg_1_5_15'][0]:.2f} at the end, {m['date']}; model "
        f"{m['model']!r} + MTP layer, bf16 weights and KV, batch 1, forced acceptance; {m['timing']}_",
        "",
        "| config | context | k | alpha | tok/s per user | speed-up | expected | step ms | draft ms | "
        "verify ms | cost | tok/step | accept rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in d["rows"]:
        alpha = "-" if r["alpha"] is None else f"{r['alpha']:.1f}"
        out.append(
            f"| {r['config']} | {r['context']} | {r['k']} | {alpha} | {r['tokens_per_s']:.2f} | "
            f"{r.get('speedup', nan):.2f} | {r.get('expected_speedup', nan):.2f} | {r['step_ms']:.1f} | "
            f"{r['draft_ms']:.1f} | {r['verify_ms']:.1f} | {r.get('cost', nan):.2f} | "
            f"{r['tokens_per_step']:.2f} | {r['acceptance_rate']:.2f} |"
        )
    return "\n".join(out)


def _plot(path: str, rows: list[Row], alpha: float | None, title: str) -> Path:
    """Tokens/s per user against context, one line per config and k (k > 0 at forced acceptance alpha)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        if r.k == 0 or r.alpha == alpha:
            xs, ys = series.setdefault(f"{r.config} k={r.k}", ([], []))
            xs.append(r.context)
            ys.append(r.tokens_per_s)
    return plot_lines(
        path, series, xlabel="context (tokens)", ylabel="tokens/s per user (median)", title=title
    )


def _parse_list(text: str, kind: type) -> list:
    return [kind(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench speculative", description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)))
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--k", default=",".join(map(str, DEFAULT_K)), help="drafts per step, each in 0..3")
    parser.add_argument("--alphas", default=",".join(map(str, DEFAULT_ALPHAS)), help="forced acceptance")
    parser.add_argument("--steps", type=int, default=8, help="timed decode steps per point and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median)")
    parser.add_argument("--quick", action="store_true", help="tiny model, contexts 40 and 100, 2 steps")
    parser.add_argument("--model", default="bench", choices=sorted(MODEL_PRESETS))
    parser.add_argument("--model-dir", default=None, help="checkpoint cache (default build/bench-model-mtp)")
    parser.add_argument("--out", default="bench-results/speculative.json")
    parser.add_argument("--png", default="bench-results/speculative.png")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.contexts, args.steps, args.rounds = "tiny", "40,100", 2, 1
    contexts = sorted(_parse_list(args.contexts, int))
    configs = _parse_list(args.configs, str)
    ks, alphas = sorted(set(_parse_list(args.k, int))), _parse_list(args.alphas, float)
    if (
        set(configs) - set(CONFIGS)
        or not contexts
        or min(contexts) < 2
        or not ks
        or not set(ks) <= {0, 1, 2, 3}
        or not all(0.0 <= a <= 1.0 for a in alphas)
        or (max(ks) > 0 and not alphas)
        or args.steps < 1
        or args.rounds < 1
    ):
        parser.error(
            f"--configs of {', '.join(CONFIGS)}; --contexts >= 2; --k in 0..3; --alphas in [0, 1]; "
            "--steps and --rounds positive"
        )
    grid = points(ks, alphas)
    model_dir = args.model_dir or str(
        ROOT / "build" / ("bench-model-mtp" if args.model == "bench" else "bench-model-mtp-tiny")
    )
    if args.worker:
        run_worker(
            model_dir, configs[0], contexts, grid, args.steps, args.rounds, args.worker, not args.no_progress
        )
        return 0

    ensure_model(args.model, model_dir, mtp=True)
    start = time.time()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            part = str(Path(tmp) / f"{name}.json")
            worker_args = ["--worker", part, "--configs", name, "--contexts", args.contexts, "--k", args.k]
            worker_args += ["--alphas", args.alphas, "--steps", str(args.steps), "--rounds", str(args.rounds)]
            worker_args += ["--model", args.model, "--model-dir", model_dir]
            worker_args += ["--no-progress"] if args.no_progress else []
            run_mpi_worker(
                CONFIGS[name], "helix.bench.speculative", worker_args, threads=1, timeout=args.timeout
            )
            runs = json.loads(Path(part).read_text())["runs"]
            rows += summarize(name, CONFIGS[name], runs, args.steps)

    meta = {
        **machine_info(1),
        "model": args.model,
        "model_overrides": MODEL_PRESETS[args.model],
        "mtp": True,
        "weights": "bfloat16",
        "kv": "bfloat16",
        "tokens_per_block": TOKENS_PER_BLOCK,
        "batch": 1,
        "acceptance": "forced (Bernoulli(alpha) per draft until the first rejection): random weights make "
        "natural acceptance meaningless",
        "timing": f"median over {args.rounds} interleaved rounds of {args.steps} steps after 1 warm-up "
        "(rank 0 clock), one thread per rank",
        "seconds": time.time() - start,
    }
    result = {"meta": meta, "rows": [asdict(r) | x for r, x in zip(rows, speedups(rows), strict=True)]}
    print(markdown(result))
    out = write_json(args.out, result)
    alpha = 0.8 if 0.8 in alphas else max(alphas, default=None)
    png = _plot(
        args.png, rows, alpha, f"speculative decoding, {args.model} model + MTP, alpha {alpha}, batch 1"
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
