"""Benchmark of the decode ops against the machine's ceilings measured in the same run: partial attention
(helix.ops.mla_attention, DeepSeek-V3 shape), merge_states, and the decode linear layers
(helix._core.layers.linear with float32 and bfloat16 weights at DeepSeek-V3 shapes, T = 1 and 8 by default;
--tokens 1,8,256 adds a prefill-like chunk).

For each op: time (median of repeated calls), GB/s of the bytes it must move, GFLOP/s, and two ratios:
to the STREAM-like copy bandwidth (read + write counted) and to NumPy's float32 matmul. The matmul ratio is
the GFLOP/s ratio to the square-matmul ceiling for attention and merge_states, and for linear the time of
NumPy's own float32 product of the same shape (x @ W^T, same weight pool) over helix's time. Linear rows
also carry the GFLOP/s ratio to the bfloat16 square-matmul ceiling (PyTorch/oneDNN, AMX where the CPU has
it; NaN without torch). --linear-isa times bf16 weights on several forced paths (e.g. "auto,avx512,amx").

Linear weights rotate through a pool of copies larger than the last-level cache, so the GB/s is DRAM
streaming, not cache bandwidth.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np

from helix.bench.common import (
    bf16_matmul_gflops,
    copy_bandwidth,
    machine_info,
    matmul_gflops,
    plot_lines,
    progress,
    set_threads,
    time_calls,
    write_json,
)

__all__ = ["Row", "LINEAR_SHAPES", "main", "run"]

# DeepSeek-V3 decode linear layers (TP = 1): name -> (out features N, in features K).
LINEAR_SHAPES: dict[str, tuple[int, int]] = {
    "q_a_proj": (1536, 7168),
    "kv_a_proj": (576, 7168),
    "q_b_proj": (128 * 192, 1536),
    "o_proj": (7168, 128 * 128),
    "expert_gate_up": (2 * 2048, 7168),
    "expert_down": (7168, 2048),
}


@dataclass(frozen=True)
class Row:
    op: str
    case: str
    ms: float
    gbytes_per_s: float
    gflops: float
    ratio_to_copy: float  # achieved GB/s / copy GB/s
    ratio_to_numpy: float  # see the module docstring
    ratio_to_bf16_matmul: float = float("nan")  # linear: GFLOP/s over the bf16 matmul ceiling

    def __post_init__(self) -> None:
        if not self.ms > 0:
            raise ValueError(f"{self.op} {self.case}: non-positive time")


def _weight_pool(shape: tuple[int, int], dtype: np.dtype, pool_bytes: int, rng: np.random.Generator) -> list:
    one = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return [one] + [one.copy() for _ in range(max(1, pool_bytes // one.nbytes) - 1)]


def _rotating(fn, pool: list):
    state = {"i": 0}

    def call() -> None:
        state["i"] = (state["i"] + 1) % len(pool)
        fn(pool[state["i"]])

    return call


def run(
    *,
    attention_sizes: tuple[int, ...] = (8192, 32768),
    merge_parts: tuple[int, ...] = (2, 4, 8),
    tokens: tuple[int, ...] = (1, 8),
    linear_shapes: dict[str, tuple[int, int]] | None = None,
    repeats: int = 5,
    min_seconds: float = 0.2,
    copy_bytes: int = 512 << 20,
    pool_bytes: int = 512 << 20,
    matmul_n: int = 2048,
    show_progress: bool = True,
    linear_isas: tuple[str, ...] = ("",),
) -> dict:
    import ml_dtypes

    from helix import _core
    from helix.bench import attention

    shapes = LINEAR_SHAPES if linear_shapes is None else linear_shapes
    copy_gbs = copy_bandwidth(copy_bytes)
    mm_gflops = matmul_gflops(matmul_n)
    bf16_mm = bf16_matmul_gflops(matmul_n)
    bf16_gflops = float("nan") if bf16_mm is None else bf16_mm
    rows: list[Row] = []

    for a in attention.run(attention_sizes, ("float32", "bfloat16"), repeats, min_seconds):
        rows.append(
            Row(
                "mla_attention",
                f"S={a.S} kv={a.kv_dtype}",
                a.seconds * 1e3,
                a.gbytes_per_s,
                a.gflops,
                a.gbytes_per_s / copy_gbs,
                a.gflops / mm_gflops,
            )
        )

    rng = np.random.default_rng(0)
    H, R = 128, 512
    for n in progress(merge_parts, "merge_states", enabled=show_progress):
        for T in tokens:
            o = rng.standard_normal((n, T, H, R), dtype=np.float32)
            lse = rng.standard_normal((n, T, H), dtype=np.float32)
            t = time_calls(lambda o=o, lse=lse: _core.ops.merge_states(o, lse), repeats, min_seconds).median
            moved = o.nbytes + lse.nbytes + T * H * (R + 1) * 4
            flops = 4 * n * T * H * R  # scale and accumulate per input element (+ normalize), roughly
            rows.append(
                Row(
                    "merge_states",
                    f"N={n} T={T}",
                    t * 1e3,
                    moved / t / 1e9,
                    flops / t / 1e9,
                    moved / t / 1e9 / copy_gbs,
                    flops / t / 1e9 / mm_gflops,
                )
            )

    for name, (N, K) in progress(list(shapes.items()), "linear", enabled=show_progress):
        pool32 = _weight_pool((N, K), np.dtype(np.float32), pool_bytes, rng)
        xs = {T: rng.standard_normal((T, K), dtype=np.float32) for T in tokens}
        t_np = {
            T: time_calls(
                _rotating(lambda w, x=xs[T]: np.matmul(x, w.T), pool32), repeats, min_seconds
            ).median
            for T in tokens
        }
        for dtype in ("float32", "bfloat16"):
            pool = (
                pool32
                if dtype == "float32"
                else _weight_pool((N, K), np.dtype(ml_dtypes.bfloat16), pool_bytes // 2, rng)
            )
            for T in tokens:
                for isa in linear_isas if dtype == "bfloat16" else ("",):
                    path = "" if isa == "auto" else isa
                    t = time_calls(
                        _rotating(lambda w, x=xs[T], path=path: _core.layers.linear(x, w, isa=path), pool),
                        repeats,
                        min_seconds,
                    ).median
                    moved = pool[0].nbytes + xs[T].nbytes + T * N * 4
                    flops = 2 * T * N * K
                    rows.append(
                        Row(
                            "linear",
                            f"{name} [{N}x{K}] {dtype} T={T}" + (f" {isa}" if isa else ""),
                            t * 1e3,
                            moved / t / 1e9,
                            flops / t / 1e9,
                            moved / t / 1e9 / copy_gbs,
                            t_np[T] / t,
                            flops / t / 1e9 / bf16_gflops,
                        )
                    )
            del pool
        del pool32
    return {"copy_gbs": copy_gbs, "matmul_gflops": mm_gflops, "bf16_matmul_gflops": bf16_gflops, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench ops", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for helix and NumPy (default 1)")
    parser.add_argument("--attention-sizes", default="8192,32768")
    parser.add_argument("--tokens", default="1,8", help="T values for merge_states and linear")
    parser.add_argument("--linear", default=",".join(LINEAR_SHAPES), help="which linear shapes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.2)
    parser.add_argument("--pool-mb", type=int, default=512, help="weight pool per shape (> last-level cache)")
    parser.add_argument("--copy-mb", type=int, default=512, help="copy-ceiling array size")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument(
        "--linear-isa",
        default="",
        help="bf16 linear paths to time, e.g. auto,avx512,amx (default: auto only)",
    )
    parser.add_argument("--out", default="bench-results/ops.json")
    parser.add_argument("--png", default="bench-results/ops.png")
    args = parser.parse_args(argv)
    names = [s for s in args.linear.split(",") if s]
    unknown = set(names) - set(LINEAR_SHAPES)
    if unknown or args.threads < 1:
        parser.error(f"unknown linear shapes {sorted(unknown)} (known: {', '.join(LINEAR_SHAPES)})")
    set_threads(args.threads)
    result = run(
        attention_sizes=tuple(int(s) for s in args.attention_sizes.split(",") if s),
        tokens=tuple(int(t) for t in args.tokens.split(",")),
        linear_shapes={n: LINEAR_SHAPES[n] for n in names},
        repeats=args.repeats,
        min_seconds=args.min_seconds,
        copy_bytes=args.copy_mb << 20,
        pool_bytes=args.pool_mb << 20,
        matmul_n=args.matmul_n,
        linear_isas=tuple(args.linear_isa.split(",")) if args.linear_isa else ("",),
    )
    meta = {
        **machine_info(args.threads),
        "timing": "median of repeated calls; ceilings: best of 5",
        "copy_gbs": result["copy_gbs"],
        "matmul_gflops": result["matmul_gflops"],
        "bf16_matmul_gflops": result["bf16_matmul_gflops"],
    }
    rows: list[Row] = result["rows"]
    print(
        f"Decode ops; {meta['cpu']}, {args.threads} thread(s), load {meta['loadavg_1_5_15'][0]:.2f}; "
        "ceilings: "
        f"copy {result['copy_gbs']:.1f} GB/s, NumPy f32 matmul {result['matmul_gflops']:.1f} GFLOP/s, "
        f"bf16 matmul {result['bf16_matmul_gflops']:.1f} GFLOP/s"
    )
    print(
        f"{'op':<14} {'case':<46} {'ms':>8} {'GB/s':>7} {'GFLOP/s':>8} {'/copy':>6} {'/numpy':>7} "
        f"{'/bf16mm':>8}"
    )
    for r in rows:
        print(
            f"{r.op:<14} {r.case:<46} {r.ms:8.3f} {r.gbytes_per_s:7.1f} {r.gflops:8.1f} "
            f"{r.ratio_to_copy:6.2f} {r.ratio_to_numpy:7.2f} {r.ratio_to_bf16_matmul:8.2f}"
        )
    out = write_json(args.out, {"meta": meta, "rows": [asdict(r) for r in rows]})
    lin = [r for r in rows if r.op == "linear" and r.case.endswith(("T=1", "T=1 auto"))]
    series = {
        dt: (
            list(range(len([r for r in lin if dt in r.case]))),
            [r.gbytes_per_s for r in lin if dt in r.case],
        )
        for dt in ("float32", "bfloat16")
    }
    series["copy ceiling"] = (list(range(len(names))), [result["copy_gbs"]] * len(names))
    png = plot_lines(
        args.png,
        series,
        xlabel="linear shape: " + ", ".join(names),
        ylabel="GB/s of weights",
        title=f"decode linear, T=1, {args.threads} thread(s)",
        logx=False,
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
