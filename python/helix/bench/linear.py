"""Benchmark of the bf16-weight linear paths at T > 1 against the bf16 matmul ceiling of the same round.

The linear layers of the benchmark model (helix.bench.decode's preset "bench": hidden 2048, 128 heads,
q_lora 1536, kv_lora 512, experts of 512) with bf16 weights, at prefill-sized T, on named paths of
``helix._core.layers.linear`` (e.g. avx512_bf16 = x rounded to bf16, one product; avx512_bf16_split = x as
bf16 hi + lo, two products; avx512 = widened float32 FMA). Each round, for each shape, measures the ceiling
(PyTorch's bf16 2048^3 matmul: oneDNN, VDPBF16PS / AMX with its inputs in bf16), then every (T, path) point
of the shape, the paths interleaved; per point the min call time. Reported: GFLOP/s of the fastest round
(min time over the rounds) over the fastest ceiling of the same run (on a shared machine the slow rounds
are the ones another process took the core in). The same weight is called again and again, as prefill does
over a chunk; only the largest shapes (q_b, o_proj: 50-75 MB) stream from DRAM.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from helix.bench.common import bf16_matmul_gflops, machine_info, set_threads, time_calls, write_json

__all__ = ["BENCH_SHAPES", "main", "run"]

# The benchmark model's linear layers: name -> (out features N, in features K) (docs/performance.md 9.2).
BENCH_SHAPES: dict[str, tuple[int, int]] = {
    "q_a": (1536, 2048),
    "q_b": (128 * 192, 1536),
    "kv_a": (576, 2048),
    "o_proj": (2048, 128 * 128),
    "expert_gate_up": (2 * 512, 2048),
    "expert_down": (2048, 512),
}


def run(
    shapes: dict[str, tuple[int, int]], tokens: list[int], paths: list[str], rounds: int, calls: int
) -> dict:
    """{"ceilings": {name: [GFLOP/s per round]}, "points": {(name, T, path): [GFLOP/s per round]}}."""
    import ml_dtypes

    from helix import _core

    rng = np.random.default_rng(0)
    weights = {
        name: (rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k)).astype(ml_dtypes.bfloat16)
        for name, (n, k) in shapes.items()
    }
    xs = {
        (name, t): rng.standard_normal((t, k), dtype=np.float32)
        for name, (_, k) in shapes.items()
        for t in tokens
    }
    ceilings: dict[str, list[float]] = {name: [] for name in shapes}
    points: dict[tuple[str, int, str], list[float]] = {}
    for _ in range(rounds):
        for name, (n, k) in shapes.items():
            ceilings[name].append(bf16_matmul_gflops(2048, repeats=calls) or float("nan"))
            for t in tokens:
                for path in paths:  # interleaved: every path of a point back to back
                    x, w = xs[name, t], weights[name]
                    best = time_calls(lambda x=x, w=w, p=path: _core.layers.linear(x, w, isa=p), calls).min
                    points.setdefault((name, t, path), []).append(2 * t * n * k / best / 1e9)
    return {"ceilings": ceilings, "points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench linear", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", default="16,64,512")
    parser.add_argument("--paths", default="avx512_bf16,avx512_bf16_split,avx512", help="linear isa names")
    parser.add_argument("--shapes", default=",".join(BENCH_SHAPES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3, help="calls per point per round (min)")
    parser.add_argument("--out", default="bench-results/linear.json")
    args = parser.parse_args(argv)
    from helix import _core

    names = [s for s in args.shapes.split(",") if s]
    paths = [p for p in args.paths.split(",") if p]
    unknown = (set(names) - set(BENCH_SHAPES)) | (set(paths) - set(_core.layers.linear_isas()))
    if unknown or args.threads < 1 or args.rounds < 1 or args.calls < 1:
        parser.error(f"unknown or unavailable here: {sorted(unknown)}; --threads, --rounds, --calls >= 1")
    set_threads(args.threads)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    result = run({n: BENCH_SHAPES[n] for n in names}, tokens, paths, args.rounds, args.calls)
    ceil = result["ceilings"]
    best_ceiling = max(max(c) for c in ceil.values())
    meta = {
        **machine_info(args.threads),
        "timing": f"min of {args.calls} calls per point and round; fastest of {args.rounds} rounds",
        "bf16_matmul_gflops": best_ceiling,
    }
    print(
        f"bf16 linear; {meta['cpu']}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}; bf16 matmul "
        f"ceiling {best_ceiling:.0f} GFLOP/s (fastest of {sum(len(c) for c in ceil.values())}); "
        "GFLOP/s of the fastest round (/ ceiling)"
    )
    print(f"{'shape':<26} {'T':>4} " + " ".join(f"{p:>20}" for p in paths))
    rows = []
    for name in names:
        n, k = BENCH_SHAPES[name]
        for t in tokens:
            cells = []
            for p in paths:
                g = result["points"][name, t, p]
                ratio = max(g) / best_ceiling
                rows.append({"shape": name, "N": n, "K": k, "T": t, "path": p, "gflops": g, "ratio": ratio})
                cells.append(f"{max(g):7.1f} ({ratio:.2f})")
            print(f"{name + f' [{n}x{k}]':<26} {t:>4} " + " ".join(f"{c:>20}" for c in cells))
    write_json(args.out, {"meta": meta, "ceilings": ceil, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
