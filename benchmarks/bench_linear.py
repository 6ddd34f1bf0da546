"""Weight-streaming speed of helix's linear at decode sizes, against the machine's ceilings measured in the
same run: a STREAM-like copy and NumPy's float32 matrix-vector product.

Every timed call reads a different copy of the weight from a pool larger than the last-level cache, so the
figures are DRAM bandwidth, not cache bandwidth. Threads: set OMP_NUM_THREADS (helix) and
OPENBLAS_NUM_THREADS (NumPy) before starting. Prints a table and writes JSON (--json FILE).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=python python benchmarks/bench_linear.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import ml_dtypes
import numpy as np

from helix._core import layers

__all__ = ["main"]

POOL_BYTES = 768 << 20  # well above the 300 MB L3 of the machines here


def _best_rate(fn: Callable[[int], object], copies: int, nbytes: int, repeats: int) -> float:
    """GB/s of `nbytes` moved per call, best of `repeats` passes over the `copies` weights."""
    fn(0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(copies):
            fn(i)
        best = min(best, (time.perf_counter() - start) / copies)
    return nbytes / best / 1e9


def _pool(shape: tuple[int, int], dtype, rng: np.random.Generator) -> list[np.ndarray]:
    one = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    copies = max(2, POOL_BYTES // one.nbytes)
    return [one.copy() for _ in range(copies)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results: dict = {"isa": layers.linear_isa(), "omp_threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}

    src = np.ones(POOL_BYTES // 8, np.float32)
    dst = np.empty_like(src)
    results["copy_gbps"] = _best_rate(lambda i: np.copyto(dst, src), 1, 2 * src.nbytes, args.repeats * 2)
    print(f"isa {results['isa']}, OMP_NUM_THREADS={results['omp_threads']}")
    print(f"copy (read + write): {results['copy_gbps']:.1f} GB/s")

    for shape in [(7168, 2048), (2048, 7168)]:
        n, k = shape
        f32 = _pool(shape, np.float32, rng)
        results["runs"].append({"shape": shape, "impl": "numpy f32 matvec", "T": 1,
                                "gbps": _best_rate(lambda i: f32[i] @ np.ones(k, np.float32), len(f32),
                                                   f32[0].nbytes, args.repeats)})
        for dtype in ("float32", "bfloat16"):
            pool = f32 if dtype == "float32" else _pool(shape, ml_dtypes.bfloat16, rng)
            for t in args.tokens:
                x = rng.standard_normal((t, k), dtype=np.float32)
                y = np.empty((t, n), np.float32)
                gbps = _best_rate(lambda i: layers.linear(x, pool[i], out=y), len(pool), pool[0].nbytes,
                                  args.repeats)
                results["runs"].append({"shape": shape, "impl": f"helix {dtype}", "T": t, "gbps": gbps,
                                        "gflops": gbps / pool[0].itemsize * 2 * t})
            del pool
        del f32
    for r in results["runs"]:
        extra = f"  {r['gflops']:.1f} GFLOP/s" if "gflops" in r else ""
        print(f"W {r['shape'][0]}x{r['shape'][1]} {r['impl']:<18} T={r['T']:<3} {r['gbps']:6.1f} GB/s of weights{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
