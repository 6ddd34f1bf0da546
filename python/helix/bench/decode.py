"""Benchmark of end-to-end decode: token-to-token latency against context length for a DeepSeek-V3-shaped
model with few layers, for cp = 1 and cp = 2 (MPI ranks, one thread each) and one rank with two threads.

The model (preset "bench", FACTS §5): the real attention and router dims (128 heads, q_lora 1536,
kv_lora 512, nope 128, rope 64, v 128), hidden 2048, 4 layers (1 dense), 16 routed experts top-4 + 1
shared, vocab 32000, YaRN x40; 686 M parameters, bf16 weights and bf16 KV cache. It is written once by
helix.tiny.make_tiny_model and cached (default build/bench-model).

Long contexts are not prefilled through the model (quadratic): every layer's paged KV cache is filled
directly with random unit-scale latent rows (like RMS-normed c_kv and k_pe) for the positions the rank
owns; the step's cost does not depend on the cached values. Then single-token decode steps at position =
context are timed (median over --steps steps after one warm-up step, rank 0's clock; every step is
collective). Reported per point: latency, KV memory per rank, and the share of the step in attention,
all-to-all, linear layers, MoE, all-reduce and the rest (the engine's own cumulative timers).

The planner check (issue 6.3): helix.planner.predict_step with this machine's measured copy bandwidth
and NumPy float32 matmul FLOP/s (measured in the same run, per rank) as a custom preset; the ratio of the
measured to the predicted step is printed for every point.
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
    bf16_matmul_gflops,
    copy_bandwidth,
    machine_info,
    matmul_gflops,
    plot_lines,
    progress,
    run_mpi_worker,
    set_threads,
    time_calls,
    worker_communicator,
    write_json,
)

__all__ = ["MODEL_PRESETS", "CONFIGS", "Row", "ensure_model", "fill_kv", "main", "run_worker"]

# make_tiny_model overrides. "bench": FACTS §5's 686 M-parameter model; "tiny": the embedded default
# (smoke tests).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "bench": {
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 4096,
        "moe_intermediate_size": 512,
        "num_hidden_layers": 4,
        "first_k_dense_replace": 1,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "n_routed_experts": 16,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "n_shared_experts": 1,
        "rope_scaling": {"factor": 40.0, "original_max_position_embeddings": 4096},
        "max_position_embeddings": 163840,
    },
    "tiny": {},
}

# name -> (MPI ranks = cp, OpenMP threads per rank)
CONFIGS: dict[str, tuple[int, int]] = {"cp1": (1, 1), "cp2": (2, 1), "cp1-2threads": (1, 2)}
DEFAULT_CONTEXTS = (1024, 4096, 16384, 32768, 65536, 131072)
TOKENS_PER_BLOCK = 32
SEQ = 7


@dataclass(frozen=True)
class Row:
    config: str
    ranks: int
    threads: int
    context: int
    step_ms: float  # median
    step_ms_min: float
    kv_bytes_per_rank: int  # the sequence's rows on the fullest rank, all layers
    shares: dict[str, float]  # attention, exchange, linear, moe, allreduce, other: fraction of the step
    allreduce_latency_us: float  # an all-reduce of one hidden vector (the link latency the planner uses)
    ceilings: dict[str, float]  # copy_gbs, matmul_gflops of one rank, all ranks measuring at once, mean

    def __post_init__(self) -> None:
        if self.context < 1 or not self.step_ms > 0 or self.ranks < 1 or self.threads < 1:
            raise ValueError(f"bad row {self}")


def ensure_model(preset: str, model_dir: str | Path, mtp: bool = False) -> Path:
    """The preset's checkpoint in ``model_dir``, written (bf16; with an MTP layer for ``mtp``) unless a
    matching one is already there."""
    from helix.tiny import make_tiny_model

    if preset not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (known: {', '.join(MODEL_PRESETS)})")
    out = Path(model_dir)
    marker = out / "bench-model.json"
    want = {"preset": preset, "overrides": MODEL_PRESETS[preset], "dtype": "bfloat16", "seed": 0}
    if mtp:
        want["mtp"] = True
    if marker.exists() and (out / "config.json").exists():
        try:
            if json.loads(marker.read_text()) == want:
                return out
        except json.JSONDecodeError:
            pass
    print(f"writing the {preset!r} benchmark model to {out} (once)", flush=True)
    make_tiny_model(out, seed=0, dtype="bfloat16", mtp=mtp, **MODEL_PRESETS[preset])
    marker.write_text(json.dumps(want) + "\n")
    return out


def fill_kv(engine: Any, seq_id: int, context: int, rng: np.random.Generator) -> int:
    """Adds ``seq_id`` with positions [0, context) holding random rows, uniform in [-1, 1), in every layer's
    cache (where this rank owns the position). Returns the bytes of rows written on this rank (all layers)."""
    engine.add_sequence(seq_id)
    engine._engine.fill_sequence_random(seq_id, context, seed=int(rng.integers(2**62)), scale=1.0)
    cfg = engine.config
    row_bytes = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * (4 if engine.dtype == "float32" else 2)
    return len(engine.block_table.positions(seq_id)) * row_bytes * cfg.num_hidden_layers


def rank_ceilings(comm: Any, copy_bytes: int) -> dict[str, float]:
    """Copy GB/s, NumPy f32 matmul and bf16 matmul GFLOP/s of this rank with its threads, every rank
    measuring at the same time (so each figure is one rank's share of the machine, as during the steps);
    mean over the ranks. Without torch the bf16 figure is the f32 one."""
    comm.barrier()
    f32 = matmul_gflops(1536, repeats=3)
    bf16 = bf16_matmul_gflops(1536, repeats=3) or f32
    mine = np.array([copy_bandwidth(copy_bytes, repeats=3), f32, bf16], np.float64)
    every = comm.all_gather(mine.view(np.float32)).view(np.float64).reshape(comm.size, 3)
    return {
        "copy_gbs": float(every[:, 0].mean()),
        "matmul_gflops": float(every[:, 1].mean()),
        "bf16_matmul_gflops": float(every[:, 2].mean()),
    }


def run_worker(
    model_dir: str, config: str, contexts: list[int], steps: int, out: str, show: bool, copy_bytes: int
) -> None:
    """One rank of one configuration: every context, rank 0 writes the rows."""
    from helix.engine import HelixEngine

    comm = worker_communicator()
    ranks, threads = CONFIGS[config]
    set_threads(threads)
    engine = HelixEngine(
        model_dir,
        comm=comm,
        cp=comm.size,
        tokens_per_block=TOKENS_PER_BLOCK,
        max_tokens=max(contexts) + steps + 2 * TOKENS_PER_BLOCK,
        dtype="bfloat16",
        progress=show and comm.rank == 0,
    )
    core = engine._engine
    hidden = np.ones(engine.config.hidden_size, np.float32)
    ar_us = time_calls(lambda: comm.all_reduce_sum(hidden), 50).median * 1e6 if comm.size > 1 else 0.0
    rng = np.random.default_rng(comm.rank)
    rows: list[dict] = []
    one = np.zeros(1, np.int64)
    for context in progress(contexts, f"decode {config}", enabled=show and comm.rank == 0):
        ceilings = rank_ceilings(comm, copy_bytes)
        written = fill_kv(engine, SEQ, context, rng)
        pos = [context]

        def step(pos: list[int] = pos) -> None:
            core.step(
                np.array([3], np.int64), np.array([pos[0]], np.int64), np.array([SEQ], np.int64), one, one
            )
            pos[0] += 1

        step()  # warm-up
        comm.barrier()
        before = dict(core.timings)
        t = time_calls(step, steps, warmup=0)
        after = core.timings
        spent = {k[:-2]: after[k] - before[k] for k in after if k.endswith("_s")}
        total = sum(spent.values()) or 1.0
        kv_max = comm.all_gather(np.array([written], np.int64)).max()
        rows.append(
            asdict(
                Row(
                    config,
                    comm.size,
                    threads,
                    context,
                    t.median * 1e3,
                    t.min * 1e3,
                    int(kv_max),
                    {k: v / total for k, v in spent.items()},
                    ar_us,
                    ceilings,
                )
            )
        )
        engine.free_sequence(SEQ)
    if comm.rank == 0:
        write_json(out, {"rows": rows})


def planner_prediction(model_dir: str | Path, row: Row) -> dict:
    """predict_step for this row's layout on a custom preset made of one rank's measured ceilings (copy
    bandwidth as the memory bandwidth; FLOP/s: the bf16 matmul for bf16 — the bf16 attention runs on AMX
    tiles where the CPU has them — and NumPy's f32 matmul for the other precisions), the link latency from
    the measured all-reduce and the link bandwidth = copy."""
    from helix import planner

    spec = planner.get_model(str(model_dir))
    bw, gflops = row.ceilings["copy_gbs"], row.ceilings["matmul_gflops"]
    if row.ranks > 1:
        layout = planner.Layout("helix", kvp=row.ranks, tp=1, ffn_tp=1, ffn_ep=row.ranks)
    else:
        layout = planner.Layout("baseline", tp=1)
    hw = planner.custom_hardware(
        bandwidth_gbs=bw,
        tflops=gflops / 1e3,
        flops_per_precision={"bf16": row.ceilings.get("bf16_matmul_gflops", gflops) / 1e3},
        link_bandwidth_gbs=bw,
        link_latency_us=max(row.allreduce_latency_us / 2, 1.0),
        name="this-cpu",
    )
    pred = planner.predict_step(spec, hw, layout, batch=1, context=row.context, precision="bf16")
    return {
        "predicted_ms": pred["ttl"] * 1e3,
        "measured_over_predicted": row.step_ms / (pred["ttl"] * 1e3),
        "bandwidth_gbs": bw,
        "gflops": gflops,
        "layout": layout.label,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default=",".join(map(str, DEFAULT_CONTEXTS)))
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed decode steps per point (median)")
    parser.add_argument("--model", default="bench", choices=sorted(MODEL_PRESETS))
    parser.add_argument(
        "--model-dir", default=None, help="checkpoint cache (default build/bench-model[-tiny])"
    )
    parser.add_argument("--copy-mb", type=int, default=256, help="copy-ceiling array size per rank")
    parser.add_argument("--out", default="bench-results/decode.json")
    parser.add_argument("--png", default="bench-results/decode.png")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    contexts = sorted(int(c) for c in args.contexts.split(","))
    configs = [c for c in args.configs.split(",") if c]
    if set(configs) - set(CONFIGS) or min(contexts) < 1 or args.steps < 1:
        parser.error(f"--configs of {', '.join(CONFIGS)}; --contexts and --steps positive")
    model_dir = args.model_dir or str(
        ROOT / "build" / ("bench-model" if args.model == "bench" else "bench-model-tiny")
    )
    if args.worker:
        run_worker(
            model_dir, configs[0], contexts, args.steps, args.worker, not args.no_progress, args.copy_mb << 20
        )
        return 0

    ensure_model(args.model, model_dir)
    start = time.time()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            ranks, threads = CONFIGS[name]
            part = str(Path(tmp) / f"{name}.json")
            extra = ["--no-progress"] if args.no_progress else []
            run_mpi_worker(
                ranks,
                "helix.bench.decode",
                [
                    "--worker",
                    part,
                    "--configs",
                    name,
                    "--contexts",
                    args.contexts,
                    "--steps",
                    str(args.steps),
                    "--model",
                    args.model,
                    "--model-dir",
                    model_dir,
                    "--copy-mb",
                    str(args.copy_mb),
                    *extra,
                ],
                threads=threads,
                timeout=args.timeout,
            )
            rows += [Row(**r) for r in json.loads(Path(part).read_text())["rows"]]
    planned = [planner_prediction(model_dir, r) for r in rows]

    meta = {
        **machine_info(),
        "threads": "per configuration (ranks x threads)",
        "model": args.model,
        "model_overrides": MODEL_PRESETS[args.model],
        "weights": "bfloat16",
        "kv": "bfloat16",
        "tokens_per_block": TOKENS_PER_BLOCK,
        "timing": f"median of {args.steps} single-token steps after 1 warm-up (rank 0 clock)",
        "ceilings": "per point, per rank (copy, NumPy f32 matmul), all ranks at once, mean over ranks",
        "seconds": time.time() - start,
    }
    print(
        f"Decode, model {args.model!r} (bf16 weights and KV); {meta['cpu']}, {meta['cores']} cores, "
        f"load {meta['loadavg_1_5_15'][0]:.2f}; ceilings per rank (copy GB/s, f32 matmul GFLOP/s) per point"
    )
    print(
        f"{'config':<13} {'context':>7} {'ms':>9} {'KV MB/rank':>10} {'attn':>5} {'a2a':>5} {'lin':>5} "
        f"{'moe':>5} {'ar':>5} {'other':>5} {'copy':>5} {'mm':>4} {'plan ms':>8} {'meas/plan':>9}"
    )
    for r, p in zip(rows, planned, strict=True):
        s = r.shares
        print(
            f"{r.config:<13} {r.context:>7} {r.step_ms:9.2f} {r.kv_bytes_per_rank / 2**20:10.1f} "
            f"{s.get('attention', 0):5.2f} {s.get('exchange', 0):5.2f} {s.get('linear', 0):5.2f} "
            f"{s.get('moe', 0):5.2f} {s.get('allreduce', 0):5.2f} {s.get('other', 0):5.2f} "
            f"{r.ceilings['copy_gbs']:5.1f} {r.ceilings['matmul_gflops']:4.0f} {p['predicted_ms']:8.2f} "
            f"{p['measured_over_predicted']:9.2f}"
        )
    out = write_json(
        args.out,
        {"meta": meta, "rows": [asdict(r) | {"planner": p} for r, p in zip(rows, planned, strict=True)]},
    )
    series = {}
    for name in configs:
        pts = [r for r in rows if r.config == name]
        series[name] = ([r.context for r in pts], [r.step_ms for r in pts])
    png = plot_lines(
        args.png,
        series,
        xlabel="context (tokens)",
        ylabel="ms per token (median)",
        title=f"decode latency, {args.model} model, bf16 weights and KV",
        logy=True,
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
