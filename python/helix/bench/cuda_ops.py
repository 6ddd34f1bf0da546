"""CUDA kernel benchmarks against ceilings measured in the same run (DESIGN.md §7).

Ceilings: a 16-byte-vector device copy (bandwidth, read + write counted) and a bf16 cuBLAS GEMM
(tensor-core rate). Partial attention is DeepSeek-V3-shaped (128 heads, D = 576, R = 512, bf16 latent
cache, one query token per sequence); its roofline time is max(bytes / copy bandwidth, FLOPs / GEMM
rate) and the table reports the achieved fraction of it. merge_states and moe_experts (bf16 expert
weights, the bytes of a decode step's routed experts) are compared with copy bandwidth.

    python -m helix.bench.cuda_ops [--quick] [--smoke] [--json PATH]

Writes JSON to PATH, or to $OUT/cuda_ops.json when OUT is set.
--smoke runs every code path at tiny sizes (1 MiB copy, 64^3 GEMM, 256-token contexts): the figures mean
nothing; it is the only mode the SIMT emulator accepts (a check that this script works before a GPU run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field

from helix import _core

__all__ = ["Row", "main", "run"]

cuda = _core.cuda
bench = _core.cuda_bench  # the benchmarks' entry points (cuda/bench.hpp)


@dataclass
class Row:
    """One measured case: time per call, achieved rates, and the fraction of its ceiling."""

    op: str
    case: str
    ms: float
    tb_per_s: float
    tflop_per_s: float
    roofline_fraction: float
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ms <= 0:
            raise ValueError(f"{self.op} {self.case}: non-positive time {self.ms}")


def _attention_row(case: str, r: dict[str, float], copy_bw: float, gemm_rate: float, **extra: float) -> Row:
    """Achieved rates and the fraction of the roofline time max(bytes / copy bandwidth, FLOPs / GEMM rate)."""
    secs = r["ms"] * 1e-3
    floor = max(r["bytes"] / copy_bw, r["flops"] / gemm_rate)
    info = {"bound_ms": floor * 1e3, "arith_intensity": r["flops"] / r["bytes"], **extra}
    return Row(
        "paged_mla_attention",
        case,
        r["ms"],
        r["bytes"] / secs / 1e12,
        r["flops"] / secs / 1e12,
        floor / secs,
        info,
    )


def run(quick: bool = False, smoke: bool = False) -> dict[str, object]:
    if cuda.device_count() == 0:
        raise _core.HelixError("no CUDA device visible: the CUDA benchmarks need a GPU")
    if cuda.emulated() and not smoke:
        raise _core.HelixError("timings under the SIMT emulator mean nothing: benchmark on a real GPU")
    copy_bytes, gemm_n = (1 << 20, 64) if smoke else (1 << 30, 8192)
    copy = bench.bench_copy(copy_bytes, iters=1 if smoke else 20)
    copy_bw = copy["bytes"] / (copy["ms"] * 1e-3)  # bytes/s
    gemm = bench.bench_gemm_bf16(gemm_n, gemm_n, gemm_n, iters=1 if smoke else 10)
    gemm_rate = gemm["flops"] / (gemm["ms"] * 1e-3)  # FLOP/s
    rows: list[Row] = [
        Row("copy", f"{copy_bytes >> 20} MiB d2d", copy["ms"], copy_bw / 1e12, 0.0, 1.0),
        Row("gemm_bf16", f"{gemm_n}^3 cuBLAS", gemm["ms"], 0.0, gemm_rate / 1e12, 1.0),
    ]
    if smoke:
        contexts, batches = [256], (1, 2)
    else:
        contexts, batches = [8192, 32768] if quick else [8192, 32768, 65536, 131072, 262144], (1, 8)
    for batch in batches:
        for ctx in contexts:
            kernels = ["tensor_core"] + (["simple"] if batch == 1 and ctx <= 32768 else [])
            for kernel in kernels:
                iters = 1 if smoke else 5 if ctx > 65536 else 10
                r = bench.bench_paged_mla_attention(batch, ctx, 128, 576, 512, kernel, iters=iters)
                label = f"{ctx // 1024}K" if ctx >= 1024 else str(ctx)
                rows.append(_attention_row(f"{kernel} b={batch} ctx={label}", r, copy_bw, gemm_rate))
    # Split-KV sweep at batch 1 (the plan's own choice is the b=1 row of the same context above).
    sweep_ctx = 256 if smoke else 32768
    for splits in (1, 4) if smoke else (8, 16, 32, 64, 128):
        r = bench.bench_paged_mla_attention(
            1, sweep_ctx, 128, 576, 512, "tensor_core", iters=1 if smoke else 10, num_splits=splits
        )
        case = f"tensor_core b=1 ctx={sweep_ctx} splits={splits}"
        rows.append(_attention_row(case, r, copy_bw, gemm_rate, num_splits=splits))
    for n_parts in (2, 256) if smoke else (2, 8, 32, 256):
        m = 8 * 128 if n_parts <= 32 and not smoke else 128  # batch 8 x 128 heads; 256 parts: one token
        r = bench.bench_merge_states(n_parts, m, 512, iters=1 if smoke else 20)
        secs = r["ms"] * 1e-3
        bw = r["bytes"] / secs
        rows.append(Row("merge_states", f"N={n_parts} M={m} D=512", r["ms"], bw / 1e12, 0.0, bw / copy_bw))
    # Routed experts of a decode step on one expert-parallel rank of 8 (32 of V3's 256 experts, all pairs
    # local): a GEMV per expert that got tokens, against copy bandwidth (its weights are the bytes).
    hidden, moe_f, n_local = (64, 32, 4) if smoke else (7168, 2048, 32)
    for T in (1, 2) if smoke else (1, 8):
        r = bench.bench_moe_experts(T, 2 if smoke else 8, n_local, hidden, moe_f, iters=1 if smoke else 10)
        secs = r["ms"] * 1e-3
        bw = r["bytes"] / secs
        case = f"T={T} top_k={2 if smoke else 8} n_local={n_local} {hidden}x{moe_f}"
        rows.append(Row("moe_experts", case, r["ms"], bw / 1e12, r["flops"] / secs / 1e12, bw / copy_bw))
    return {
        "device": cuda.device_name(),
        "smoke": smoke,
        "sms": cuda.multiprocessor_count(),
        "copy_tb_per_s": copy_bw / 1e12,
        "gemm_bf16_tflop_per_s": gemm_rate / 1e12,
        "rows": [asdict(r) for r in rows],
    }


def format_table(result: dict[str, object]) -> str:
    lines = ["SMOKE RUN: tiny sizes, the figures mean nothing"] if result.get("smoke") else []
    lines += [
        f"device: {result['device']} ({result['sms']} SMs); copy {result['copy_tb_per_s']:.2f} TB/s, "
        f"bf16 GEMM {result['gemm_bf16_tflop_per_s']:.0f} TFLOP/s (both measured in this run)",
        f"{'op':<20} {'case':<38} {'ms':>9} {'TB/s':>7} {'TFLOP/s':>8} {'of roofline':>11}",
    ]
    for r in result["rows"]:  # type: ignore[union-attr]
        lines.append(
            f"{r['op']:<20} {r['case']:<38} {r['ms']:>9.4f} {r['tb_per_s']:>7.2f} "
            f"{r['tflop_per_s']:>8.1f} {100 * r['roofline_fraction']:>10.1f}%"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helix.bench.cuda_ops", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="contexts 8K and 32K only")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--json", default=None, help="output path (default $OUT/cuda_ops.json when OUT is set)")
    args = ap.parse_args(argv)
    result = run(quick=args.quick, smoke=args.smoke)
    path = args.json or (os.path.join(os.environ["OUT"], "cuda_ops.json") if os.environ.get("OUT") else None)
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
