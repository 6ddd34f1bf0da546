"""Benchmark of prefill: prompt tokens per second of ``helix.LLM`` (the time to first token of a request),
at 1K, 4K and 16K-token prompts, for cp1 (1 rank, 1 thread), cp1-2threads (1 rank, 2 threads) and cp2
(2 MPI ranks, 1 thread each), against the bf16 matmul ceiling measured in the same run.

As a new user would: the benchmark model (helix.bench.decode's preset "bench", bf16, written once by
helix.tiny.make_tiny_model) loaded through ``helix.LLM(dtype="bfloat16")``, one warm-up request, then per
point a random prompt decoded for one token (``max_new_tokens=1``: prefill in chunks of --chunk tokens plus
the first token). Every rank draws the same prompt. Time: rank 0's wall clock around ``generate``, median
and min over --rounds rounds (the prompts of one round back to back, rounds one after another).

FLOPs: the work the runtime executes: the linear layers of every prompt token (q_a, q_b, kv_a, the W_UK
absorb and W_UV projection, o_proj, the dense MLP or the router + top-k routed + shared experts), the
lm_head of one token, and causal attention in the form each chunk ran (--forms: 'absorbed' forced,
'expanded' forced, or 'auto', the cheaper by helix_attention_cpu's cost model, which this module's
chunk_attention_flops mirrors). Achieved GFLOP/s = executed FLOPs / time; the ceiling is a bf16 2048^3
matmul (PyTorch's CPU kernels: oneDNN, VDPBF16PS on AVX512_BF16, AMX tiles where present) on each rank's
threads, all ranks measuring at once before each round, summed over the ranks. Shares: the engine's own
timers. The forms of one configuration run in one process, interleaved per round (round r: every form, every
prompt), so they compare back to back.

Cost model of issue 18 part 1 (helix/helix_attention_expanded.hpp): for a chunk of T tokens whose attention
reads S keys, exchanged W wide (W = R, or Dv with W_UV before the exchange: the engine's default at
cp = 1), absorbed = 2·H·(2R + P)·pairs
(+ 2·T·H·R·Dv for the W_UV projection inside the op when W = Dv), expanded = 2·H·(Dn + P + W)·pairs +
2·S·H·R·(Dn [+ Dv]) (the up-projection of the keys it reads; executed FLOPs then take off the W_UK absorb
[and W_UV] of the chunk's tokens, which the expanded form skips and linear counts), as executed: with
W = Dv the attention kernel runs on rows [k_nope | k_pe | v] (2·H·(Dn + P + Dv) per pair); with W = R the
float32 GEMMs count double in the choice (chunk_attention_flops). "part1 x" is the FLOP ratio of an
all-absorbed prefill to auto's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helix.bench.common import (
    ROOT,
    bf16_matmul_gflops,
    machine_info,
    matmul_gflops,
    plot_lines,
    run_mpi_worker,
    set_threads,
    worker_communicator,
    write_json,
)
from helix.bench.decode import CONFIGS, MODEL_PRESETS, ensure_model

__all__ = ["CONFIGS", "DEFAULT_PROMPTS", "Row", "prefill_flops", "main", "run_worker"]

DEFAULT_PROMPTS = (1024, 4096, 16384)
TOKENS_PER_BLOCK = 32


@dataclass(frozen=True)
class Row:
    config: str
    ranks: int
    threads: int
    prompt: int
    seconds: list[float]  # one per round
    flops: dict[str, float]  # linear, attention (absorbed), attention_<form> per form (prefill_flops)
    shares: dict[
        str, float
    ]  # attention, exchange, linear, moe, allreduce, other: fraction of the engine time
    ceilings: list[dict[str, float]]  # per round: bf16_gflops, f32_gflops (summed over the ranks)
    form: str = "auto"  # the attention form forced (or "auto")
    wuv_before_exchange: bool = False  # as the engine ran (its default: at cp = 1 only)

    @property
    def label(self) -> str:
        return f"{self.config}/{self.form}"

    def __post_init__(self) -> None:
        if self.prompt < 1 or not self.seconds or min(self.seconds) <= 0:
            raise ValueError(f"bad row {self}")

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.prompt / self.median_s

    @property
    def gflops(self) -> float:
        """Executed FLOPs (the attention of the form that ran) per second."""
        attention = self.flops.get(f"attention_{self.form}", self.flops["attention"])
        return (self.flops["linear"] + attention) / self.median_s / 1e9

    @property
    def bf16_ceiling(self) -> float:
        return statistics.median(c["bf16_gflops"] for c in self.ceilings)


def linear_flops_per_token(cfg: Any) -> float:
    """FLOPs of the linear layers of one prompt token (absorbed form, all layers, no lm_head)."""
    hid, heads, R = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_lora_rank
    dn, dr, dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    q = (
        hid * cfg.q_lora_rank + cfg.q_lora_rank * heads * (dn + dr)
        if cfg.q_lora_rank
        else hid * heads * (dn + dr)
    )
    attn = q + hid * (R + dr) + heads * dn * R + heads * R * dv + heads * dv * hid
    macs = 0
    for layer in range(cfg.num_hidden_layers):
        if cfg.is_moe_layer(layer):
            width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
            ffn = 3 * hid * width + hid * cfg.n_routed_experts
        else:
            ffn = 3 * hid * cfg.intermediate_size
        macs += attn + ffn
    return 2.0 * macs


# kLatentGemmSlowdown of helix_attention_expanded.cpp: the W = R path's GEMMs run at ~half the kernel's rate.
LATENT_GEMM_SLOWDOWN = 2.0


def chunk_attention_flops(cfg: Any, t: int, s0: int, wuv: bool) -> tuple[float, float, bool]:
    """(absorbed, expanded) FLOPs executed by one layer's attention for a chunk of t tokens after s0 earlier
    ones (the absorbed form's W_UK absorb, and W_UV with wuv, are in linear: the expanded form's figure
    takes off what it skips of them), and whether helix_attention_cpu's cost model picks the expanded form
    for it (helix/helix_attention_expanded.hpp)."""
    heads, R, P = cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    dn, dv = cfg.qk_nope_head_dim, cfg.v_head_dim
    pairs = t * s0 + t * (t + 1) // 2  # (query, visible key) pairs of the chunk, causal
    absorbed = 2.0 * heads * (2 * R + P) * pairs
    up = 2.0 * (s0 + t) * heads * R * (dn + (dv if wuv else 0))
    skipped = 2.0 * t * heads * R * (dn + (dv if wuv else 0))  # the absorb (and W_UV) of the chunk's tokens
    if wuv:  # the kernel on [k_nope | k_pe | v]
        scores = 2.0 * heads * (dv + dn + P) * pairs
        pick = scores + up - 2.0 * t * heads * R * dv < absorbed  # the C++ model: W_UV inside the op
    else:
        scores = 2.0 * heads * (dn + P + R) * pairs
        pick = LATENT_GEMM_SLOWDOWN * scores + up < absorbed
    return absorbed, scores + up - skipped, pick


def prefill_flops(cfg: Any, n: int, chunk: int, wuv: bool = False) -> dict[str, float]:
    """FLOPs of prefilling an n-token prompt in chunks of ``chunk`` tokens (see the module docstring):
    linear, and attention per form: absorbed, expanded, auto (the cost model's choice per chunk)."""
    absorbed = expanded = best = 0.0
    for s0 in range(0, n, chunk):
        a, e, pick = chunk_attention_flops(cfg, min(chunk, n - s0), s0, wuv)
        absorbed, expanded, best = absorbed + a, expanded + e, best + (e if pick else a)
    L = cfg.num_hidden_layers
    lm_head = 2.0 * cfg.hidden_size * cfg.vocab_size
    return {
        "linear": n * linear_flops_per_token(cfg) + lm_head,
        "attention": absorbed * L,
        "attention_absorbed": absorbed * L,
        "attention_expanded": expanded * L,
        "attention_auto": best * L,
    }


def round_ceilings(comm: Any) -> dict[str, float]:
    """bf16 and float32 matmul GFLOP/s of this rank's threads, every rank at once, summed over the ranks."""
    comm.barrier()
    f32 = matmul_gflops(1536, repeats=3)
    bf16 = bf16_matmul_gflops(2048, repeats=3) or f32
    every = comm.all_gather(np.array([bf16, f32], np.float64).view(np.float32)).view(np.float64)
    every = every.reshape(comm.size, 2)
    return {"bf16_gflops": float(every[:, 0].sum()), "f32_gflops": float(every[:, 1].sum())}


def run_worker(
    model_dir: str,
    config: str,
    prompts: list[int],
    rounds: int,
    chunk: int,
    out: str,
    forms: list[str],
    wuv: bool | None,
    precision: str = "float32",
) -> None:
    """One rank of one configuration: every round, every form, every prompt; rank 0 writes the rows."""
    import helix
    from helix import _core
    from helix.config import ModelConfig

    comm = worker_communicator()
    ranks, threads = CONFIGS[config]
    set_threads(threads)
    pc = helix.ParallelConfig(
        context_parallel_size=comm.size, tokens_per_block=TOKENS_PER_BLOCK, max_tokens=max(prompts) + 64
    )
    llm = helix.LLM(
        model_dir,
        pc,
        dtype="bfloat16",
        comm=comm,
        max_batch_tokens=chunk,
        wuv_before_exchange=wuv,
        progress=False,
        precision=precision,
    )
    cfg = ModelConfig.from_pretrained(model_dir)
    greedy = helix.SamplingParams(max_new_tokens=1, temperature=0.0)
    llm.generate([list(range(2, 66))], greedy)  # the warm-up request
    core = llm.engine._engine
    points = [(f, n) for f in forms for n in prompts]
    seconds: dict[tuple[str, int], list[float]] = {pt: [] for pt in points}
    spent: dict[tuple[str, int], dict[str, float]] = {pt: {} for pt in points}
    ceilings = []
    for r in range(rounds):
        ceilings.append(round_ceilings(comm))
        for form, n in points:
            _core.set_attention_form(form)
            prompt = np.random.default_rng(1000 * r + n).integers(2, cfg.vocab_size, n).tolist()
            comm.barrier()
            before = dict(core.timings)
            t0 = time.perf_counter()
            llm.generate([prompt], greedy)
            seconds[form, n].append(time.perf_counter() - t0)
            after = core.timings
            for k in after:
                if k.endswith("_s"):
                    spent[form, n][k[:-2]] = spent[form, n].get(k[:-2], 0.0) + after[k] - before[k]
    _core.set_attention_form("auto")
    if comm.rank == 0:
        rows = []
        for form, n in points:
            total = sum(spent[form, n].values()) or 1.0
            shares = {k: v / total for k, v in spent[form, n].items()}
            flops = prefill_flops(cfg, n, chunk, llm.engine.wuv_before_exchange)
            row = Row(
                config, comm.size, threads, n, seconds[form, n], flops, shares, ceilings, form,
                llm.engine.wuv_before_exchange,
            )  # fmt: skip
            rows.append(asdict(row))
        write_json(out, {"rows": rows})


def wuv_flag(wuv: bool | None) -> list[str]:
    """The worker's --[no-]wuv-before-exchange argument (none: the engine's default)."""
    return [] if wuv is None else ["--wuv-before-exchange" if wuv else "--no-wuv-before-exchange"]


def print_table(rows: list[Row]) -> None:
    print(
        f"{'config/form':<22} {'prompt':>6} {'s (med)':>8} {'min':>7} {'tok/s':>7} {'GFLOP/s':>8} "
        f"{'bf16 mm':>8} "
        f"{'/ceil':>6} {'attn':>5} {'lin':>5} {'moe':>5} {'xchg':>5} {'ar':>5} {'other':>5} {'part1 x':>7}"
    )
    for r in rows:
        s = r.shares
        f = r.flops
        # Part 1's FLOP ratio: all-absorbed over the cost model's per-chunk choice.
        gain = (f["linear"] + f["attention"]) / (f["linear"] + f["attention_auto"])
        print(
            f"{r.label:<22} {r.prompt:>6} {r.median_s:8.2f} {min(r.seconds):7.2f} {r.tokens_per_s:7.1f} "
            f"{r.gflops:8.1f} {r.bf16_ceiling:8.1f} {r.gflops / r.bf16_ceiling:6.2f} "
            f"{s.get('attention', 0):5.2f} {s.get('linear', 0):5.2f} {s.get('moe', 0):5.2f} "
            f"{s.get('exchange', 0):5.2f} {s.get('allreduce', 0):5.2f} {s.get('other', 0):5.2f} {gain:7.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench prefill", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=",".join(map(str, DEFAULT_PROMPTS)), help="prompt lengths")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=3, help="timed prompts per point (median, min)")
    parser.add_argument(
        "--chunk", type=int, default=2048, help="prefill chunk (helix.LLM max_batch_tokens; its CPU default)"
    )
    parser.add_argument("--model", default="bench", choices=sorted(MODEL_PRESETS))
    parser.add_argument(
        "--model-dir", default=None, help="checkpoint cache (default build/bench-model[-tiny])"
    )
    parser.add_argument("--out", default="bench-results/prefill.json")
    parser.add_argument("--png", default="bench-results/prefill.png")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per configuration")
    parser.add_argument(
        "--forms", default="auto", help="attention forms, run interleaved: of auto, absorbed, expanded"
    )
    parser.add_argument(
        "--wuv-before-exchange",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exchange Dv- instead of R-wide values (default: the engine's, on at cp = 1 only)",
    )
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "bf16"], help="helix.LLM's compute precision"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    prompts = [int(n) for n in args.prompts.split(",") if n]
    configs = [c for c in args.configs.split(",") if c]
    forms = [f for f in args.forms.split(",") if f]
    if set(configs) - set(CONFIGS) or not prompts or min(prompts) < 1 or args.rounds < 1 or args.chunk < 1:
        parser.error(f"--configs of {', '.join(CONFIGS)}; --prompts, --rounds and --chunk positive")
    if not forms or set(forms) - {"auto", "absorbed", "expanded"}:
        parser.error("--forms of auto, absorbed, expanded")
    model_dir = args.model_dir or str(
        ROOT / "build" / ("bench-model" if args.model == "bench" else "bench-model-tiny")
    )
    if args.worker:
        run_worker(
            model_dir,
            configs[0],
            prompts,
            args.rounds,
            args.chunk,
            args.worker,
            forms,
            args.wuv_before_exchange,
            args.precision,
        )
        return 0

    ensure_model(args.model, model_dir)
    start = time.time()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            ranks, threads = CONFIGS[name]
            part = str(Path(tmp) / f"{name}.json")
            run_mpi_worker(
                ranks,
                "helix.bench.prefill",
                [
                    "--worker",
                    part,
                    "--configs",
                    name,
                    "--prompts",
                    args.prompts,
                    "--rounds",
                    str(args.rounds),
                    "--chunk",
                    str(args.chunk),
                    "--model",
                    args.model,
                    "--model-dir",
                    model_dir,
                    "--forms",
                    args.forms,
                    *wuv_flag(args.wuv_before_exchange),
                    *(["--precision", args.precision] if args.precision != "float32" else []),
                ],
                threads=threads,
                timeout=args.timeout,
            )
            rows += [Row(**r) for r in json.loads(Path(part).read_text())["rows"]]
    meta = {
        **machine_info(),
        "threads": "per configuration (ranks x threads)",
        "model": args.model,
        "weights": "bfloat16",
        "kv": "bfloat16",
        "chunk": args.chunk,
        "forms": forms,
        "wuv_before_exchange": "default" if args.wuv_before_exchange is None else args.wuv_before_exchange,
        "precision": args.precision,
        "timing": f"median and min of {args.rounds} prompts per point, rank 0 wall clock around generate",
        "ceiling": "bf16 2048^3 torch.matmul per rank, all ranks at once, summed; median over the rounds",
        "seconds": time.time() - start,
    }
    print(
        f"Prefill, model {args.model!r} (bf16), chunk {args.chunk}; {meta['cpu']}, {meta['cores']} cores, "
        f"load {meta['loadavg_1_5_15'][0]:.2f}; part1 x: FLOP ratio absorbed / cheaper form per chunk"
    )
    print_table(rows)
    derived = [
        {
            **asdict(r),
            "median_s": r.median_s,
            "tokens_per_s": r.tokens_per_s,
            "gflops": r.gflops,
            "bf16_ceiling_gflops": r.bf16_ceiling,
            "fraction_of_bf16_ceiling": r.gflops / r.bf16_ceiling,
        }
        for r in rows
    ]
    out = write_json(args.out, {"meta": meta, "rows": derived})
    series = {
        label: (
            [r.prompt for r in rows if r.label == label],
            [r.tokens_per_s for r in rows if r.label == label],
        )
        for label in dict.fromkeys(r.label for r in rows)
    }
    png = plot_lines(
        args.png,
        series,
        xlabel="prompt (tokens)",
        ylabel="prompt tokens / s (median)",
        title=f"prefill, {args.model} model, bf16 weights and KV",
        logy=True,
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
