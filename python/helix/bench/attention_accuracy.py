"""Accuracy of every MLA attention kernel path against the float64 reference (helix.reference.mla_attention).

DeepSeek-V3 shape (H = 128 heads, D = 576, R = 512), bfloat16 keys (the values the reference reads are the
same bf16 values), float32 q, a causal chunk of T query tokens over S keys, at three score regimes:
q ~ N(0, spread^2) with scale = D^-0.5, so the scores have a standard deviation of `spread`: 1 (O(1)
scores), 10 (tens, maxima ~40) and 100 (hundreds, maxima ~400, |q| ~ 100). The error of o and of lse is
max |x - x_ref| / (1 + |x_ref|) over all elements and seeds: the smallest b with which
assert_allclose(x, x_ref, atol=b, rtol=b) passes (the form of the bounds in tests/tolerances.py).
Not a timing: the same inputs on every path, each path forced in turn (helix.ops.set_kernel_path).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np

from helix.bench.common import machine_info, write_json

__all__ = ["Row", "main", "measure", "relative_error"]

H, D, R = 128, 576, 512
SPREADS = (1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Row:
    kernel_path: str
    kernel: str  # the micro-kernels that ran (helix.ops.kernel_path() while forced)
    spread: float  # standard deviation of the scores
    max_score: float  # largest |score| over the seeds (visible or not)
    o_error: float
    lse_error: float


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    """max |x - ref| / (1 + |ref|) over the finite entries of ref (0 when there are none)."""
    finite = np.isfinite(ref)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(x[finite] - ref[finite]) / (1.0 + np.abs(ref[finite]))))


def measure(paths: list[str], S: int, T: int, seeds: int, spreads: tuple[float, ...] = SPREADS) -> list[Row]:
    """One row per (path, spread): the worst error over `seeds` random inputs."""
    import ml_dtypes

    from helix import ops, reference

    worst: dict[tuple[str, float], list[float]] = {}  # -> [max_score, o_error, lse_error]
    kernels: dict[str, str] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        q1 = rng.standard_normal((T, H, D), dtype=np.float32)
        kv = rng.standard_normal((S, D), dtype=np.float32).astype(ml_dtypes.bfloat16)
        q_pos, kv_pos = np.arange(S - T, S, dtype=np.int64), np.arange(S, dtype=np.int64)
        for spread in spreads:
            q = q1 * np.float32(spread)
            o_ref, lse_ref = reference.mla_attention(q, kv, q_pos, kv_pos, D**-0.5, R)
            max_score = float(np.abs(q.reshape(T * H, D) @ kv.astype(np.float32).T).max()) * D**-0.5
            for path in paths:
                ops.set_kernel_path(path)
                try:
                    kernels[path] = ops.kernel_path()
                    o, lse = ops.mla_attention(q, kv, q_pos, kv_pos, D**-0.5, R)
                finally:
                    ops.set_kernel_path("auto")
                w = worst.setdefault((path, spread), [0.0, 0.0, 0.0])
                w[0] = max(w[0], max_score)
                w[1] = max(w[1], relative_error(o, o_ref))
                w[2] = max(w[2], relative_error(lse, lse_ref))
    return [Row(p, kernels[p], s, *worst[(p, s)]) for p in paths for s in spreads]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="helix bench attention-accuracy", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--kernel-paths", default="", help="comma-separated paths (default: every available one)"
    )
    parser.add_argument("--keys", type=int, default=2048, help="S keys")
    parser.add_argument("--tokens", type=int, default=4, help="T query tokens (a causal chunk), <= S")
    parser.add_argument("--seeds", type=int, default=3, help="random inputs per point; the worst is kept")
    parser.add_argument("--out", default="bench-results/attention_accuracy.json")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.keys < args.tokens or args.seeds < 1:
        parser.error("need 1 <= --tokens <= --keys and --seeds >= 1")
    from helix import ops

    available = ops.kernel_paths()
    paths = (
        args.kernel_paths.split(",") if args.kernel_paths else [p for p, why in available.items() if not why]
    )
    for path in paths:
        if path not in available or available[path]:
            parser.error(f"--kernel-paths: {path}: {available.get(path) or 'not a kernel path'}")

    rows = measure(paths, args.keys, args.tokens, args.seeds)
    meta = {**machine_info(), "shape": {"H": H, "D": D, "R": R, "S": args.keys, "T": args.tokens}}
    meta["error"] = "max |x - x_ref| / (1 + |x_ref|), worst of the seeds"
    print(
        f"MLA attention accuracy vs float64, H={H} D={D} R={R} S={args.keys} T={args.tokens}, bf16 keys, "
        f"{args.seeds} seeds; {meta['cpu']}"
    )
    print(f"{'path':>17} {'kernel':>17} {'spread':>6} {'max |score|':>11} {'o error':>9} {'lse error':>9}")
    for r in rows:
        print(
            f"{r.kernel_path:>17} {r.kernel:>17} {r.spread:6.0f} {r.max_score:11.1f} {r.o_error:9.1e} "
            f"{r.lse_error:9.1e}"
        )
    out = write_json(args.out, {"meta": meta, "rows": [asdict(r) for r in rows]})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
