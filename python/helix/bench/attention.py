"""Benchmark of the CPU MLA attention kernel (helix.ops.mla_attention) at the DeepSeek-V3 shape.

For H = 128 heads, D = 576 (512 latent + 64 rope), R = 512, T query tokens (--tokens; T > 1 is a causal
chunk: the queries are the last T of the S positions) and S keys, it times the kernel with float32 and
bfloat16 keys and reports GFLOP/s (FLOPs = 2*H*(D+R) per visible (query, key) pair), GB/s (keys + q + o)
and two ratios measured in the same run: to NumPy's float32 matmul doing the same products,
[T*128 x 576] @ [576 x S] plus [T*128 x S] @ [S x 512] (GFLOP/s over GFLOP/s), and to a STREAM-like copy
(GB/s over GB/s). Times are medians of repeated calls; with --rounds N every point is timed N times, the
kernel paths interleaved, and the row keeps the minimum of the N medians (the least disturbed round).
--kernel-paths times the same points with several forced micro-kernel paths (helix.ops.set_kernel_path);
each row records the kernel that ran (float32 keys run the avx512 kernels on the bf16-only paths, and a
(dtype, kernel) pair is timed once).

NumPy's OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when it loads; the JSON records both and the
kernel OpenBLAS picked, so a run's ceiling can be judged.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass

import numpy as np

from helix.bench.common import (
    copy_bandwidth,
    machine_info,
    median_time,
    plot_lines,
    progress,
    set_threads,
    write_json,
)

__all__ = ["Row", "main", "run"]

H, D, R = 128, 576, 512
DEFAULT_SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True)
class Row:
    S: int
    T: int
    kv_dtype: str
    kernel: str
    seconds: float
    gflops: float
    gbytes_per_s: float
    numpy_seconds: float
    numpy_gflops: float
    ratio_to_numpy: float
    ratio_to_copy: float  # achieved GB/s over the copy ceiling

    def __post_init__(self) -> None:
        if self.S <= 0 or self.T <= 0 or self.seconds <= 0 or self.numpy_seconds <= 0:
            raise ValueError("S, T and the times must be positive")


def attention_flops(S: int, T: int) -> int:
    """FLOPs of the two products over the visible (query, key) pairs of a causal chunk of T <= S queries."""
    pairs = T * S - T * (T - 1) // 2
    return 2 * H * (D + R) * pairs


BF16_ONLY_PATHS = ("avx512_bf16", "avx512_bf16_split", "amx", "amx_split")


def kernel_for(path: str, kv_dtype: str) -> str:
    """The micro-kernels that run for keys of kv_dtype under the (resolved) kernel path."""
    return "avx512" if kv_dtype == "float32" and path in BF16_ONLY_PATHS else path


def run(
    sizes: tuple[int, ...],
    dtypes: tuple[str, ...],
    repeats: int,
    min_seconds: float,
    kernel_paths: tuple[str, ...] = ("auto",),
    T: int = 1,
    rounds: int = 1,
    copy_gbs: float = float("nan"),
) -> list[Row]:
    """Rows per (S, key dtype, kernel); copy_gbs: the copy ceiling of this run (for ratio_to_copy)."""
    import ml_dtypes

    from helix import ops

    rng = np.random.default_rng(0)
    rows: list[Row] = []
    q = rng.standard_normal((T, H, D), dtype=np.float32)
    for S in progress(sizes, "attention S"):
        kv32 = rng.standard_normal((S, D), dtype=np.float32)
        kv_pos = np.arange(S, dtype=np.int64)
        q_pos = np.arange(S - T, S, dtype=np.int64)  # a causal chunk: the last T positions
        # The NumPy ceiling: the same two products as contiguous float32 matmuls.
        a, b = q.reshape(T * H, D), np.ascontiguousarray(kv32.T)
        p, v = rng.random((T * H, S), dtype=np.float32), np.ascontiguousarray(kv32[:, :R])
        keys = {name: kv32 if name == "float32" else kv32.astype(ml_dtypes.bfloat16) for name in dtypes}
        best: dict[tuple[str, str], float] = {}  # (dtype, kernel) -> min over rounds of the medians
        t_np = float("inf")
        for _ in range(rounds):
            t_np = min(t_np, median_time(lambda a=a, b=b, p=p, v=v: (a @ b, p @ v), repeats, min_seconds))
            done: set[tuple[str, str]] = set()  # a (dtype, kernel) pair is timed once per round
            for name, kv in keys.items():
                for path in kernel_paths:
                    ops.set_kernel_path(path)
                    try:
                        kernel = kernel_for(ops.kernel_path(), name)
                        if (name, kernel) in done:
                            continue
                        done.add((name, kernel))
                        t = median_time(
                            lambda kv=kv, q_pos=q_pos, kv_pos=kv_pos: ops.mla_attention(
                                q, kv, q_pos, kv_pos, 0.07, R
                            ),
                            repeats,
                            min_seconds,
                        )
                    finally:
                        ops.set_kernel_path("auto")
                    best[(name, kernel)] = min(best.get((name, kernel), float("inf")), t)
        flops = attention_flops(S, T)
        np_rate = 2 * T * H * S * (D + R) / t_np / 1e9
        for (name, kernel), t in best.items():
            moved = keys[name].nbytes + q.nbytes + T * H * R * 4
            gbs = moved / t / 1e9
            rate = flops / t / 1e9
            rows.append(Row(S, T, name, kernel, t, rate, gbs, t_np, np_rate, rate / np_rate, gbs / copy_gbs))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench attention", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated S values")
    parser.add_argument(
        "--tokens", type=int, default=1, help="query tokens T per call (a causal chunk), <= S"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help="key dtypes: float32,bfloat16")
    parser.add_argument(
        "--kernel-paths",
        default="auto",
        help="comma-separated kernel paths to time (helix.ops.kernel_paths()), e.g. auto,avx512,amx_split",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=7, help="at least this many timed calls per point")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="and at least this long per point")
    parser.add_argument("--rounds", type=int, default=1, help="time every point this often; keep the minimum")
    parser.add_argument("--copy-mb", type=int, default=512, help="array size of the copy ceiling (MiB)")
    parser.add_argument("--out", default="bench-results/attention.json")
    parser.add_argument("--png", default="bench-results/attention.png")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    dtypes = tuple(args.dtypes.split(","))
    kernel_paths = tuple(args.kernel_paths.split(","))
    T = args.tokens
    if min(args.threads, args.rounds, T, args.copy_mb) < 1 or any(s < T for s in sizes):
        parser.error("--threads, --rounds, --tokens, --copy-mb must be >= 1 and every size >= --tokens")
    if not set(dtypes) <= {"float32", "bfloat16"}:
        parser.error("--dtypes: float32 and/or bfloat16")
    from helix import ops

    available = ops.kernel_paths()
    for path in kernel_paths:
        if path not in available or available[path]:
            parser.error(f"--kernel-paths: {path}: {available.get(path) or 'not a kernel path'}")

    set_threads(args.threads)
    copy_gbs = copy_bandwidth(args.copy_mb << 20)
    rows = run(sizes, dtypes, args.repeats, args.min_seconds, kernel_paths, T, args.rounds, copy_gbs)

    meta = {
        **machine_info(args.threads),
        "shape": {"H": H, "D": D, "R": R, "T": T},
        "flops": "2*H*(D+R) per visible (query, key) pair",
        "copy_gbs": copy_gbs,
        "timing": f"median of repeated calls; minimum over {args.rounds} round(s), kernel paths interleaved",
    }
    print(
        f"MLA attention, H={H} D={D} R={R} T={T}; {meta['cpu']}, {args.threads} threads, "
        f"kernels={meta.get('attention_kernels')}, numpy OpenBLAS core={meta['openblas_core']} "
        f"(OPENBLAS_CORETYPE={meta['OPENBLAS_CORETYPE']}); copy ceiling {copy_gbs:.1f} GB/s; "
        f"{meta['timing']}"
    )
    print(
        f"{'S':>6} {'kv':>8} {'kernel':>17} {'ms':>8} {'GFLOP/s':>8} {'GB/s':>6} {'of copy':>7} "
        f"{'numpy ms':>9} {'np GFLOP/s':>10} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r.S:>6} {r.kv_dtype:>8} {r.kernel:>17} {r.seconds * 1e3:8.3f} {r.gflops:8.1f} "
            f"{r.gbytes_per_s:6.1f} {r.ratio_to_copy:7.3f} "
            f"{r.numpy_seconds * 1e3:9.3f} {r.numpy_gflops:10.1f} {r.ratio_to_numpy:6.2f}"
        )
    out = write_json(args.out, {"meta": meta, "rows": [asdict(r) for r in rows]})
    series = {
        f"helix, {dt} KV, {k}": (
            [r.S for r in rows if (r.kv_dtype, r.kernel) == (dt, k)],
            [r.gflops for r in rows if (r.kv_dtype, r.kernel) == (dt, k)],
        )
        for dt, k in dict.fromkeys((r.kv_dtype, r.kernel) for r in rows)
    }
    numpy_by_size = {r.S: r.numpy_gflops for r in rows}
    series["NumPy f32 matmul"] = (list(numpy_by_size), list(numpy_by_size.values()))
    png = plot_lines(
        args.png,
        series,
        xlabel="S (keys)",
        ylabel="GFLOP/s",
        title=f"MLA attention H={H} D={D} T={T}, {args.threads} thread(s)",
    )
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
